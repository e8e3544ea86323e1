#include "ops/validate_kv_cache.h"

#include <c10/util/Exception.h>

#include "ops/validate_attention.h"
#include "ops/validate_varlen.h"

namespace dilated_attention {
namespace {

void check_sequence_starts(const at::Tensor& query, const at::Tensor& key,
                           const at::Tensor& starts) {
  TORCH_CHECK_VALUE(starts.scalar_type() == at::kLong || starts.scalar_type() == at::kInt,
                    "sequence_starts must be an int64 or int32 tensor, got dtype ",
                    starts.scalar_type());
  TORCH_CHECK_VALUE(starts.dim() == 1 && starts.sym_size(0) == query.sym_size(0),
                    "sequence_starts expected shape [", query.sym_size(0),
                    "] ([B]: one start per batch row), got ", starts.sym_sizes());
  TORCH_CHECK_VALUE(starts.device() == query.device(), "Device mismatch: query is on ",
                    query.device(), ", sequence_starts is on ", starts.device());
  if (!has_readable_values(starts) || !has_readable_values(key)) return;
  const auto values = host_values(starts);
  const int64_t cached = key.size(1);
  for (size_t b = 0; b < values.size(); ++b) {
    TORCH_CHECK_VALUE(values[b] >= 0 && values[b] <= cached, "sequence_starts[", b,
                      "] = ", values[b], " must be in [0, Nk] = [0, ", cached,
                      "] (a key index of key / value's sequence dimension)");
  }
}

}  // namespace

void check_kv_cache_call(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const AttentionArgs& args,
                         const std::optional<at::Tensor>& key_padding_mask,
                         const std::optional<at::Tensor>& sequence_starts, bool longnet) {
  check_attention_args(args);
  check_cached_attention_inputs(query, key, value);
  check_key_padding_mask(key, key_padding_mask, "[B, Nk]: the key's batch and sequence sizes");
  check_scale_representable(query, args);
  if (!longnet) check_head_groups(query.sym_size(2), args);
  if (sequence_starts.has_value()) check_sequence_starts(query, key, *sequence_starts);
}

std::vector<int64_t> cache_sequence_starts(const std::optional<at::Tensor>& sequence_starts,
                                           int64_t batch) {
  if (!sequence_starts.has_value()) return std::vector<int64_t>(static_cast<size_t>(batch), 0);
  return host_values(*sequence_starts);
}

}  // namespace dilated_attention
