#include "ops/validate_attention.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/device_kernels.h"
#include "kernels/index/dilation_plan.h"
#include "ops/attention_config.h"

namespace dilated_attention {
namespace {

bool is_supported_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
         dtype == at::kHalf;
}

void check_positive(at::IntArrayRef values, const char* name) {
  for (size_t i = 0; i < values.size(); ++i) {
    TORCH_CHECK_VALUE(values[i] > 0, name, "[", i, "] must be positive, got ", values[i]);
  }
}

// The layout of the attention inputs: [B, N, H, D] (batched) or [T, H, D] (packed sequences).
struct InputLayout {
  int64_t dims;
  int64_t heads_dim;
  const char* shape;  // appended to "expected 4D tensor", empty for the batched layout
};
constexpr InputLayout kBatched{4, 2, ""};
constexpr InputLayout kPacked{3, 1, " [T, H, D]"};

// Which dimensions of `other` must equal the query's: all, or all but the heads (key and
// value, whose heads may be shared by several query heads).
enum class HeadsOf { kQuery, kKeyValue };
// Whether the sequence dimension of `other` must equal the query's, or is a cache's (its own).
enum class RowsOf { kQuery, kCache };

void check_like_query(const at::Tensor& query, const at::Tensor& other, const char* name,
                      HeadsOf heads = HeadsOf::kQuery, const InputLayout& layout = kBatched,
                      RowsOf rows = RowsOf::kQuery) {
  TORCH_CHECK_VALUE(other.dim() == layout.dims, name, " expected ", layout.dims, "D tensor",
                    layout.shape, ", got ", other.dim(), "D");
  for (int64_t d = 0; d < layout.dims; ++d) {
    if (d == layout.heads_dim && heads == HeadsOf::kKeyValue) continue;
    if (d == 1 && rows == RowsOf::kCache) continue;
    TORCH_CHECK_VALUE(query.sym_size(d) == other.sym_size(d), "Shape mismatch at dimension ", d,
                      ": query has size ", query.sym_size(d), ", ", name, " has size ",
                      other.sym_size(d));
  }
  TORCH_CHECK_VALUE(query.device() == other.device(), "Device mismatch: query is on ",
                    query.device(), ", ", name, " is on ", other.device());
  TORCH_CHECK_VALUE(query.scalar_type() == other.scalar_type(), "Dtype mismatch: query is ",
                    query.scalar_type(), ", ", name, " is ", other.scalar_type());
}

// Grouped-query attention: key has H_kv heads with H % H_kv == 0 (H_kv = H: one key head per
// query head, H_kv = 1: multi-query), and value has key's.
void check_key_value_heads(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           const InputLayout& layout) {
  const int64_t d = layout.heads_dim;
  const auto heads = query.sym_size(d), key_heads = key.sym_size(d);
  TORCH_CHECK_VALUE(heads == key_heads || (key_heads > 0 && heads % key_heads == 0),
                    "Shape mismatch at dimension ", d, ": query has size ", heads,
                    ", key has size ", key_heads,
                    "; the number of key/value heads must divide the number of query heads "
                    "(grouped-query attention)");
  TORCH_CHECK_VALUE(value.sym_size(d) == key_heads, "Shape mismatch at dimension ", d,
                    ": query has size ", heads, ", key has size ", key_heads, ", value has size ",
                    value.sym_size(d), "; key and value must have the same number of heads");
}

void check_inputs(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                  const InputLayout& layout, RowsOf rows = RowsOf::kQuery) {
  TORCH_CHECK_VALUE(query.dim() == layout.dims, "query expected ", layout.dims, "D tensor",
                    layout.shape, ", got ", query.dim(), "D");
  check_like_query(query, key, "key", HeadsOf::kKeyValue, layout, rows);
  check_like_query(query, value, "value", HeadsOf::kKeyValue, layout, rows);
  check_key_value_heads(query, key, value, layout);
  TORCH_CHECK_VALUE(is_supported_dtype(query.scalar_type()),
                    "query dtype must be one of float32, float64, bfloat16, float16, got ",
                    query.scalar_type());
}

}  // namespace

