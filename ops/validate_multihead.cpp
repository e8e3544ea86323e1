#include "ops/validate_multihead.h"

#include <c10/util/Exception.h>

#include <string>

namespace dilated_attention {
namespace {

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() == 3, "Expected 3D tensors [B, N, E], got ", name, " with ", x.dim(),
                    " dimensions");
}

void check_like(const at::Tensor& t, const std::string& name, const at::Tensor& x,
                const char* x_name) {
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "Dtype mismatch: ", x_name, " is ",
                    x.scalar_type(), ", ", name, " is ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "Device mismatch: ", x_name, " is on ", x.device(),
                    ", ", name, " is on ", t.device());
}

// `prefix`_weight [E_out, E_in] and `prefix`_bias [E_out] or none, applied to features of size
// `in_features` (`in_what` says whose); dtype and device those of `like`.
void check_projection(const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const std::string& prefix, const c10::SymInt& in_features,
                      const std::string& in_what, const at::Tensor& like, const char* like_name) {
  const std::string weight_name = prefix + "_weight";
  TORCH_CHECK_VALUE(weight.dim() == 2, weight_name, " expected 2D tensor [E_out, E_in], got ",
                    weight.dim(), "D");
  TORCH_CHECK_VALUE(in_features == weight.sym_size(1), in_what, " has embedding dimension ",
                    in_features, ", expected ", weight.sym_size(1), " (the input size of ",
                    weight_name, ")");
  check_like(weight, weight_name, like, like_name);
  if (bias.has_value() && bias->defined()) {
    const std::string bias_name = prefix + "_bias";
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->sym_size(0) == weight.sym_size(0), bias_name,
                      " expected shape [", weight.sym_size(0), "], got ", bias->sym_sizes());
    check_like(*bias, bias_name, like, like_name);
  }
}

void check_num_heads(int64_t num_heads) {
  TORCH_CHECK_VALUE(num_heads > 0, "num_heads must be positive, got ", num_heads);
}

}  // namespace

void check_projected_call(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const Projections& p, int64_t num_heads) {
  check_num_heads(num_heads);
  check_input(query, "query");
  check_input(key, "key");
  check_input(value, "value");
  check_like(key, "key", query, "query");
  check_like(value, "value", query, "query");
  check_projection(p.q_weight, p.q_bias, "q", query.sym_size(2), "query", query, "query");
  check_projection(p.k_weight, p.k_bias, "k", key.sym_size(2), "key", query, "query");
  check_projection(p.v_weight, p.v_bias, "v", value.sym_size(2), "value", query, "query");
  const auto features = p.q_weight.sym_size(0);
  TORCH_CHECK_VALUE(features % num_heads == 0, "q_weight has ", features,
                    " output features, which must be divisible by num_heads (", num_heads, ")");
  TORCH_CHECK_VALUE(p.k_weight.sym_size(0) == features && p.v_weight.sym_size(0) == features,
                    "q_weight, k_weight and v_weight must have the same number of output "
                    "features, got ",
                    features, ", ", p.k_weight.sym_size(0), " and ", p.v_weight.sym_size(0));
  check_projection(p.out_weight, p.out_bias, "out", features, "the merged heads", query, "query");
}

void check_fused_self_attention_call(const at::Tensor& x, const at::Tensor& qkv_weight,
                                     const std::optional<at::Tensor>& qkv_bias,
                                     const at::Tensor& out_weight,
                                     const std::optional<at::Tensor>& out_bias, int64_t num_heads) {
  check_num_heads(num_heads);
  check_input(x, "x");
  check_projection(qkv_weight, qkv_bias, "qkv", x.sym_size(2), "x", x, "x");
  // No 3 * num_heads: it could overflow for a huge num_heads and let a bad split through.
  const auto features = qkv_weight.sym_size(0);
  TORCH_CHECK_VALUE(features % 3 == 0, "qkv_weight has ", features,
                    " output features, which must be divisible by 3 (query, key and value)");
  TORCH_CHECK_VALUE((features / 3) % num_heads == 0, "qkv_weight has ", features,
                    " output features: the ", features / 3,
                    " of each of query, key and value must be divisible by num_heads (", num_heads,
                    ")");
  check_projection(out_weight, out_bias, "out", features / 3, "the merged heads", x, "x");
}

}  // namespace dilated_attention
