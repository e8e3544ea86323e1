// Multi-head wrappers around the distributed attention: input projections, the attention on
// [B, N, heads, E / heads], head merge, output projection. Built only from dispatcher ops
// (CompositeImplicitAutograd), so autograd and Meta come from the ops they call.
#include <ATen/ops/linear.h>
#include <torch/library.h>

#include "ops/validation.h"

namespace dilated_attention {
namespace {

at::Tensor call_distributed(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                            double dropout_p, bool is_causal, std::optional<double> scale,
                            c10::string_view group_name, c10::string_view backend) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_distributed_dilated_attention", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            at::IntArrayRef, at::IntArrayRef, double, bool, std::optional<double>,
                            c10::string_view, c10::string_view)>();
  return op.call(q, k, v, segment_lengths, dilation_rates, dropout_p, is_causal, scale, group_name,
                 backend);
}

at::Tensor split_heads(const at::Tensor& x, int64_t num_heads) {
  return x.unflatten_symint(-1, {num_heads, x.sym_size(-1) / num_heads});
}

at::Tensor projected_attention(const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const at::Tensor& q_weight,
                               const std::optional<at::Tensor>& q_bias, const at::Tensor& k_weight,
                               const std::optional<at::Tensor>& k_bias, const at::Tensor& v_weight,
                               const std::optional<at::Tensor>& v_bias,
                               const at::Tensor& out_weight,
                               const std::optional<at::Tensor>& out_bias, int64_t num_heads,
                               at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                               double dropout_p, bool is_causal, std::optional<double> scale,
                               c10::string_view group_name, c10::string_view backend) {
  check_multihead_input(query, "query", q_weight.sym_size(1), num_heads);
  auto attended =
      call_distributed(split_heads(at::linear(query, q_weight, q_bias), num_heads),
                       split_heads(at::linear(key, k_weight, k_bias), num_heads),
                       split_heads(at::linear(value, v_weight, v_bias), num_heads), segment_lengths,
                       dilation_rates, dropout_p, is_causal, scale, group_name, backend);
  return at::linear(attended.flatten(-2), out_weight, out_bias);
}

// Self-attention with one fused [3E, E] projection (q, k, v in that order).
at::Tensor ring_multihead(const at::Tensor& x, const at::Tensor& qkv_weight,
                          const std::optional<at::Tensor>& qkv_bias, const at::Tensor& out_weight,
                          const std::optional<at::Tensor>& out_bias, int64_t num_heads,
                          at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                          double dropout_p, bool is_causal, std::optional<double> scale,
                          c10::string_view group_name) {
  check_multihead_input(x, "x", qkv_weight.sym_size(1), num_heads);
  auto qkv = split_heads(at::linear(x, qkv_weight, qkv_bias), 3 * num_heads).chunk(3, -2);
  auto attended = call_distributed(qkv[0], qkv[1], qkv[2], segment_lengths, dilation_rates,
                                   dropout_p, is_causal, scale, group_name, "segment_ring");
  return at::linear(attended.flatten(-2), out_weight, out_bias);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  m.def(
      "_multihead_dilated_attention(Tensor query, Tensor key, Tensor value, Tensor q_weight, "
      "Tensor? q_bias, Tensor k_weight, Tensor? k_bias, Tensor v_weight, Tensor? v_bias, "
      "Tensor out_weight, Tensor? out_bias, int num_heads, int[] segment_lengths, "
      "int[] dilation_rates, float dropout_p=0.0, bool is_causal=False, float? scale=None, "
      "str group_name=\"\", str backend=\"segment_ring\") -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "ring_multihead_dilated_attention(Tensor x, Tensor qkv_weight, Tensor? qkv_bias, "
      "Tensor out_weight, Tensor? out_bias, int num_heads, int[] segment_lengths, "
      "int[] dilation_rates, float dropout_p=0.0, bool is_causal=False, float? scale=None, "
      "str group_name=\"\") -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeImplicitAutograd, m) {
  m.impl("_multihead_dilated_attention", &dilated_attention::projected_attention);
  m.impl("ring_multihead_dilated_attention", &dilated_attention::ring_multihead);
}
