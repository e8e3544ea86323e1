#include <ATen/Dispatch.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>

#include "kernels/cuda/lse_merge_cuda.h"

namespace dilated_attention {
namespace {

constexpr int kThreads = 256;

// One thread per (row, feature). Every thread of a row computes the same merged lse from the
// two inputs; the thread of feature 0 stores it in a separate buffer, so no thread reads a value
// another thread of the row is writing.
template <typename block_t>
__global__ void merge_kernel(float* __restrict__ acc_out, const float* __restrict__ acc_lse,
                             const block_t* __restrict__ block_out,
                             const float* __restrict__ block_lse, float* __restrict__ merged_lse,
                             int64_t rows, int64_t features) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * features) return;
  const int64_t row = index / features;
  const float a = acc_lse[row], b = block_lse[row];
  const float high = fmaxf(a, b);
  const bool a_masked = isinf(a) && a < 0, b_masked = isinf(b) && b < 0;
  float merged, value;
  if (a_masked && b_masked) {  // both fully masked: contributes nothing, never NaN
    merged = a;
    value = 0.f;
  } else {
    merged = high + logf(expf(a - high) + expf(b - high));
    const float from_acc = a_masked ? 0.f : acc_out[index] * expf(a - merged);
    const float from_block =
        b_masked ? 0.f : static_cast<float>(block_out[index]) * expf(b - merged);
    value = from_acc + from_block;
  }
  acc_out[index] = value;
  if (index % features == 0) merged_lse[row] = merged;
}

}  // namespace

at::Tensor lse_merge_cuda_(at::Tensor& acc_out, const at::Tensor& acc_lse,
                           const at::Tensor& block_out, const at::Tensor& block_lse) {
  TORCH_CHECK(acc_out.is_cuda() && acc_out.scalar_type() == at::kFloat && acc_out.is_contiguous());
  TORCH_CHECK(acc_lse.scalar_type() == at::kFloat);
  const c10::cuda::CUDAGuard guard(acc_out.device());
  const auto lse = acc_lse.contiguous();
  const auto block = block_out.contiguous();
  const auto block_lse_f = block_lse.to(at::kFloat).contiguous();
  auto merged_lse = at::empty_like(lse);
  const int64_t features = acc_out.size(-1);
  const int64_t rows = acc_out.numel() / std::max<int64_t>(features, 1);
  const int64_t total = rows * features;
  if (total == 0) return merged_lse;
  const auto blocks = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, block.scalar_type(), "lse_merge_cuda", [&] {
        merge_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(
            acc_out.data_ptr<float>(), lse.data_ptr<float>(), block.data_ptr<scalar_t>(),
            block_lse_f.data_ptr<float>(), merged_lse.data_ptr<float>(), rows, features);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return merged_lse;
}

}  // namespace dilated_attention
