// Autograd for dilated_attention: a torch::autograd::Function at the Autograd key whose forward
// and backward are dispatcher calls of the internal ops, so eager mode, TorchScript and
// AOTAutograd all see the same graph. Backward recomputes the attention weights from the saved
// log-sum-exp: memory stays O(B * N * H * D).
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/dilated_attention_op.h"

namespace dilated_attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DilatedAttentionFunction : public torch::autograd::Function<DilatedAttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, at::IntArrayRef segment_lengths,
                            at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                            std::optional<double> scale) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, softmax_lse, rng_state] = call_dilated_attention_forward(
        query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale);
    ctx->save_for_backward({query, key, value, output, softmax_lse, rng_state});
    ctx->saved_data["segment_lengths"] = segment_lengths.vec();
    ctx->saved_data["dilation_rates"] = dilation_rates.vec();
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& grad_output = grad_outputs[0];
    if (!grad_output.defined())
      return {at::Tensor(), at::Tensor(), at::Tensor(), {}, {}, {}, {}, {}};
    const auto segment_lengths = ctx->saved_data["segment_lengths"].toIntVector();
    const auto dilation_rates = ctx->saved_data["dilation_rates"].toIntVector();
    const auto scale_value = ctx->saved_data["scale"];
    const std::optional<double> scale =
        scale_value.isNone() ? std::nullopt : std::optional<double>(scale_value.toDouble());
    auto [grad_query, grad_key, grad_value] = call_dilated_attention_backward(
        grad_output, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5], segment_lengths,
        dilation_rates, ctx->saved_data["dropout_p"].toDouble(),
        ctx->saved_data["is_causal"].toBool(), scale);
    return {grad_query,   grad_key,     grad_value,   at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor dilated_attention_autograd(const at::Tensor& query, const at::Tensor& key,
                                      const at::Tensor& value, at::IntArrayRef segment_lengths,
                                      at::IntArrayRef dilation_rates, double dropout_p,
                                      bool is_causal, std::optional<double> scale) {
  return DilatedAttentionFunction::apply(query, key, value, segment_lengths, dilation_rates,
                                         dropout_p, is_causal, scale);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) {
  m.impl("dilated_attention", &dilated_attention::dilated_attention_autograd);
}
