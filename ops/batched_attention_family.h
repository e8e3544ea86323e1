// An op family over batched [B, N, H, D] tensors with the shared arguments and a key padding mask
// (dilated_attention, longnet_attention): the public op, its internal forward / backward ops,
// their Meta kernels and autograd, written once over the family's description. The kernels are
// device-generic (ATen views and copies around the device's attention kernels, looked up in
// kernels/device_kernels.h), so they register once, under CompositeExplicitAutograd.
//
// Schemas, for <name>:
//   <name>(Tensor query, Tensor key, Tensor value, <shared args>, Tensor? key_padding_mask=None)
//       -> Tensor
//   _<name>_forward(<the same, shared args without defaults>)
//       -> (Tensor output, Tensor softmax_lse, Tensor rng_state)
//   _<name>_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, Tensor output,
//       Tensor softmax_lse, Tensor rng_state, <shared args>, Tensor? key_padding_mask=None)
//       -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)
// Backward recomputes the attention weights from the saved log-sum-exp: memory stays
// O(B * N * H * D).
#pragma once

#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/dilated_attention_kernel.h"
#include "ops/attention_args.h"
#include "ops/attention_config.h"
#include "ops/no_double_backward.h"
#include "ops/validate_attention.h"

namespace dilated_attention {

struct BatchedAttentionFamily {
  const char* name;  // the public op's; the internal ones are _<name>_forward / _<name>_backward
  // Every check of the call but the device's and backward's (ValueError, before any work).
  void (*check_call)(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     const AttentionArgs& args, const std::optional<at::Tensor>& key_padding_mask);
  AttentionConfig (*config)(const at::Tensor& query, const at::Tensor& key,
                            const AttentionArgs& args, uint64_t dropout_seed);
  std::tuple<at::Tensor, at::Tensor> (*forward_kernel)(const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v,
                                                       const at::Tensor& key_padding_mask,
                                                       const AttentionConfig& config);
  std::tuple<at::Tensor, at::Tensor, at::Tensor> (*backward_kernel)(
      const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
      const at::Tensor& key_padding_mask, const at::Tensor& out, const at::Tensor& lse,
      const AttentionConfig& config);
};

template <const BatchedAttentionFamily& F>
struct BatchedAttentionOps {
  using Mask = std::optional<at::Tensor>;
  using Three = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

  static std::string internal_name(const char* which) {
    return std::string("_") + F.name + "_" + which;
  }

  // The log-sum-exp has one value per position and head: [B, N, H].
  static std::vector<c10::SymInt> lse_sizes_of(const at::Tensor& query) {
    return {query.sym_size(0), query.sym_size(1), query.sym_size(2)};
  }

  // Meta kernels: shapes only, from symbolic sizes so torch.compile can keep N dynamic.
  static at::Tensor new_like(const at::Tensor& x) {
    return at::empty_symint(x.sym_sizes(), x.options());
  }

  static void check_backward_call(const at::Tensor& grad_output, const at::Tensor& query,
                                  const at::Tensor& key, const at::Tensor& value,
                                  const at::Tensor& output, const at::Tensor& softmax_lse,
                                  const at::Tensor& rng_state, const AttentionArgs& args,
                                  const Mask& key_padding_mask) {
    F.check_call(query, key, value, args, key_padding_mask);
    check_backward_inputs(grad_output, query, output, softmax_lse, rng_state, lse_sizes_of(query));
  }

  static Three forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       DILATED_ATTENTION_ARGS_PARAMS, const Mask& key_padding_mask) {
    const auto args = DILATED_ATTENTION_ARGS_COLLECT();
    F.check_call(query, key, value, args, key_padding_mask);
    check_device_supports(query, args, key_padding_mask);
    check_scores_representable(query, key, args);
    // Kernels launch on the inputs' device and its current stream.
    const at::OptionalDeviceGuard device_guard(at::device_of(query));
    const uint64_t seed = draw_dropout_seed(args);
    auto [out, lse] = F.forward_kernel(query, key, value, mask_or_undefined(key_padding_mask),
                                       F.config(query, key, args, seed));
    return {out, lse, pack_rng_state(seed, args, query.options())};
  }

  static Three backward(const at::Tensor& grad_output, const at::Tensor& query,
                        const at::Tensor& key, const at::Tensor& value, const at::Tensor& output,
                        const at::Tensor& softmax_lse, const at::Tensor& rng_state,
                        DILATED_ATTENTION_ARGS_PARAMS, const Mask& key_padding_mask) {
    const auto args = DILATED_ATTENTION_ARGS_COLLECT();
    check_backward_call(grad_output, query, key, value, output, softmax_lse, rng_state, args,
                        key_padding_mask);
    check_device_supports(query, args, key_padding_mask);
    check_scores_representable(query, key, args);
    const at::OptionalDeviceGuard device_guard(at::device_of(query));
    return F.backward_kernel(grad_output, query, key, value, mask_or_undefined(key_padding_mask),
                             output, softmax_lse,
                             F.config(query, key, args, unpack_dropout_seed(rng_state, args)));
  }

  static at::Tensor op(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       DILATED_ATTENTION_ARGS_PARAMS, const Mask& key_padding_mask) {
    const auto args = DILATED_ATTENTION_ARGS_COLLECT();
    return std::get<0>(args.unpack(
        [&](auto... shared) { return forward(query, key, value, shared..., key_padding_mask); }));
  }

  static Three forward_meta(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            DILATED_ATTENTION_ARGS_PARAMS, const Mask& key_padding_mask) {
    const auto args = DILATED_ATTENTION_ARGS_COLLECT();
    F.check_call(query, key, value, args, key_padding_mask);
    auto lse = at::empty_symint(lse_sizes_of(query),
                                query.options().dtype(at::toOpMathType(query.scalar_type())));
    auto rng_state = at::empty({kRngStateSize}, query.options().dtype(at::kLong));
    return {new_like(query), lse, rng_state};
  }

