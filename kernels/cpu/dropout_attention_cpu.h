// Attention with dropout on the weights for one head group, on the CPU. ATen's CPU flash kernel
// has no dropout, so this kernel covers dropout_p > 0. It works on query blocks of a segment
// (never the whole score matrix), keeps a log-sum-exp per query for backward to recompute the
// weights from, and draws its mask from DropoutMask in global coordinates.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "kernels/block_options.h"

namespace dilated_attention {

// q: group views [B * N/s, h_g, L, D]; k, v: [B * N/s, h_kv, L, D], query head i reading key/value
// head i / (h_g / h_kv); key_padding [B * N/s, L] bool (True = padded key) or undefined. Returns
// (output [B * N/s, h_g, L, D] in the input dtype, log-sum-exp [B * N/s, h_g, L] in the
// accumulation dtype); the output is not divided by G.
std::tuple<at::Tensor, at::Tensor> dropout_attention_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool is_causal, double scale,
    const DropoutMask& mask, const ViewCoordinates& where, const at::Tensor& key_padding);

// Gradients of <grad_out, output> for the forward above; `out` is that forward's output. dK and dV
// sum over the query heads that share a key/value head.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dropout_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool is_causal, double scale,
    const DropoutMask& mask, const ViewCoordinates& where, const at::Tensor& key_padding);

}  // namespace dilated_attention
