// Autograd for dilated_attention: a torch::autograd::Function at the Autograd key whose forward
// and backward are dispatcher calls of the internal ops, so eager mode, TorchScript and
// AOTAutograd all see the same graph. Backward recomputes the attention weights from the saved
// log-sum-exp: memory stays O(B * N * H * D).
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "ops/dilated_attention_op.h"
#include "ops/no_double_backward.h"

namespace dilated_attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DilatedAttentionFunction : public torch::autograd::Function<DilatedAttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const AttentionArgs& args,
                            const std::optional<at::Tensor>& key_padding_mask) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, softmax_lse, rng_state] =
        call_dilated_attention_forward(query, key, value, args, key_padding_mask);
    // An absent mask is saved as an undefined tensor.
    ctx->save_for_backward(
        {query, key, value, output, softmax_lse, rng_state, mask_or_undefined(key_padding_mask)});
    args.save(ctx);
    return output;
  }

  // One gradient per forward input: query, key, value, and none for the arguments struct and
  // the mask.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto& grad_output = grad_outputs[0];
    if (!grad_output.defined()) return variable_list(5);
    const bool records_graph = at::GradMode::is_enabled();
    const auto saved = ctx->get_saved_variables();
    variable_list grads;
    {
      const at::NoGradGuard no_grad;
      const auto mask =
          saved[6].defined() ? std::optional<at::Tensor>(saved[6]) : std::optional<at::Tensor>();
      auto [grad_query, grad_key, grad_value] =
          call_dilated_attention_backward(grad_output, saved[0], saved[1], saved[2], saved[3],
                                          saved[4], saved[5], AttentionArgs::load(ctx), mask);
      grads = {grad_query, grad_key, grad_value, at::Tensor(), at::Tensor()};
    }
    // Outside the no-grad scope, so the error node is recorded.
    return once_differentiable(records_graph, std::move(grads), "dilated_attention", saved[0],
                               saved[1], saved[2]);
  }
};

at::Tensor dilated_attention_autograd(const at::Tensor& query, const at::Tensor& key,
                                      const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                      const std::optional<at::Tensor>& key_padding_mask) {
  return DilatedAttentionFunction::apply(query, key, value, DILATED_ATTENTION_ARGS_COLLECT(),
                                         key_padding_mask);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) {
  m.impl("dilated_attention", &dilated_attention::dilated_attention_autograd);
  // The internal forward / backward ops have no derivative of their own (the public op's
  // autograd calls them below autograd): called by hand on inputs that require grad, their
  // outputs say so on backward instead of carrying a graph of ATen's internals.
  m.impl("_dilated_attention_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("_dilated_attention_backward", torch::autograd::autogradNotImplementedFallback());
}