  static Three backward_meta(const at::Tensor& grad_output, const at::Tensor& query,
                             const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& output, const at::Tensor& softmax_lse,
                             const at::Tensor& rng_state, DILATED_ATTENTION_ARGS_PARAMS,
                             const Mask& key_padding_mask) {
    const auto args = DILATED_ATTENTION_ARGS_COLLECT();
    check_backward_call(grad_output, query, key, value, output, softmax_lse, rng_state, args,
                        key_padding_mask);
    return {new_like(query), new_like(key), new_like(value)};
  }

  static at::Tensor meta(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         DILATED_ATTENTION_ARGS_PARAMS, const Mask& key_padding_mask) {
    const auto args = DILATED_ATTENTION_ARGS_COLLECT();
    F.check_call(query, key, value, args, key_padding_mask);
    return new_like(query);
  }

  // Dispatcher calls of the internal ops (autograd calls these, so tracing sees dispatcher ops).
  static Three call_forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            const AttentionArgs& args, const Mask& key_padding_mask) {
    static auto handle =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow(("dilated_attention::" + internal_name("forward")).c_str(), "")
            .typed<decltype(forward)>();
    return args.unpack([&](auto... shared) {
      return handle.call(query, key, value, shared..., key_padding_mask);
    });
  }

  static Three call_backward(const at::Tensor& grad_output, const at::Tensor& query,
                             const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& output, const at::Tensor& softmax_lse,
                             const at::Tensor& rng_state, const AttentionArgs& args,
                             const Mask& key_padding_mask) {
    static auto handle =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow(("dilated_attention::" + internal_name("backward")).c_str(), "")
            .typed<decltype(backward)>();
    return args.unpack([&](auto... shared) {
      return handle.call(grad_output, query, key, value, output, softmax_lse, rng_state, shared...,
                         key_padding_mask);
    });
  }

  class Function : public torch::autograd::Function<Function> {
   public:
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& query,
                              const at::Tensor& key, const at::Tensor& value,
                              const AttentionArgs& args, const Mask& key_padding_mask) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      auto [output, softmax_lse, rng_state] =
          call_forward(query, key, value, args, key_padding_mask);
      // An absent mask is saved as an undefined tensor.
      ctx->save_for_backward(
          {query, key, value, output, softmax_lse, rng_state, mask_or_undefined(key_padding_mask)});
      args.save(ctx);
      return output;
    }

    // One gradient per forward input: query, key, value, and none for the arguments struct and
    // the mask.
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grad_outputs) {
      const auto& grad_output = grad_outputs[0];
      if (!grad_output.defined()) return torch::autograd::variable_list(5);
      const bool records_graph = at::GradMode::is_enabled();
      const auto saved = ctx->get_saved_variables();
      torch::autograd::variable_list grads;
      {
        const at::NoGradGuard no_grad;
        const auto mask = saved[6].defined() ? Mask(saved[6]) : Mask();
        auto [grad_query, grad_key, grad_value] =
            call_backward(grad_output, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
                          AttentionArgs::load(ctx), mask);
        grads = {grad_query, grad_key, grad_value, at::Tensor(), at::Tensor()};
      }
      // Outside the no-grad scope, so the error node is recorded.
      return once_differentiable(records_graph, std::move(grads), F.name, saved[0], saved[1],
                                 saved[2]);
    }
  };

  static at::Tensor autograd(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                             const Mask& key_padding_mask) {
    return Function::apply(query, key, value, DILATED_ATTENTION_ARGS_COLLECT(), key_padding_mask);
  }

  static void define(torch::Library& m) {
    const std::string tensors = "(Tensor query, Tensor key, Tensor value, ";
    const std::string mask = std::string(", ") + kKeyPaddingMaskSchema;
    const std::string internal_args = attention_args_schema(SchemaDefaults::kWithout) + mask;
    m.def((F.name + tensors + attention_args_schema() + mask + ") -> Tensor").c_str(),
          {at::Tag::pt2_compliant_tag});
    m.def((internal_name("forward") + tensors + internal_args +
           ") -> (Tensor output, Tensor softmax_lse, Tensor rng_state)")
              .c_str(),
          {at::Tag::pt2_compliant_tag});
    m.def((internal_name("backward") +
           "(Tensor grad_output, Tensor query, Tensor key, Tensor value, Tensor output, "
           "Tensor softmax_lse, Tensor rng_state, " +
           internal_args + ") -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)")
              .c_str(),
          {at::Tag::pt2_compliant_tag});
  }

  static void impl_kernels(torch::Library& m) {
    m.impl(F.name, &op);
    m.impl(internal_name("forward").c_str(), &forward);
    m.impl(internal_name("backward").c_str(), &backward);
  }

  static void impl_meta(torch::Library& m) {
    m.impl(F.name, &meta);
    m.impl(internal_name("forward").c_str(), &forward_meta);
    m.impl(internal_name("backward").c_str(), &backward_meta);
  }

  static void impl_autograd(torch::Library& m) {
    m.impl(F.name, &autograd);
    // The internal forward / backward ops have no derivative of their own (the public op's
    // autograd calls them below autograd): called by hand on inputs that require grad, their
    // outputs say so on backward instead of carrying a graph of ATen's internals.
    m.impl(internal_name("forward").c_str(), torch::autograd::autogradNotImplementedFallback());
    m.impl(internal_name("backward").c_str(), torch::autograd::autogradNotImplementedFallback());
  }
};

}  // namespace dilated_attention
