#include "ops/validate_varlen.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "ops/validate_attention.h"

namespace dilated_attention {
bool has_readable_values(const at::Tensor& t) {
  return !t.is_meta() && !t.key_set().has(c10::DispatchKey::Python);
}

std::vector<int64_t> host_values(const at::Tensor& t) {
  const auto host = t.to(at::kCPU, at::kLong).contiguous();
  const int64_t* values = host.data_ptr<int64_t>();
  return std::vector<int64_t>(values, values + host.numel());
}

namespace {

void check_offsets(const std::vector<int64_t>& starts, int64_t total_rows, int64_t max_seqlen) {
  TORCH_CHECK_VALUE(starts.front() == 0, "cu_seqlens must start at 0, got ", starts.front());
  int64_t longest = 0;
  for (size_t i = 1; i < starts.size(); ++i) {
    TORCH_CHECK_VALUE(starts[i] >= starts[i - 1], "cu_seqlens must be non-decreasing: cu_seqlens[",
                      i, "] = ", starts[i], " < cu_seqlens[", i - 1, "] = ", starts[i - 1]);
    longest = std::max(longest, starts[i] - starts[i - 1]);
  }
  TORCH_CHECK_VALUE(starts.back() == total_rows,
                    "cu_seqlens must end at the number of rows T = query.size(0) = ", total_rows,
                    ", got ", starts.back());
  TORCH_CHECK_VALUE(max_seqlen >= longest, "max_seqlen (", max_seqlen,
                    ") must be at least the longest sequence's length (", longest,
                    ") in cu_seqlens");
}

}  // namespace

std::vector<int64_t> sequence_starts(const at::Tensor& cu_seqlens) {
  return host_values(cu_seqlens);
}

void check_varlen_call(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       const at::Tensor& cu_seqlens, int64_t max_seqlen,
                       const AttentionArgs& args) {
  check_attention_args(args);
  check_packed_attention_inputs(query, key, value);
  check_scale_representable(query, args);
  check_head_groups(query.sym_size(1), args);
  TORCH_CHECK_VALUE(cu_seqlens.scalar_type() == at::kInt || cu_seqlens.scalar_type() == at::kLong,
                    "cu_seqlens must be an int32 or int64 tensor, got dtype ",
                    cu_seqlens.scalar_type());
  TORCH_CHECK_VALUE(cu_seqlens.dim() == 1 && cu_seqlens.sym_size(0) >= 1,
                    "cu_seqlens must be 1-D [S + 1] (the offsets of S sequences, starting at 0), "
                    "got shape ",
                    cu_seqlens.sym_sizes());
  TORCH_CHECK_VALUE(cu_seqlens.device() == query.device(), "Device mismatch: query is on ",
                    query.device(), ", cu_seqlens is on ", cu_seqlens.device());
  TORCH_CHECK_VALUE(max_seqlen >= 0, "max_seqlen must be non-negative, got ", max_seqlen);
  if (has_readable_values(cu_seqlens) && has_readable_values(query)) {
    check_offsets(sequence_starts(cu_seqlens), query.size(0), max_seqlen);
  }
}

}  // namespace dilated_attention
