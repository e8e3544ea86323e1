// dilated_attention: schemas and the device-generic and Meta kernels of the public op and of its
// internal forward / backward ops. Autograd lives in dilated_attention_autograd.cpp. The kernels
// are device-generic (ATen views and copies around the device's attention kernels, looked up in
// kernels/device_kernels.h), so they register once, under CompositeExplicitAutograd.
#include "ops/dilated_attention_op.h"

#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "kernels/dilated_attention_kernel.h"
#include "ops/attention_config.h"
#include "ops/validate_attention.h"

namespace dilated_attention {
namespace {

AttentionConfig config_for(const at::Tensor& query, const at::Tensor& key,
                           const AttentionArgs& args, uint64_t seed) {
  return make_attention_config(query.size(2), key.size(2), query.size(3), args, seed);
}

// Meta kernels: shapes only, from symbolic sizes so torch.compile can keep N dynamic.
at::Tensor new_like(const at::Tensor& x) { return at::empty_symint(x.sym_sizes(), x.options()); }

// The log-sum-exp has one value per position and head: [B, N, H].
std::vector<c10::SymInt> lse_sizes_of(const at::Tensor& query) {
  return {query.sym_size(0), query.sym_size(1), query.sym_size(2)};
}

void check_backward_call(const at::Tensor& grad_output, const at::Tensor& query,
                         const at::Tensor& key, const at::Tensor& value, const at::Tensor& output,
                         const at::Tensor& softmax_lse, const at::Tensor& rng_state,
                         const AttentionArgs& args,
                         const std::optional<at::Tensor>& key_padding_mask) {
  check_dilated_attention_call(query, key, value, args, key_padding_mask);
  check_backward_inputs(grad_output, query, output, softmax_lse, rng_state, lse_sizes_of(query));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    DILATED_ATTENTION_ARGS_PARAMS, const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_dilated_attention_call(query, key, value, args, key_padding_mask);
  auto lse = at::empty_symint(lse_sizes_of(query),
                              query.options().dtype(at::toOpMathType(query.scalar_type())));
  auto rng_state = at::empty({kRngStateSize}, query.options().dtype(at::kLong));
  return {new_like(query), lse, rng_state};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, DILATED_ATTENTION_ARGS_PARAMS,
    const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_backward_call(grad_output, query, key, value, output, softmax_lse, rng_state, args,
                      key_padding_mask);
  return {new_like(query), new_like(key), new_like(value)};
}

at::Tensor dilated_attention_meta(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_dilated_attention_call(query, key, value, args, key_padding_mask);
  return new_like(query);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_forward_op(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    DILATED_ATTENTION_ARGS_PARAMS, const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_dilated_attention_call(query, key, value, args, key_padding_mask);
  check_device_supports(query, args, key_padding_mask);
  check_scores_representable(query, key, args);
  // Kernels launch on the inputs' device and its current stream.
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  const uint64_t seed = draw_dropout_seed(args);
  auto [out, lse] = dilated_attention_forward_kernel(
      query, key, value, mask_or_undefined(key_padding_mask), config_for(query, key, args, seed));
  return {out, lse, pack_rng_state(seed, args, query.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_backward_op(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, DILATED_ATTENTION_ARGS_PARAMS,
    const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_backward_call(grad_output, query, key, value, output, softmax_lse, rng_state, args,
                      key_padding_mask);
  check_device_supports(query, args, key_padding_mask);
  check_scores_representable(query, key, args);
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  return dilated_attention_backward_kernel(
      grad_output, query, key, value, mask_or_undefined(key_padding_mask), output, softmax_lse,
      config_for(query, key, args, unpack_dropout_seed(rng_state, args)));
}

at::Tensor dilated_attention_op(const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  return std::get<0>(args.unpack([&](auto... shared) {
    return dilated_attention_forward_op(query, key, value, shared..., key_padding_mask);
  }));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const AttentionArgs& args, const std::optional<at::Tensor>& key_padding_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dilated_attention::_dilated_attention_forward", "")
                       .typed<decltype(dilated_attention_forward_op)>();
  return args.unpack(
      [&](auto... shared) { return op.call(query, key, value, shared..., key_padding_mask); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const AttentionArgs& args,
    const std::optional<at::Tensor>& key_padding_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dilated_attention::_dilated_attention_backward", "")
                       .typed<decltype(dilated_attention_backward_op)>();
  return args.unpack([&](auto... shared) {
    return op.call(grad_output, query, key, value, output, softmax_lse, rng_state, shared...,
                   key_padding_mask);
  });
}

}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  using dilated_attention::attention_args_schema;
  using dilated_attention::kKeyPaddingMaskSchema;
  using dilated_attention::SchemaDefaults;
  const std::string op = "dilated_attention(Tensor query, Tensor key, Tensor value, " +
                         attention_args_schema() + ", " + kKeyPaddingMaskSchema + ") -> Tensor";
  const std::string forward =
      "_dilated_attention_forward(Tensor query, Tensor key, Tensor value, " +
      attention_args_schema(SchemaDefaults::kWithout) + ", " + kKeyPaddingMaskSchema +
      ") -> (Tensor output, Tensor softmax_lse, Tensor rng_state)";
  const std::string backward =
      "_dilated_attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
      "Tensor output, Tensor softmax_lse, Tensor rng_state, " +
      attention_args_schema(SchemaDefaults::kWithout) + ", " + kKeyPaddingMaskSchema +
      ") -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)";
  m.def(op.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(forward.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(backward.c_str(), {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeExplicitAutograd, m) {
  m.impl("dilated_attention", &dilated_attention::dilated_attention_op);
  m.impl("_dilated_attention_forward", &dilated_attention::dilated_attention_forward_op);
  m.impl("_dilated_attention_backward", &dilated_attention::dilated_attention_backward_op);
}

TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) {
  m.impl("dilated_attention", &dilated_attention::dilated_attention_meta);
  m.impl("_dilated_attention_forward", &dilated_attention::dilated_attention_forward_meta);
  m.impl("_dilated_attention_backward", &dilated_attention::dilated_attention_backward_meta);
}
