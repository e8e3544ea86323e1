#include "kernels/block_attention.h"

#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>
#include <c10/util/Exception.h>

namespace dilated_attention {
namespace {

bool uses_dropout(const BlockOptions& options) {
  return options.dropout != nullptr && options.dropout->dropout_p() > 0.0;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> block_attention_forward(const at::Tensor& q,
                                                           const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options) {
  TORCH_CHECK(q.device().is_cpu(), "dilated_attention: no kernel for device ", q.device());
  if (uses_dropout(options)) {
    return dropout_attention_forward(q, k, v, options.is_causal, options.scale, *options.dropout,
                                     options.where);
  }
  return at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, options.is_causal,
                                                         std::nullopt, options.scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  TORCH_CHECK(q.device().is_cpu(), "dilated_attention: no kernel for device ", q.device());
  if (uses_dropout(options)) {
    return dropout_attention_backward(grad_out, q, k, v, out, lse, options.is_causal,
                                      options.scale, *options.dropout, options.where);
  }
  return at::_scaled_dot_product_flash_attention_for_cpu_backward(
      grad_out, q, k, v, out, lse, 0.0, options.is_causal, std::nullopt, options.scale);
}

}  // namespace dilated_attention