void check_attention_args(const AttentionArgs& args) {
  const auto& segment_lengths = args.segment_lengths;
  const auto& dilation_rates = args.dilation_rates;
  TORCH_CHECK_VALUE(!segment_lengths.empty(), "segment_lengths cannot be empty");
  TORCH_CHECK_VALUE(!dilation_rates.empty(), "dilation_rates cannot be empty");
  TORCH_CHECK_VALUE(segment_lengths.size() == dilation_rates.size(),
                    "segment_lengths and dilation_rates must have the same length: ",
                    segment_lengths.size(), " != ", dilation_rates.size());
  check_positive(segment_lengths, "segment_lengths");
  check_positive(dilation_rates, "dilation_rates");
  TORCH_CHECK_VALUE(args.dropout_p >= 0.0 && args.dropout_p <= 1.0,
                    "dropout must be between 0.0 and 1.0, got ", args.dropout_p);
  TORCH_CHECK_VALUE(!args.scale.has_value() || std::isfinite(*args.scale),
                    "scale must be a finite number, got ", args.scale.value_or(0.0));
}

void check_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value) {
  check_inputs(query, key, value, kBatched);
}

void check_cached_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                                   const at::Tensor& value) {
  check_inputs(query, key, value, kBatched, RowsOf::kCache);
  TORCH_CHECK_VALUE(value.sym_size(1) == key.sym_size(1), "Shape mismatch at dimension 1: key has ",
                    key.sym_size(1), " rows, value has ", value.sym_size(1),
                    "; key and value must hold the same positions");
  TORCH_CHECK_VALUE(query.sym_size(1) <= key.sym_size(1), "query holds ", query.sym_size(1),
                    " positions, more than the ", key.sym_size(1),
                    " of key / value: query must be the last Nq <= Nk positions of the sequence "
                    "whose keys and values are key / value");
}

void check_packed_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                                   const at::Tensor& value) {
  check_inputs(query, key, value, kPacked);
}

void check_scale_representable(const at::Tensor& query, const AttentionArgs& args) {
  if (!args.scale.has_value() || query.scalar_type() == at::kDouble) return;
  // Half and bfloat16 inputs are computed in float32 too: float32's range is the bound.
  TORCH_CHECK_VALUE(std::abs(*args.scale) <= std::numeric_limits<float>::max(), "scale (",
                    *args.scale, ") cannot be represented in float32, the compute dtype of ",
                    query.scalar_type(), " inputs");
}

namespace {

double largest_finite_magnitude(const at::Tensor& x) {
  const auto magnitude = x.abs();
  return at::where(magnitude.isfinite(), magnitude, at::zeros_like(magnitude))
      .amax()
      .item<double>();
}

}  // namespace

void check_scores_representable(const at::Tensor& query, const at::Tensor& key,
                                const AttentionArgs& args) {
  if (!args.scale.has_value() || std::abs(*args.scale) <= 1.0 ||
      query.scalar_type() == at::kDouble || query.numel() == 0 || key.numel() == 0) {
    return;
  }
  const double bound = std::abs(*args.scale) * static_cast<double>(query.size(-1)) *
                       largest_finite_magnitude(query) * largest_finite_magnitude(key);
  TORCH_CHECK_VALUE(bound <= std::numeric_limits<float>::max(), "scale (", *args.scale,
                    ") can make the scores overflow float32, the compute dtype of ",
                    query.scalar_type(),
                    " inputs: |scale| * head_dim * max|query| * max|key| = ", bound, " exceeds ",
                    std::numeric_limits<float>::max(), "; pass float64 inputs or a smaller scale");
}

namespace {

void check_enough_heads(const c10::SymInt& num_heads, const AttentionArgs& args) {
  const auto num_groups = static_cast<int64_t>(args.segment_lengths.size());
  TORCH_CHECK_VALUE(num_heads >= num_groups, "num_heads (", num_heads, ") must be >= num_groups (",
                    num_groups, ")");
}

void check_group_offset(size_t g, const AttentionArgs& args) {
  const int64_t rate = args.dilation_rates[g], segment = args.segment_lengths[g];
  const int64_t offset = group_offset(static_cast<int64_t>(g), rate);
  TORCH_CHECK_VALUE(offset < segment, "dilation_rates[", g, "] (", rate, ") gives group ", g,
                    " the offset ", offset, ", which must be smaller than segment_lengths[", g,
                    "] (", segment, ")");
}

}  // namespace

void check_head_groups(const c10::SymInt& num_heads, const AttentionArgs& args) {
  check_enough_heads(num_heads, args);
  for (size_t g = 0; g < args.segment_lengths.size(); ++g) check_group_offset(g, args);
}

