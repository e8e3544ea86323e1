// dilated_attention: schemas, CPU and Meta kernels of the public op and of its internal
// forward / backward ops. Autograd lives in dilated_attention_autograd.cpp.
#include "ops/dilated_attention_op.h"

#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "kernels/dilated_attention_kernel.h"
#include "ops/attention_config.h"
#include "ops/validation.h"

namespace dilated_attention {
namespace {

AttentionConfig make_config(const at::Tensor& query, at::IntArrayRef segment_lengths,
                            at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                            std::optional<double> scale, uint64_t dropout_seed) {
  return make_attention_config(query.size(2), query.size(3), segment_lengths, dilation_rates,
                               dropout_p, is_causal, scale, dropout_seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_dense(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale) {
  // Kernels launch on the inputs' device and its current stream.
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  check_dilated_attention_args(query, key, value, segment_lengths, dilation_rates, dropout_p,
                               scale);
  const uint64_t seed = draw_dropout_seed(dropout_p);
  auto [out, lse] = dilated_attention_forward_kernel(
      query, key, value,
      make_config(query, segment_lengths, dilation_rates, dropout_p, is_causal, scale, seed));
  return {out, lse, pack_rng_state(seed, query.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_dense(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale) {
  // Kernels launch on the inputs' device and its current stream.
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  check_dilated_attention_args(query, key, value, segment_lengths, dilation_rates, dropout_p,
                               scale);
  const uint64_t seed = unpack_dropout_seed(rng_state);
  return dilated_attention_backward_kernel(
      grad_output, query, key, value, output, softmax_lse,
      make_config(query, segment_lengths, dilation_rates, dropout_p, is_causal, scale, seed));
}

at::Tensor dilated_attention_dense(const at::Tensor& query, const at::Tensor& key,
                                   const at::Tensor& value, at::IntArrayRef segment_lengths,
                                   at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                                   std::optional<double> scale) {
  return std::get<0>(forward_dense(query, key, value, segment_lengths, dilation_rates, dropout_p,
                                   is_causal, scale));
}

// Meta kernels: shapes only, from symbolic sizes so torch.compile can keep N dynamic.
at::Tensor new_like_query(const at::Tensor& query) {
  return at::empty_symint(query.sym_sizes(), query.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale) {
  check_dilated_attention_args(query, key, value, segment_lengths, dilation_rates, dropout_p,
                               scale);
  auto lse = at::empty_symint({query.sym_size(0), query.sym_size(1), query.sym_size(2)},
                              query.options().dtype(at::toOpMathType(query.scalar_type())));
  auto rng_state = at::empty({kRngStateSize}, query.options().dtype(at::kLong));
  return {new_like_query(query), lse, rng_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale) {
  check_dilated_attention_args(query, key, value, segment_lengths, dilation_rates, dropout_p,
                               scale);
  return {new_like_query(query), new_like_query(query), new_like_query(query)};
}

at::Tensor dilated_attention_meta(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, at::IntArrayRef segment_lengths,
                                  at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                                  std::optional<double> scale) {
  check_dilated_attention_args(query, key, value, segment_lengths, dilation_rates, dropout_p,
                               scale);
  return new_like_query(query);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dilated_attention::_dilated_attention_forward", "")
                       .typed<decltype(forward_dense)>();
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dilated_attention::_dilated_attention_backward", "")
                       .typed<decltype(backward_dense)>();
  return op.call(grad_output, query, key, value, output, softmax_lse, rng_state, segment_lengths,
                 dilation_rates, dropout_p, is_causal, scale);
}

}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  m.def(
      "dilated_attention(Tensor query, Tensor key, Tensor value, int[] segment_lengths, "
      "int[] dilation_rates, float dropout_p=0.0, bool is_causal=False, float? scale=None) "
      "-> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_dilated_attention_forward(Tensor query, Tensor key, Tensor value, int[] segment_lengths, "
      "int[] dilation_rates, float dropout_p, bool is_causal, float? scale) "
      "-> (Tensor output, Tensor softmax_lse, Tensor rng_state)",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_dilated_attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
      "Tensor output, Tensor softmax_lse, Tensor rng_state, int[] segment_lengths, "
      "int[] dilation_rates, float dropout_p, bool is_causal, float? scale) "
      "-> (Tensor grad_query, Tensor grad_key, Tensor grad_value)",
      {at::Tag::pt2_compliant_tag});
}

// The dense kernels are device-generic (ATen views, copies and the attention kernel
// block_attention picks), so CPU and CUDA register the same functions.
TORCH_LIBRARY_IMPL(dilated_attention, CPU, m) {
  m.impl("dilated_attention", &dilated_attention::dilated_attention_dense);
  m.impl("_dilated_attention_forward", &dilated_attention::forward_dense);
  m.impl("_dilated_attention_backward", &dilated_attention::backward_dense);
}

TORCH_LIBRARY_IMPL(dilated_attention, CUDA, m) {
  m.impl("dilated_attention", &dilated_attention::dilated_attention_dense);
  m.impl("_dilated_attention_forward", &dilated_attention::forward_dense);
  m.impl("_dilated_attention_backward", &dilated_attention::backward_dense);
}

TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) {
  m.impl("dilated_attention", &dilated_attention::dilated_attention_meta);
  m.impl("_dilated_attention_forward", &dilated_attention::forward_meta);
  m.impl("_dilated_attention_backward", &dilated_attention::backward_meta);
}
