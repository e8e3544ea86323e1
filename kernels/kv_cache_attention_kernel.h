// Dilated attention of the last Nq positions of causal sequences whose keys and values (cache and
// new tokens together) are the Nk rows of k, v: the decoding step of dilated attention.
//
// Batch row b's sequence is key rows [starts[b], Nk), positions counted from starts[b]; in every
// head group it is cut into segments of s_g rows, the last one ending at Nk (truncated, as in
// dilated_attention_varlen). A query row reads only the dilated keys of its own segment up to
// itself: per head at most ceil(s_g / r_g) rows of each group covering it, never the whole cache,
// so the cost of a step does not grow with Nk. Inputs of any strides are read through views
// (transformers' [B, H_kv, Nk, D] cache transposed is not copied).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/dilated_attention_kernel.h"

namespace dilated_attention {

// The config of a sequence of `length` positions: the same for every length under kHeadSplit
// (each head in one group, the result times output_scale), the length's LongNet branches under
// kLogSumExp (a branch's segment is min(w_i, length), kernels/index/dilation_plan.h).
using ConfigForLength = std::function<AttentionConfig(int64_t length)>;

// q: [B, Nq, H, D]; k, v: [B, Nk, H_kv, D] with Nq <= Nk; key_padding_mask: [B, Nk] bool (True =
// padded key) or undefined; starts: B values in [0, Nk]. Query row i of batch b is position
// Nk - Nq + i; rows before starts[b], and (position, head) pairs no group covers, give 0. A row
// whose visible keys are all padding gives 0. Returns the output [B, Nq, H, D].
at::Tensor kv_cache_attention_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& key_padding_mask,
                                     const std::vector<int64_t>& starts,
                                     const ConfigForLength& config_for_length);

}  // namespace dilated_attention
