// One batched attention call over [B', h, Lq, D] query and [B', h, Lk, D] key/value views, run
// by the kernels of the tensors' device (kernels/device_kernels.h), returning what every caller
// needs: the output and the per-row log-sum-exp (for backward, and for merging the blocks of a
// ring).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "kernels/block_options.h"

namespace dilated_attention {

// Returns (output [B', h, Lq, D] in the input dtype, log-sum-exp [B', h, Lq] in the
// accumulation dtype).
std::tuple<at::Tensor, at::Tensor> block_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options);

// Gradients of <grad_out, out> with respect to q, k, v, where `out` and `lse` are the output and
// log-sum-exp of the attention over ALL key blocks of these queries (so the weights this block
// recomputes are the globally normalised ones).
std::tuple<at::Tensor, at::Tensor, at::Tensor> block_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options);

}  // namespace dilated_attention
