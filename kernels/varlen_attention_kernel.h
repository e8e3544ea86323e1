// Dilated attention over packed variable-length sequences (flash-attn's layout): rows
// [starts[i], starts[i + 1]) of [T, H, D] tensors are sequence i, attended on its own with
// positions counted from its first row. In every head group the sequence is cut into segments
// of s_g rows; the last one ends at the sequence's end (truncated), so no padding row exists.
// Each group's whole segments run as one batched call over strided views, its truncated tail as
// another; both land in place with the 1/G scale, as in dilated_attention_kernel.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels/dilated_attention_kernel.h"

namespace dilated_attention {

// q: [T, H, D]; k, v: [T, H / heads_per_key_value, D]; starts: the S + 1 offsets (validated:
// 0, non-decreasing, T). Returns (output [T, H, D], log-sum-exp [T, H] in the accumulation dtype;
// 0 at positions a head does not attend).
std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::vector<int64_t>& starts, const AttentionConfig& config);

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::vector<int64_t>& starts,
    const AttentionConfig& config);

}  // namespace dilated_attention
