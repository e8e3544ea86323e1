// Autograd for dilated_attention_varlen, as dilated_attention_autograd.cpp does for the core op:
// forward and backward are dispatcher calls of the internal ops; backward recomputes the weights
// from the saved log-sum-exp.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "ops/no_double_backward.h"
#include "ops/varlen_attention_op.h"

namespace dilated_attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class VarlenAttentionFunction : public torch::autograd::Function<VarlenAttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const at::Tensor& cu_seqlens,
                            int64_t max_seqlen, const AttentionArgs& args) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, softmax_lse, rng_state] =
        call_varlen_attention_forward(query, key, value, cu_seqlens, max_seqlen, args);
    ctx->save_for_backward({query, key, value, output, softmax_lse, rng_state, cu_seqlens});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    args.save(ctx);
    return output;
  }

  // One gradient per forward input: query, key, value, and none for cu_seqlens, max_seqlen and
  // the arguments struct.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto& grad_output = grad_outputs[0];
    if (!grad_output.defined()) return variable_list(6);
    const bool records_graph = at::GradMode::is_enabled();
    const auto saved = ctx->get_saved_variables();
    variable_list grads;
    {
      const at::NoGradGuard no_grad;
      auto [grad_query, grad_key, grad_value] = call_varlen_attention_backward(
          grad_output, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], saved[6],
          ctx->saved_data["max_seqlen"].toInt(), AttentionArgs::load(ctx));
      grads = {grad_query, grad_key, grad_value, at::Tensor(), at::Tensor(), at::Tensor()};
    }
    return once_differentiable(records_graph, std::move(grads), "dilated_attention_varlen",
                               saved[0], saved[1], saved[2]);
  }
};

at::Tensor varlen_attention_autograd(const at::Tensor& query, const at::Tensor& key,
                                     const at::Tensor& value, const at::Tensor& cu_seqlens,
                                     int64_t max_seqlen, DILATED_ATTENTION_ARGS_PARAMS) {
  return VarlenAttentionFunction::apply(query, key, value, cu_seqlens, max_seqlen,
                                        DILATED_ATTENTION_ARGS_COLLECT());
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) {
  m.impl("dilated_attention_varlen", &dilated_attention::varlen_attention_autograd);
  // The internal forward / backward ops have no derivative of their own (the public op's
  // autograd calls them below autograd): called by hand on inputs that require grad, their
  // outputs say so on backward instead of carrying a graph of ATen's internals.
  m.impl("_dilated_attention_varlen_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("_dilated_attention_varlen_backward", torch::autograd::autogradNotImplementedFallback());
}
