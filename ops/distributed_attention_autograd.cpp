// Autograd for _distributed_dilated_attention: forward and backward are dispatcher calls of the
// internal ops, which communicate; backward therefore runs the backend's exchange again and
// returns key/value gradients to the ranks that own those rows.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "ops/distributed_attention_op.h"
#include "ops/no_double_backward.h"

namespace dilated_attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DistributedAttentionFunction
    : public torch::autograd::Function<DistributedAttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const AttentionArgs& args,
                            const DistributedTarget& target,
                            const std::optional<at::Tensor>& key_padding_mask) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, softmax_lse, rng_state] =
        call_distributed_attention_forward(query, key, value, args, target, key_padding_mask);
    // An absent mask is saved as an undefined tensor.
    ctx->save_for_backward(
        {query, key, value, output, softmax_lse, rng_state, mask_or_undefined(key_padding_mask)});
    args.save(ctx);
    ctx->saved_data["group_name"] = target.group_name;
    ctx->saved_data["backend"] = target.backend;
    return output;
  }

  // One gradient per forward input: query, key, value, none for the arguments, the target and
  // the mask.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const bool records_graph = at::GradMode::is_enabled();
    const auto saved = ctx->get_saved_variables();
    variable_list grads;
    {
      const at::NoGradGuard no_grad;
      // Every rank must take part in backward's exchange, so an undefined gradient is zeros.
      const auto grad_output =
          grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(saved[3]);
      const DistributedTarget target{ctx->saved_data["group_name"].toStringRef(),
                                     ctx->saved_data["backend"].toStringRef()};
      const auto mask =
          saved[6].defined() ? std::optional<at::Tensor>(saved[6]) : std::optional<at::Tensor>();
      auto [grad_query, grad_key, grad_value] = call_distributed_attention_backward(
          grad_output, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
          AttentionArgs::load(ctx), target, mask);
      grads = {grad_query, grad_key, grad_value, at::Tensor(), at::Tensor(), at::Tensor()};
    }
    // Outside the no-grad scope, so the error node is recorded.
    return once_differentiable(records_graph, std::move(grads), "distributed dilated attention",
                               saved[0], saved[1], saved[2]);
  }
};

at::Tensor distributed_attention_autograd(const at::Tensor& query, const at::Tensor& key,
                                          const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                          c10::string_view group_name, c10::string_view backend,
                                          const std::optional<at::Tensor>& key_padding_mask) {
  return DistributedAttentionFunction::apply(
      query, key, value, DILATED_ATTENTION_ARGS_COLLECT(),
      DistributedTarget{std::string(group_name), std::string(backend)}, key_padding_mask);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) {
  m.impl("_distributed_dilated_attention", &dilated_attention::distributed_attention_autograd);
  // The internal forward / backward ops have no derivative of their own (the public op's
  // autograd calls them below autograd): called by hand on inputs that require grad, their
  // outputs say so on backward instead of carrying a graph of ATen's internals.
  m.impl("_distributed_dilated_attention_forward",
         torch::autograd::autogradNotImplementedFallback());
  m.impl("_distributed_dilated_attention_backward",
         torch::autograd::autogradNotImplementedFallback());
}
