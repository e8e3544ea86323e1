// LongNet's dilated attention as the paper computes it (arXiv 2307.02486 section 2.2, the math of
// microsoft/torchscale): every head takes part in every branch (w_i, r_i) (make_longnet_groups
// gives each branch's head blocks and offsets), and the branches are combined by their softmax
// denominators,
//   O = sum_i exp(L_i - L) * O_i,  L = log sum_i exp(L_i)
// over the branches covering a (position, head); 0 where none does. That is one softmax over the
// concatenated key lists of the covering branches, so backward is attention's backward on every
// branch with the merged O and L (as the blocks of a ring), exact through the weights.
//
// Each branch's last segment ends at N (truncated, no padding row). Its whole segments run as one
// batched call over strided views (one per batch row when a tail follows them), its tail as
// another; results merge into one accumulator of the output's size in the accumulation dtype,
// so the peak is that accumulator, the log-sum-exp and one call's result.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "kernels/dilated_attention_kernel.h"

namespace dilated_attention {

// q: [B, N, H, D]; k, v: [B, N, H / heads_per_key_value, D]; key_padding_mask [B, N] bool or
// undefined. config: make_longnet_config's (groups from make_longnet_groups for this N, split at
// shared key/value heads; Combination::kLogSumExp, so each branch drops its own weights). Returns
// (output [B, N, H, D], merged log-sum-exp [B, N, H] in the accumulation dtype, -inf where no
// branch covers a position of a head or it sees no key).
std::tuple<at::Tensor, at::Tensor> longnet_attention_forward_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_padding_mask, const AttentionConfig& config);

std::tuple<at::Tensor, at::Tensor, at::Tensor> longnet_attention_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_padding_mask, const at::Tensor& out, const at::Tensor& lse,
    const AttentionConfig& config);

}  // namespace dilated_attention
