// The CPU's attention kernels: ATen's CPU flash attention, and our dropout kernel for
// dropout_p > 0 (ATen's CPU flash kernel has no dropout). Both take every dtype the ops accept
// and any head dim, so nothing is rejected here.
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>

#include "kernels/cpu/dropout_attention_cpu.h"
#include "kernels/device_kernels.h"
#include "kernels/lse_merge.h"

namespace dilated_attention {
namespace {

std::tuple<at::Tensor, at::Tensor> cpu_forward(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const BlockOptions& options) {
  if (options.uses_dropout()) {
    return dropout_attention_forward(q, k, v, options.is_causal, options.scale, *options.dropout,
                                     options.where);
  }
  return at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, options.is_causal,
                                                         std::nullopt, options.scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  if (options.uses_dropout()) {
    return dropout_attention_backward(grad_out, q, k, v, out, lse, options.is_causal, options.scale,
                                      *options.dropout, options.where);
  }
  return at::_scaled_dot_product_flash_attention_for_cpu_backward(
      grad_out, q, k, v, out, lse, 0.0, options.is_causal, std::nullopt, options.scale);
}

void cpu_supports_everything(const KernelRequest&) {}

const DeviceKernelsRegistration cpu_registration(c10::DeviceType::CPU,
                                                 {&cpu_forward, &cpu_backward, &lse_merge_aten_,
                                                  &cpu_supports_everything,
                                                  /*checks_non_finite_on_host=*/true});

}  // namespace
}  // namespace dilated_attention
