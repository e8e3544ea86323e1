// The CUDA attention kernels: ATen's flash attention for half types and head dims it takes, its
// memory-efficient kernel otherwise (float32, other head dims); both return the log-sum-exp.
// Flash reads shared key/value heads in place (flash-attn's grouped-query layout); the
// memory-efficient kernel takes equal head counts, so its calls get the shared heads repeated.
// Ring merges run in our fused kernel (lse_merge_cuda.cu). What these kernels cannot take is
// rejected by cuda_check_supported during validation, before any work.
#include <ATen/ops/_scaled_dot_product_efficient_attention.h>
#include <ATen/ops/_scaled_dot_product_efficient_attention_backward.h>
#include <ATen/ops/_scaled_dot_product_flash_attention.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_backward.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/cuda/lse_merge_cuda.h"
#include "kernels/device_kernels.h"

namespace dilated_attention {
namespace {

bool is_half_type(at::ScalarType dtype) { return dtype == at::kHalf || dtype == at::kBFloat16; }

// ATen's flash attention takes half types with head dims that are multiples of 8, up to 256.
bool flash_fits(at::ScalarType dtype, int64_t head_dim) {
  return is_half_type(dtype) && head_dim % 8 == 0 && head_dim <= 256;
}

// The memory-efficient kernel reads head_dim in 16-byte vectors.
int64_t efficient_head_dim_multiple(at::ScalarType dtype) { return is_half_type(dtype) ? 8 : 4; }

void cuda_check_supported(const KernelRequest& request) {
  // ATen's flash kernel takes no mask; the memory-efficient kernel's additive bias would serve,
  // and waits until it can be checked on a GPU.
  TORCH_CHECK_VALUE(!request.key_padding_mask,
                    "key_padding_mask is not supported on CUDA yet; run on the CPU, or pack the "
                    "sequences without padding (dilated_attention_varlen)");
  TORCH_CHECK_VALUE(!request.dropout,
                    "dropout_p > 0 is not supported on CUDA yet; pass dropout_p=0.0 (eval) or "
                    "run on the CPU");
  TORCH_CHECK_VALUE(request.dtype != at::kDouble,
                    "query dtype float64 is not supported on CUDA (ATen's flash and "
                    "memory-efficient kernels take float32, bfloat16 and float16); use float32 or "
                    "run on the CPU");
  const int64_t multiple = efficient_head_dim_multiple(request.dtype);
  TORCH_CHECK_VALUE(flash_fits(request.dtype, request.head_dim) || request.head_dim % multiple == 0,
                    "head_dim (", request.head_dim, ") must be a multiple of ", multiple, " for ",
                    request.dtype, " on CUDA");
}

// The memory-efficient kernel keeps its log-sum-exp rows padded to a multiple of 32.
constexpr int64_t kEfficientLseAlignment = 32;

// Unused by the kernels when dropout_p = 0, but the backward signatures take them.
at::Tensor no_philox_state() { return at::empty({}, at::dtype(at::kLong)); }

// Flash and the memory-efficient kernel read rows in 16-byte vectors: a view whose base or
// strides are not 16-byte multiples (a storage offset of a few elements, a chunk of a fused
// projection with an odd width) is copied. Size-1 dims have no stride that matters.
at::Tensor aligned(const at::Tensor& x) {
  const int64_t bytes = static_cast<int64_t>(x.element_size());
  bool fits = x.stride(-1) == 1 && reinterpret_cast<std::uintptr_t>(x.data_ptr()) % 16 == 0;
  for (int64_t d = 0; fits && d + 1 < x.dim(); ++d) {
    fits = x.size(d) == 1 || (x.stride(d) * bytes) % 16 == 0;
  }
  // clone, not contiguous(): a contiguous view with a misaligned base would come back as is.
  return fits ? x : x.clone(at::MemoryFormat::Contiguous);
}

// Both kernels put the view batch on a grid dimension of at most 65535 blocks (B * N / s
// reaches it at B = 8, N = 131072, s = 16): larger batches run in chunks along dim 0, which are
// views.
constexpr int64_t kMaxGridBatch = 65535;

// Key/value heads repeated for kernels that take as many key/value heads as query heads, and
// their gradients summed back over the repeats.
at::Tensor with_query_heads(const at::Tensor& x, int64_t query_heads) {
  const int64_t repeats = query_heads / x.size(1);
  return repeats == 1 ? x : x.repeat_interleave(repeats, 1);
}

at::Tensor summed_to_heads(const at::Tensor& grad, int64_t key_value_heads) {
  if (grad.size(1) == key_value_heads) return grad;
  return grad.unflatten(1, {key_value_heads, grad.size(1) / key_value_heads}).sum(2);
}

std::tuple<at::Tensor, at::Tensor> forward_one_launch(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v,
                                                      const BlockOptions& options) {
  if (flash_fits(q.scalar_type(), q.size(-1))) {
    auto result =
        at::_scaled_dot_product_flash_attention(q, k, v, 0.0, options.is_causal,
                                                /*return_debug_mask=*/false, options.scale);
    return {std::get<0>(result), std::get<1>(result)};
  }
  auto result = at::_scaled_dot_product_efficient_attention(
      q, with_query_heads(k, q.size(1)), with_query_heads(v, q.size(1)), std::nullopt,
      /*compute_log_sumexp=*/true, 0.0, options.is_causal, options.scale);
  return {std::get<0>(result), std::get<1>(result).narrow(-1, 0, q.size(2))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_one_launch(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  if (flash_fits(q.scalar_type(), q.size(-1))) {
    return at::_scaled_dot_product_flash_attention_backward(
        grad_out, q, k, v, out, lse.contiguous(), at::Tensor(), at::Tensor(), q.size(2), k.size(2),
        0.0, options.is_causal, no_philox_state(), no_philox_state(), options.scale);
  }
  const int64_t rows = q.size(2);
  const int64_t padding =
      (kEfficientLseAlignment - rows % kEfficientLseAlignment) % kEfficientLseAlignment;
  const auto padded_lse = at::constant_pad_nd(lse, {0, padding}, 0.0).contiguous();
  // The efficient backward derives its row term from `out` assuming rows dense in its own
  // [B', L, h, D] order (row stride h * D); the sharded engine passes strided row views, so
  // `out` is laid out that way here (a view of [B', h, L, D] again).
  auto grads = at::_scaled_dot_product_efficient_attention_backward(
      grad_out, q, with_query_heads(k, q.size(1)), with_query_heads(v, q.size(1)), at::Tensor(),
      out.transpose(1, 2).contiguous().transpose(1, 2), padded_lse, no_philox_state(),
      no_philox_state(), 0.0, {true, true, true, false}, options.is_causal, options.scale);
  return {std::get<0>(grads), summed_to_heads(std::get<1>(grads), k.size(1)),
          summed_to_heads(std::get<2>(grads), v.size(1))};
}

std::tuple<at::Tensor, at::Tensor> cuda_forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                                const at::Tensor& v_in,
                                                const BlockOptions& options) {
  const auto q = aligned(q_in), k = aligned(k_in), v = aligned(v_in);
  const int64_t batch = q.size(0);
  if (batch <= kMaxGridBatch) return forward_one_launch(q, k, v, options);
  std::vector<at::Tensor> outs, lses;
  for (int64_t first = 0; first < batch; first += kMaxGridBatch) {
    const int64_t n = std::min(kMaxGridBatch, batch - first);
    auto [o, l] = forward_one_launch(q.narrow(0, first, n), k.narrow(0, first, n),
                                     v.narrow(0, first, n), options);
    outs.push_back(std::move(o));
    lses.push_back(std::move(l));
  }
  return {at::cat(outs), at::cat(lses)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_backward(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse,
    const BlockOptions& options) {
  const auto grad_out = aligned(grad_out_in), q = aligned(q_in), k = aligned(k_in),
             v = aligned(v_in), out = aligned(out_in);
  const int64_t batch = q.size(0);
  if (batch <= kMaxGridBatch) return backward_one_launch(grad_out, q, k, v, out, lse, options);
  std::vector<at::Tensor> dq, dk, dv;
  for (int64_t first = 0; first < batch; first += kMaxGridBatch) {
    const int64_t n = std::min(kMaxGridBatch, batch - first);
    auto grads = backward_one_launch(grad_out.narrow(0, first, n), q.narrow(0, first, n),
                                     k.narrow(0, first, n), v.narrow(0, first, n),
                                     out.narrow(0, first, n), lse.narrow(0, first, n), options);
    dq.push_back(std::move(std::get<0>(grads)));
    dk.push_back(std::move(std::get<1>(grads)));
    dv.push_back(std::move(std::get<2>(grads)));
  }
  return {at::cat(dq), at::cat(dk), at::cat(dv)};
}

const DeviceKernelsRegistration cuda_registration(c10::DeviceType::CUDA,
                                                  {&cuda_forward, &cuda_backward, &lse_merge_cuda_,
                                                   &cuda_check_supported});

}  // namespace
}  // namespace dilated_attention
