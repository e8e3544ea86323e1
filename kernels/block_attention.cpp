#include "kernels/block_attention.h"

#include "kernels/device_kernels.h"

namespace dilated_attention {

std::tuple<at::Tensor, at::Tensor> block_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options) {
  return kernels_for(q.device().type()).forward(q, k, v, options);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  return kernels_for(q.device().type()).backward(grad_out, q, k, v, out, lse, options);
}

}  // namespace dilated_attention
