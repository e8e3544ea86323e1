#include "kernels/block_attention.h"

#include <ATen/ops/_scaled_dot_product_efficient_attention.h>
#include <ATen/ops/_scaled_dot_product_efficient_attention_backward.h>
#include <ATen/ops/_scaled_dot_product_flash_attention.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_backward.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

namespace dilated_attention {
namespace {

bool uses_dropout(const BlockOptions& options) {
  return options.dropout != nullptr && options.dropout->dropout_p() > 0.0;
}

// On CUDA: ATen's flash attention for half types and head dims it supports; the
// memory-efficient kernel otherwise (float32, odd head dims). Both return the log-sum-exp.
bool flash_fits(const at::Tensor& q) {
  const auto dtype = q.scalar_type();
  const int64_t head_dim = q.size(-1);
  return (dtype == at::kHalf || dtype == at::kBFloat16) && head_dim % 8 == 0 && head_dim <= 256;
}

// The memory-efficient kernel keeps its log-sum-exp rows padded to a multiple of 32.
constexpr int64_t kEfficientLseAlignment = 32;

void check_cuda_block(const at::Tensor& q, const BlockOptions& options) {
  TORCH_CHECK(q.is_cuda(), "dilated_attention: no attention kernel for device ", q.device());
  TORCH_CHECK_VALUE(!uses_dropout(options),
                    "dropout_p > 0 is not supported on CUDA yet; pass dropout_p=0.0 (eval) or "
                    "run on the CPU");
}

// Unused by the kernels when dropout_p = 0, but the backward signatures take them.
at::Tensor no_philox_state() { return at::empty({}, at::dtype(at::kLong)); }

std::tuple<at::Tensor, at::Tensor> cuda_forward(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const BlockOptions& options) {
  check_cuda_block(q, options);
  if (flash_fits(q)) {
    auto result =
        at::_scaled_dot_product_flash_attention(q, k, v, 0.0, options.is_causal,
                                                /*return_debug_mask=*/false, options.scale);
    return {std::get<0>(result), std::get<1>(result)};
  }
  auto result = at::_scaled_dot_product_efficient_attention(
      q, k, v, std::nullopt, /*compute_log_sumexp=*/true, 0.0, options.is_causal, options.scale);
  return {std::get<0>(result), std::get<1>(result).narrow(-1, 0, q.size(2))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  check_cuda_block(q, options);
  if (flash_fits(q)) {
    return at::_scaled_dot_product_flash_attention_backward(
        grad_out, q, k, v, out, lse.contiguous(), at::Tensor(), at::Tensor(), q.size(2), k.size(2),
        0.0, options.is_causal, no_philox_state(), no_philox_state(), options.scale);
  }
  const int64_t rows = q.size(2);
  const int64_t padding =
      (kEfficientLseAlignment - rows % kEfficientLseAlignment) % kEfficientLseAlignment;
  const auto padded_lse = at::constant_pad_nd(lse, {0, padding}, 0.0).contiguous();
  auto grads = at::_scaled_dot_product_efficient_attention_backward(
      grad_out, q, k, v, at::Tensor(), out, padded_lse, no_philox_state(), no_philox_state(), 0.0,
      {true, true, true, false}, options.is_causal, options.scale);
  return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> block_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options) {
  if (!q.device().is_cpu()) return cuda_forward(q, k, v, options);
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
  if (!q.device().is_cpu()) return cuda_backward(grad_out, q, k, v, out, lse, options);
  if (uses_dropout(options)) {
    return dropout_attention_backward(grad_out, q, k, v, out, lse, options.is_causal, options.scale,
                                      *options.dropout, options.where);
  }
  return at::_scaled_dot_product_flash_attention_for_cpu_backward(
      grad_out, q, k, v, out, lse, 0.0, options.is_causal, std::nullopt, options.scale);
}

}  // namespace dilated_attention
