// The CPU's attention kernels: our fused forward and backward where they were measured faster
// (kernels/cpu/flash_attention_cpu.h); otherwise ATen's CPU flash attention, and our dropout
// kernel for dropout_p > 0 (ATen's CPU flash kernel has no dropout). Together they take every dtype
// the ops accept and any head dim, so nothing is rejected here.
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>
#include <ATen/ops/zeros.h>

#include <limits>
#include <optional>

#include "kernels/cpu/dropout_attention_cpu.h"
#include "kernels/cpu/flash_attention_cpu.h"
#include "kernels/device_kernels.h"
#include "kernels/lse_merge.h"

namespace dilated_attention {
namespace {

// ATen's CPU flash kernel takes an additive mask in the query's dtype, broadcast over heads and
// query rows: [B', 1, 1, Lk] with -inf at padded keys.
std::optional<at::Tensor> padding_bias(const at::Tensor& q, const BlockOptions& options) {
  if (!options.key_padding.defined()) return std::nullopt;
  const auto& padding = options.key_padding;
  return at::zeros({padding.size(0), 1, 1, padding.size(1)}, q.options())
      .masked_fill_(padding.view({padding.size(0), 1, 1, padding.size(1)}),
                    -std::numeric_limits<double>::infinity());
}

std::tuple<at::Tensor, at::Tensor> cpu_forward(const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const BlockOptions& options) {
  if (fused_forward_takes(q, k, options)) return fused_attention_forward(q, k, v, options);
  if (options.uses_dropout()) {
    return dropout_attention_forward(q, k, v, options.is_causal, options.scale, *options.dropout,
                                     options.where, options.key_padding);
  }
  return at::_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, options.is_causal,
                                                         padding_bias(q, options), options.scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  if (fused_backward_takes(q, k, options)) {
    return fused_attention_backward(grad_out, q, k, v, out, lse, options);
  }
  if (options.uses_dropout()) {
    return dropout_attention_backward(grad_out, q, k, v, out, lse, options.is_causal, options.scale,
                                      *options.dropout, options.where, options.key_padding);
  }
  return at::_scaled_dot_product_flash_attention_for_cpu_backward(
      grad_out, q, k, v, out, lse, 0.0, options.is_causal, padding_bias(q, options), options.scale);
}

void cpu_supports_everything(const KernelRequest&) {}

const DeviceKernelsRegistration cpu_registration(
    c10::DeviceType::CPU,
    {&cpu_forward, &cpu_backward, &lse_merge_aten_, &cpu_supports_everything,
     /*checks_non_finite_on_host=*/true, &fused_forward_groups_into, &fused_backward_groups_into});

}  // namespace
}  // namespace dilated_attention