void check_sequence_layout(const c10::SymInt& seq_len, const c10::SymInt& num_heads,
                           const AttentionArgs& args) {
  check_enough_heads(num_heads, args);
  const auto& segment_lengths = args.segment_lengths;
  const int64_t largest = *std::max_element(segment_lengths.begin(), segment_lengths.end());
  TORCH_CHECK_VALUE(seq_len % largest == 0, "Sequence length (", seq_len,
                    ") must be divisible by the largest segment length (", largest,
                    "); for a sequence of any length use dilated_attention_varlen with "
                    "cu_seqlens = [0, N]");
  for (size_t g = 0; g < segment_lengths.size(); ++g) {
    TORCH_CHECK_VALUE(seq_len % segment_lengths[g] == 0, "Sequence length (", seq_len,
                      ") must be divisible by segment_lengths[", g, "] (", segment_lengths[g], ")");
    check_group_offset(g, args);
  }
}

void check_backward_inputs(const at::Tensor& grad_output, const at::Tensor& query,
                           const at::Tensor& output, const at::Tensor& softmax_lse,
                           const at::Tensor& rng_state, c10::SymIntArrayRef lse_sizes) {
  const auto& layout = query.dim() == kPacked.dims ? kPacked : kBatched;
  check_like_query(query, grad_output, "grad_output", HeadsOf::kQuery, layout);
  check_like_query(query, output, "output", HeadsOf::kQuery, layout);
  TORCH_CHECK_VALUE(softmax_lse.sym_sizes() == lse_sizes, "softmax_lse expected shape ", lse_sizes,
                    ", got ", softmax_lse.sym_sizes());
  const auto lse_dtype = at::toOpMathType(query.scalar_type());
  TORCH_CHECK_VALUE(softmax_lse.scalar_type() == lse_dtype, "softmax_lse expected dtype ",
                    lse_dtype, ", got ", softmax_lse.scalar_type());
  TORCH_CHECK_VALUE(softmax_lse.device() == query.device(), "Device mismatch: query is on ",
                    query.device(), ", softmax_lse is on ", softmax_lse.device());
  TORCH_CHECK_VALUE(rng_state.dim() == 1 && rng_state.sym_size(0) == kRngStateSize &&
                        rng_state.scalar_type() == at::kLong,
                    "rng_state expected ", kRngStateSize,
                    " int64 values (the forward's "
                    "rng_state), got shape ",
                    rng_state.sym_sizes(), " of dtype ", rng_state.scalar_type());
}

void check_device_supports(const at::Tensor& query, const AttentionArgs& args,
                           const std::optional<at::Tensor>& key_padding_mask) {
  kernels_for(query.device().type())
      .check_supported(
          {query.scalar_type(), query.size(-1), args.uses_dropout(), key_padding_mask.has_value()});
}

void check_key_padding_mask(const at::Tensor& query,
                            const std::optional<at::Tensor>& key_padding_mask) {
  check_key_padding_mask(query, key_padding_mask, "[B, N]: the query's batch and sequence sizes");
}

void check_key_padding_mask(const at::Tensor& rows_of,
                            const std::optional<at::Tensor>& key_padding_mask,
                            const char* expected_rows) {
  if (!key_padding_mask.has_value()) return;
  const auto& mask = *key_padding_mask;
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool,
                    "key_padding_mask must be a bool tensor (True = padding), got dtype ",
                    mask.scalar_type());
  const std::vector<c10::SymInt> expected{rows_of.sym_size(0), rows_of.sym_size(1)};
  TORCH_CHECK_VALUE(
      mask.dim() == 2 && mask.sym_size(0) == expected[0] && mask.sym_size(1) == expected[1],
      "key_padding_mask expected shape ", c10::SymIntArrayRef(expected), " (", expected_rows,
      "), got ", mask.sym_sizes());
  TORCH_CHECK_VALUE(mask.device() == rows_of.device(), "Device mismatch: query is on ",
                    rows_of.device(), ", key_padding_mask is on ", mask.device());
}

void check_dilated_attention_call(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, const AttentionArgs& args,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  check_attention_args(args);
  check_attention_inputs(query, key, value);
  check_key_padding_mask(query, key_padding_mask);
  check_scale_representable(query, args);
  check_sequence_layout(query.sym_size(1), query.sym_size(2), args);
}

void check_longnet_attention_call(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, const AttentionArgs& args,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  check_attention_args(args);
  check_attention_inputs(query, key, value);
  check_key_padding_mask(query, key_padding_mask);
  check_scale_representable(query, args);
}

}  // namespace dilated_attention
