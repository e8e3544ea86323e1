#include "kernels/dilated_attention_kernel.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <initializer_list>
#include <utility>
#include <vector>

#include "kernels/block_attention.h"
#include "kernels/causal_pieces.h"
#include "kernels/device_kernels.h"
#include "kernels/group_attention.h"
#include "kernels/group_views.h"
#include "kernels/index/dropout_mask.h"
#include "kernels/key_padding.h"

namespace dilated_attention {
namespace {

BlockOptions group_block_options(const AttentionConfig& config, const HeadGroup& group,
                                 int64_t seq_len, const DropoutMask& mask) {
  BlockOptions options;
  options.is_causal = config.is_causal;
  options.scale = config.scale;
  options.dropout = &mask;
  options.where.views_per_batch = group.num_segments(seq_len);
  options.where.view_stride = group.segment_length;
  options.where.first_head = config.global_head_offset + group.first_head;
  options.where.query_first = options.where.key_first = group.offset;
  options.where.step = group.dilation_rate;
  return options;
}

// One check of the whole tensors instead of one per group's block, where the device checks on
// the host; elsewhere the blocks are told nothing (true: may hold them).
bool inputs_may_hold_non_finite(const AttentionConfig& config, const at::Tensor& q,
                                std::initializer_list<const at::Tensor*> inputs) {
  if (!kernels_for(q.device().type()).checks_non_finite_on_host) return true;
  const DropoutMask no_mask(0, 0.0);
  const bool any_block_needs =
      std::any_of(config.groups.begin(), config.groups.end(), [&](const HeadGroup& group) {
        return takes_non_finite_handling(q, group_block_options(config, group, q.size(1), no_mask),
                                         group_view(q, group).size(2));
      });
  return any_block_needs && may_hold_non_finite(inputs);
}

at::Tensor contiguous_or_undefined(const at::Tensor& x) { return x.defined() ? x.contiguous() : x; }

}  // namespace

std::vector<DropoutMask> dropout_masks_by_index(const AttentionConfig& config) {
  int64_t indices = 0;
  for (const auto& group : config.groups) indices = std::max(indices, group.index + 1);
  std::vector<DropoutMask> masks;
  masks.reserve(static_cast<size_t>(indices));
  for (int64_t i = 0; i < indices; ++i) {
    const bool per_branch = config.combination == Combination::kLogSumExp;
    masks.emplace_back(
        per_branch ? branch_dropout_seed(config.dropout_seed, i) : config.dropout_seed,
        config.dropout_p);
  }
  return masks;
}

at::Tensor new_attention_result(const at::Tensor& like, const std::vector<HeadGroup>& groups) {
  return leaves_positions_uncovered(groups) ? at::zeros(like.sizes(), like.options())
                                            : at::empty(like.sizes(), like.options());
}

std::tuple<at::Tensor, at::Tensor> dilated_attention_forward_kernel(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& key_padding_mask, const AttentionConfig& config) {
  const auto padding = contiguous_or_undefined(key_padding_mask);
  const auto q = with_group_viewable_layout(q_in);
  const auto k = with_group_viewable_layout(without_non_finite_padding(k_in, padding));
  const auto v = with_group_viewable_layout(without_non_finite_padding(v_in, padding));
  auto out = new_attention_result(q, config.groups);
  auto lse = at::zeros({q.size(0), q.size(1), q.size(2)},
                       q.options().dtype(at::toOpMathType(q.scalar_type())));
  if (q.numel() == 0) return {out, lse};

  const DropoutMask mask(config.dropout_seed, config.dropout_p);
  const bool may_hold = inputs_may_hold_non_finite(config, q, {&q, &k, &v});
  std::vector<GroupForwardInto> calls;
  for (const auto& group : config.groups) {
    auto options = group_block_options(config, group, q.size(1), mask);
    options.may_hold_non_finite = may_hold;
    options.key_padding = group_positions_view(padding, group);
    const auto kv_group = key_value_group(group, config.heads_per_key_value);
    calls.push_back({group_view(q, group), group_view(k, kv_group), group_view(v, kv_group),
                     std::move(options), group_view(out, group), group_rows_view(lse, group)});
  }
  attend_groups_into(calls, config.output_scale);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_backward_kernel(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& key_padding_mask, const at::Tensor& out_in,
    const at::Tensor& lse, const AttentionConfig& config) {
  const auto padding = contiguous_or_undefined(key_padding_mask);
  const auto grad_out = with_group_viewable_layout(grad_out_in);
  const auto q = with_group_viewable_layout(q_in);
  const auto k = with_group_viewable_layout(without_non_finite_padding(k_in, padding));
  const auto v = with_group_viewable_layout(without_non_finite_padding(v_in, padding));
  const auto out = with_group_viewable_layout(out_in);
  auto grad_q = new_attention_result(q, config.groups);
  // A shared key/value head collects the gradients of every group that reads it.
  const bool shares_key_values = config.heads_per_key_value > 1;
  auto new_key_value_grad = [&](const at::Tensor& x) {
    return shares_key_values ? at::zeros(x.sizes(), x.options())
                             : new_attention_result(x, config.groups);
  };
  auto grad_k = new_key_value_grad(k);
  auto grad_v = new_key_value_grad(v);
  if (q.numel() == 0) return {grad_q, grad_k, grad_v};

  // Every view is zero-copy; out is the scaled result, as group_attention.h takes it.
  const DropoutMask mask(config.dropout_seed, config.dropout_p);
  const auto contiguous_lse = lse.contiguous();
  const bool may_hold = inputs_may_hold_non_finite(config, q, {&grad_out, &q, &k, &v, &out});
  std::vector<GroupBackwardInto> calls;
  for (const auto& group : config.groups) {
    auto options = group_block_options(config, group, q.size(1), mask);
    options.may_hold_non_finite = may_hold;
    options.key_padding = group_positions_view(padding, group);
    const auto kv_group = key_value_group(group, config.heads_per_key_value);
    calls.push_back({group_view(grad_out, group), group_view(q, group), group_view(k, kv_group),
                     group_view(v, kv_group), group_view(out, group),
                     group_rows_view(contiguous_lse, group), std::move(options),
                     group_view(grad_q, group), group_view(grad_k, kv_group),
                     group_view(grad_v, kv_group)});
  }
  attend_groups_backward_into(calls, config.output_scale, shares_key_values);
  zero_padded_rows_(grad_k, padding);
  zero_padded_rows_(grad_v, padding);
  return {grad_q, grad_k, grad_v};
}

}  // namespace dilated_attention
