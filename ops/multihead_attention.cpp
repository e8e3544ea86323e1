#include "ops/multihead_attention.h"

#include <ATen/ops/linear.h>
#include <torch/library.h>

#include "ops/validate_multihead.h"

namespace dilated_attention {
namespace {

at::Tensor split_heads(const at::Tensor& x, int64_t num_heads) {
  return x.unflatten_symint(-1, {num_heads, x.sym_size(-1) / num_heads});
}

}  // namespace

at::Tensor projected_attention(const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const Projections& projections,
                               int64_t num_heads, const AttentionArgs& args,
                               const DistributedTarget& target,
                               const std::optional<at::Tensor>& key_padding_mask) {
  const auto& p = projections;
  check_before_distributed_call(query, args, target,
                                [&] { check_projected_call(query, key, value, p, num_heads); });
  auto attended =
      call_distributed_attention(split_heads(at::linear(query, p.q_weight, p.q_bias), num_heads),
                                 split_heads(at::linear(key, p.k_weight, p.k_bias), num_heads),
                                 split_heads(at::linear(value, p.v_weight, p.v_bias), num_heads),
                                 args, target, key_padding_mask);
  return at::linear(attended.flatten(-2), p.out_weight, p.out_bias);
}

at::Tensor projected_attention_op(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, DILATED_ATTENTION_PROJECTIONS_PARAMS,
                                  int64_t num_heads, DILATED_ATTENTION_ARGS_PARAMS,
                                  c10::string_view group_name, c10::string_view backend,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  return projected_attention(query, key, value, DILATED_ATTENTION_PROJECTIONS_COLLECT(), num_heads,
                             DILATED_ATTENTION_ARGS_COLLECT(),
                             {std::string(group_name), std::string(backend)}, key_padding_mask);
}

at::Tensor fused_self_attention(const at::Tensor& x, const at::Tensor& qkv_weight,
                                const std::optional<at::Tensor>& qkv_bias,
                                const at::Tensor& out_weight,
                                const std::optional<at::Tensor>& out_bias, int64_t num_heads,
                                const AttentionArgs& args, const DistributedTarget& target,
                                const std::optional<at::Tensor>& key_padding_mask) {
  check_before_distributed_call(x, args, target, [&] {
    check_fused_self_attention_call(x, qkv_weight, qkv_bias, out_weight, out_bias, num_heads);
  });
  auto qkv = split_heads(at::linear(x, qkv_weight, qkv_bias), 3 * num_heads).chunk(3, -2);
  auto attended =
      call_distributed_attention(qkv[0], qkv[1], qkv[2], args, target, key_padding_mask);
  return at::linear(attended.flatten(-2), out_weight, out_bias);
}

}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  const std::string schema =
      std::string("_multihead_dilated_attention(Tensor query, Tensor key, Tensor value, ") +
      dilated_attention::kProjectionsSchema + ", int num_heads, " +
      dilated_attention::attention_args_schema() +
      ", str group_name=\"\", str backend=\"segment_ring\", " +
      dilated_attention::kKeyPaddingMaskSchema + ") -> Tensor";
  m.def(schema.c_str(), {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeImplicitAutograd, m) {
  m.impl("_multihead_dilated_attention", &dilated_attention::projected_attention_op);
}
