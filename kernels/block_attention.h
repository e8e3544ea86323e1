// One batched attention call over [B', h, Lq, D] query and [B', h, Lk, D] key/value views,
// returning the unnormalised pieces every caller needs: the output and the per-row
// log-sum-exp (for backward, and for merging blocks of a ring). It picks the kernel: ATen's
// flash attention where it serves, our dropout kernel when dropout_p > 0.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "kernels/cpu/dropout_attention_cpu.h"
#include "kernels/dropout_mask.h"

namespace dilated_attention {

struct BlockOptions {
  // Causal blocks are square and diagonal: query row i sees key rows 0..i.
  bool is_causal = false;
  double scale = 1.0;
  const DropoutMask* dropout = nullptr;  // null or p == 0: no dropout
  ViewCoordinates where;                 // global coordinates of the rows, for the mask
};

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
