// Fused log-sum-exp merge on CUDA: one pass over the accumulator instead of the half-dozen
// elementwise kernels of the ATen formulation in kernels/lse_merge.cpp (which stays the
// reference, and the CPU path).
#pragma once

#include <ATen/core/Tensor.h>

namespace dilated_attention {

// acc_out [R, D] and acc_lse [R] (float, contiguous) absorb block_out [R, D] (any floating
// dtype) and block_lse [R]: acc_out is updated in place; the merged log-sum-exp is returned.
at::Tensor lse_merge_cuda_(at::Tensor& acc_out, const at::Tensor& acc_lse,
                           const at::Tensor& block_out, const at::Tensor& block_lse);

}  // namespace dilated_attention
