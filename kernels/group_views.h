// Zero-copy strided views of one head group of [B, N, H, D] tensors, shaped the way ATen's
// attention kernels take their inputs: [B * N/s, h_g, L, D], where L = subset length and a row
// of the view steps r positions through the sequence. Batch and segment merge into one
// dimension because, for a dense [B, N, ...] layout, batch b segment t starts at
// (b * N/s + t) * s positions.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/index/dilation_plan.h"

namespace dilated_attention {

// `x` itself when its layout allows group views (head_dim dense, batch stride = N * sequence
// stride, no two indices on one element), otherwise a contiguous copy with row-major strides.
// Call once per input, not per group.
at::Tensor with_group_viewable_layout(const at::Tensor& x);

// [B, N, H, D] -> [B * N/s, h_g, L, D] view of `group`'s heads and dilated positions.
at::Tensor group_view(const at::Tensor& x, const HeadGroup& group);

// [B, N, H] per-position statistics (the log-sum-exp) -> [B * N/s, h_g, L] view.
at::Tensor group_rows_view(const at::Tensor& rows, const HeadGroup& group);

// [B, N] per-position flags (the key padding mask, contiguous) -> [B * N/s, L] view of the
// group's dilated positions; undefined stays undefined.
at::Tensor group_positions_view(const at::Tensor& flags, const HeadGroup& group);

}  // namespace dilated_attention
