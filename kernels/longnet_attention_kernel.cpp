#include "kernels/longnet_attention_kernel.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/block_attention.h"
#include "kernels/causal_pieces.h"
#include "kernels/device_kernels.h"
#include "kernels/group_views.h"
#include "kernels/index/dropout_mask.h"
#include "kernels/key_padding.h"
#include "kernels/lse_merge.h"

namespace dilated_attention {
namespace {

constexpr int64_t kAllBatches = -1;

// One batched call's worth of one group: its whole segments or its truncated tail (a group whose
// segment length is the tail's, one segment starting at `first_row`), over every batch row or
// one of them.
struct BranchPart {
  HeadGroup group;
  int64_t first_row = 0;
  int64_t rows = 0;  // a multiple of group.segment_length
  int64_t batch = kAllBatches;
};

std::vector<BranchPart> parts_of(const HeadGroup& group, int64_t batch_size, int64_t length) {
  const int64_t whole = length / group.segment_length * group.segment_length;
  const int64_t tail = length - whole;
  if (tail == 0) return {{group, 0, length, kAllBatches}};
  std::vector<BranchPart> parts;
  // Batch rows and segments merge into one view dimension only when the segments fill the rows:
  // with a tail, the whole segments of each batch row are one call.
  if (whole > 0) {
    for (int64_t b = 0; b < batch_size; ++b) parts.push_back({group, 0, whole, b});
  }
  HeadGroup tail_group = group;
  tail_group.segment_length = tail;
  // The rate capped at the segment length (same positions), as make_head_groups does; an offset
  // past the tail leaves it nothing.
  tail_group.dilation_rate = std::min(group.dilation_rate, tail);
  if (tail_group.subset_length() > 0) parts.push_back({tail_group, whole, tail, kAllBatches});
  return parts;
}

// The rows of `part` of a [B, N, ...] tensor (undefined stays undefined).
at::Tensor rows_of(const at::Tensor& x, const BranchPart& part) {
  if (!x.defined()) return x;
  const auto rows = x.narrow(1, part.first_row, part.rows);
  return part.batch == kAllBatches ? rows : rows.narrow(0, part.batch, 1);
}

BlockOptions part_options(const AttentionConfig& config, const BranchPart& part,
                          const std::vector<DropoutMask>& masks, const at::Tensor& padding,
                          bool may_hold) {
  const auto& group = part.group;
  BlockOptions options;
  options.is_causal = config.is_causal;
  options.scale = config.scale;
  options.dropout = &masks[static_cast<size_t>(group.index)];
  options.may_hold_non_finite = may_hold;
  options.key_padding = group_positions_view(rows_of(padding, part), group);
  options.where.first_batch = part.batch == kAllBatches ? 0 : part.batch;
  options.where.views_per_batch = part.rows / group.segment_length;
  options.where.view_stride = group.segment_length;
  options.where.first_head = config.global_head_offset + group.first_head;
  options.where.query_first = options.where.key_first = part.first_row + group.offset;
  options.where.step = group.dilation_rate;
  return options;
}

template <typename Body>
void for_each_part(const AttentionConfig& config, int64_t batch_size, int64_t length,
                   const Body& body) {
  for (const auto& group : config.groups) {
    for (const auto& part : parts_of(group, batch_size, length)) body(part);
  }
}

at::Tensor contiguous_or_undefined(const at::Tensor& x) { return x.defined() ? x.contiguous() : x; }

at::ScalarType accumulation_dtype(const at::Tensor& x) { return at::toOpMathType(x.scalar_type()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> longnet_attention_forward_kernel(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& key_padding_mask, const AttentionConfig& config) {
  const auto padding = contiguous_or_undefined(key_padding_mask);
  const auto q = with_group_viewable_layout(q_in);
  const auto k = with_group_viewable_layout(without_non_finite_padding(k_in, padding));
  const auto v = with_group_viewable_layout(without_non_finite_padding(v_in, padding));
  const auto acc = q.options().dtype(accumulation_dtype(q));
  const int64_t batch = q.size(0), length = q.size(1);
  auto out = at::zeros(q.sizes(), acc);
  auto lse = at::full({batch, length, q.size(2)}, -std::numeric_limits<double>::infinity(), acc);
  if (q.numel() == 0) return {out.to(q.scalar_type()), lse};

  // Rows that see some key in some branch, where merged rows that saw nothing above -inf become
  // NaN (a softmax over nothing) while rows without keys and uncovered ones stay 0.
  const bool marks_unseen = kernels_for(q.device().type()).checks_non_finite_on_host;
  auto seen = marks_unseen ? at::zeros(lse.sizes(), lse.options().dtype(at::kBool)) : at::Tensor();
  const auto masks = dropout_masks_by_index(config);
  const bool may_hold = may_hold_non_finite({&q, &k, &v});
  const int64_t first_branch = config.groups.empty() ? 0 : config.groups.front().index;
  for_each_part(config, batch, length, [&](const BranchPart& part) {
    const auto& group = part.group;
    const auto kv_group = key_value_group(group, config.heads_per_key_value);
    const auto options = part_options(config, part, masks, padding, may_hold);
    const auto q_view = group_view(rows_of(q, part), group);
    auto [o, l] = block_attention_forward(q_view, group_view(rows_of(k, part), kv_group),
                                          group_view(rows_of(v, part), kv_group), options,
                                          KeyCoverage::kPieceOfRow);
    merge_into_places(group_view(rows_of(out, part), group),
                      group_rows_view(rows_of(lse, part), group), o, l,
                      group.index == first_branch);
    if (marks_unseen) {
      auto seen_rows = group_rows_view(rows_of(seen, part), group);
      const auto none = rows_without_keys(options, q_view.size(2));
      if (none.defined()) {
        seen_rows.logical_or_(none.logical_not().unsqueeze(1));
      } else {
        seen_rows.fill_(true);
      }
    }
  });
  if (marks_unseen) std::tie(out, lse) = with_unseen_rows_as_nan(out, lse, seen.logical_not());
  return {out.to(q.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> longnet_attention_backward_kernel(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& key_padding_mask, const at::Tensor& out_in,
    const at::Tensor& lse_in, const AttentionConfig& config) {
  const auto padding = contiguous_or_undefined(key_padding_mask);
  const auto grad_out = with_group_viewable_layout(grad_out_in);
  const auto q = with_group_viewable_layout(q_in);
  const auto k = with_group_viewable_layout(without_non_finite_padding(k_in, padding));
  const auto v = with_group_viewable_layout(without_non_finite_padding(v_in, padding));
  const auto out = with_group_viewable_layout(out_in);
  const auto lse = lse_in.contiguous();
  // Every branch covering a query row adds to its gradient, and every query head reading a key
  // adds to the key's: accumulated in the accumulation dtype.
  const auto acc = q.options().dtype(accumulation_dtype(q));
  auto grad_q = at::zeros(q.sizes(), acc);
  auto grad_k = at::zeros(k.sizes(), acc);
  auto grad_v = at::zeros(v.sizes(), acc);
  if (q.numel() > 0) {
    const auto masks = dropout_masks_by_index(config);
    const bool may_hold = may_hold_non_finite({&grad_out, &q, &k, &v, &out});
    for_each_part(config, q.size(0), q.size(1), [&](const BranchPart& part) {
      const auto& group = part.group;
      const auto kv_group = key_value_group(group, config.heads_per_key_value);
      auto view = [&](const at::Tensor& x, const HeadGroup& heads) {
        return group_view(rows_of(x, part), heads);
      };
      // The merged output and log-sum-exp: the weights recomputed are those of the combination.
      auto [gq, gk, gv] = block_attention_backward(
          view(grad_out, group), view(q, group), view(k, kv_group), view(v, kv_group),
          view(out, group), group_rows_view(rows_of(lse, part), group),
          part_options(config, part, masks, padding, may_hold));
      view(grad_q, group).add_(gq);
      view(grad_k, kv_group).add_(gk);
      view(grad_v, kv_group).add_(gv);
    });
  }
  zero_padded_rows_(grad_k, padding);
  zero_padded_rows_(grad_v, padding);
  return {grad_q.to(q.scalar_type()), grad_k.to(k.scalar_type()), grad_v.to(v.scalar_type())};
}

}  // namespace dilated_attention
