// Dilated attention over a whole sequence: every head group runs as one batched attention call
// over zero-copy strided views (kernels/block_attention.h picks the kernel), and its result lands
// in its strided place in the output with the 1/G scale.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels/index/dilation_plan.h"
#include "kernels/index/dropout_mask.h"

namespace dilated_attention {

// How the groups' results make the output.
enum class Combination {
  kHeadSplit,  // each (position, head) in at most one group; the result times output_scale
  kLogSumExp,  // LongNet: every branch (HeadGroup::index) covering it, weighted by its
               // log-sum-exp (kernels/longnet_attention_kernel.h)
};

struct AttentionConfig {
  // Head ranges index the query heads of the tensors passed in. With shared key/value heads the
  // groups are split (split_at_shared_key_values), and each reads the key/value heads
  // key_value_group(group, heads_per_key_value).
  std::vector<HeadGroup> groups;
  int64_t heads_per_key_value = 1;  // H / H_kv
  double scale = 1.0;               // already resolved (1/sqrt(D) unless given)
  double output_scale = 1.0;        // 1/G, with G the number of groups of the whole op
  bool is_causal = false;
  double dropout_p = 0.0;
  uint64_t dropout_seed = 0;
  int64_t global_head_offset = 0;  // head 0 of the tensors is this head of the op (dropout mask)
  Combination combination = Combination::kHeadSplit;
};

// The dropout mask of each group index: the call's seed for head-split groups; under kLogSumExp
// each branch drops its own weights, from branch_dropout_seed.
std::vector<DropoutMask> dropout_masks_by_index(const AttentionConfig& config);

// q: [B, N, H, D]; k, v: [B, N, H / heads_per_key_value, D]; key_padding_mask [B, N] bool (True =
// padded key, excluded from every softmax) or undefined. Returns (output [B, N, H, D],
// log-sum-exp [B, N, H] in the accumulation dtype; entries of positions a head does not attend are
// 0 and never read).
std::tuple<at::Tensor, at::Tensor> dilated_attention_forward_kernel(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_padding_mask, const AttentionConfig& config);

// Gradients with respect to q, k, v given the forward's output and log-sum-exp (dK and dV sum
// over the query heads that share a key/value head).
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_backward_kernel(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_padding_mask, const at::Tensor& out, const at::Tensor& lse,
    const AttentionConfig& config);

// Output-shaped buffer for results: zero-filled only when some positions are attended by no
// segment (dilation rate > 1), uninitialised otherwise.
at::Tensor new_attention_result(const at::Tensor& like, const std::vector<HeadGroup>& groups);

}  // namespace dilated_attention
