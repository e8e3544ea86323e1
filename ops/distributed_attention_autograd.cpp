// Autograd for _distributed_dilated_attention: forward and backward are dispatcher calls of the
// internal ops, which communicate; backward therefore runs the backend's exchange again and
// returns key/value gradients to the ranks that own those rows.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/distributed_attention_op.h"
#include "ops/saved_attention_args.h"

namespace dilated_attention {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class DistributedAttentionFunction
    : public torch::autograd::Function<DistributedAttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, at::IntArrayRef segment_lengths,
                            at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                            std::optional<double> scale, c10::string_view group_name,
                            c10::string_view backend) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, softmax_lse, rng_state] =
        call_distributed_forward(query, key, value, segment_lengths, dilation_rates, dropout_p,
                                 is_causal, scale, group_name, backend);
    ctx->save_for_backward({query, key, value, output, softmax_lse, rng_state});
    SavedAttentionArgs{segment_lengths.vec(), dilation_rates.vec(), dropout_p, is_causal, scale}
        .save(ctx);
    ctx->saved_data["group_name"] = std::string(group_name);
    ctx->saved_data["backend"] = std::string(backend);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto args = SavedAttentionArgs::load(ctx);
    // Every rank must take part in backward's exchange, so an undefined gradient is zeros.
    const auto grad_output = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(saved[3]);
    auto [grad_query, grad_key, grad_value] = call_distributed_backward(
        grad_output, saved[0], saved[1], saved[2], saved[3], saved[4], saved[5],
        args.segment_lengths, args.dilation_rates, args.dropout_p, args.is_causal, args.scale,
        ctx->saved_data["group_name"].toStringRef(), ctx->saved_data["backend"].toStringRef());
    return {grad_query, grad_key, grad_value, {}, {}, {}, {}, {}, {}, {}};
  }
};

at::Tensor distributed_autograd(const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, at::IntArrayRef segment_lengths,
                                at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                                std::optional<double> scale, c10::string_view group_name,
                                c10::string_view backend) {
  return DistributedAttentionFunction::apply(query, key, value, segment_lengths, dilation_rates,
                                             dropout_p, is_causal, scale, group_name, backend);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) {
  m.impl("_distributed_dilated_attention", &dilated_attention::distributed_autograd);
}
