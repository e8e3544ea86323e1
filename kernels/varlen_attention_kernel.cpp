#include "kernels/varlen_attention_kernel.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <vector>

#include "kernels/block_attention.h"
#include "kernels/causal_pieces.h"
#include "kernels/device_kernels.h"
#include "kernels/group_attention.h"
#include "kernels/group_views.h"
#include "kernels/index/dropout_mask.h"

namespace dilated_attention {
namespace {

// One batched call's worth of one group in one sequence: the whole segments, or the truncated
// tail (a group whose segment length is the tail's, one segment, starting at `first_row` of the
// sequence).
struct SequencePart {
  HeadGroup group;  // segment_length: s_g (whole segments) or the tail's length
  int64_t first_row = 0;
  int64_t rows = 0;  // a multiple of group.segment_length
};

std::vector<SequencePart> parts_of(const HeadGroup& group, int64_t length) {
  std::vector<SequencePart> parts;
  const int64_t whole = length / group.segment_length * group.segment_length;
  if (whole > 0) parts.push_back({group, 0, whole});
  const int64_t tail = length - whole;
  if (tail > 0) {
    SequencePart part{group, whole, tail};
    part.group.segment_length = tail;
    // The rate is capped at the segment length as make_head_groups does (same positions); the
    // offset stays the group's, and a tail too short for it has no positions.
    part.group.dilation_rate = std::min(group.dilation_rate, tail);
    if (part.group.subset_length() > 0) parts.push_back(part);
  }
  return parts;
}

// x itself when group views can read it (as with_group_viewable_layout), otherwise a dense copy.
at::Tensor packed_layout(const at::Tensor& x) {
  return with_group_viewable_layout(x.unsqueeze(0)).squeeze(0);
}

// [T, h, D] rows of one part as the [1, rows, h, D] tensor group_view takes ([T, h] log-sum-exp
// rows as [1, rows, h]).
at::Tensor rows_of(const at::Tensor& x, int64_t sequence_start, const SequencePart& part) {
  return x.narrow(0, sequence_start + part.first_row, part.rows).unsqueeze(0);
}

BlockOptions part_options(const AttentionConfig& config, const SequencePart& part, int64_t sequence,
                          const DropoutMask& mask, bool may_hold) {
  const auto& group = part.group;
  BlockOptions options;
  options.is_causal = config.is_causal;
  options.scale = config.scale;
  options.dropout = &mask;
  options.may_hold_non_finite = may_hold;
  // Dropout coordinates: the sequence is the batch, positions count from its first row.
  options.where.first_batch = sequence;
  options.where.views_per_batch = part.rows / group.segment_length;
  options.where.view_stride = group.segment_length;
  options.where.first_head = config.global_head_offset + group.first_head;
  options.where.query_first = options.where.key_first = part.first_row + group.offset;
  options.where.step = group.dilation_rate;
  return options;
}

// One check of the whole tensors, where the device checks on the host; elsewhere the blocks are
// told nothing (true: may hold them), as in dilated_attention_kernel.cpp.
bool inputs_may_hold_non_finite(const at::Tensor& q,
                                std::initializer_list<const at::Tensor*> inputs) {
  if (!kernels_for(q.device().type()).checks_non_finite_on_host) return true;
  return may_hold_non_finite(inputs);
}

template <typename Body>
void for_each_part(const std::vector<int64_t>& starts, const AttentionConfig& config,
                   const Body& body) {
  for (size_t i = 0; i + 1 < starts.size(); ++i) {
    const int64_t length = starts[i + 1] - starts[i];
    if (length == 0) continue;
    for (const auto& group : config.groups) {
      for (const auto& part : parts_of(group, length)) {
        body(static_cast<int64_t>(i), starts[i], part);
      }
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> varlen_attention_forward_kernel(
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const std::vector<int64_t>& starts, const AttentionConfig& config) {
  const auto q = packed_layout(q_in), k = packed_layout(k_in), v = packed_layout(v_in);
  auto out = at::zeros(q.sizes(), q.options());
  auto lse =
      at::zeros({q.size(0), q.size(1)}, q.options().dtype(at::toOpMathType(q.scalar_type())));
  if (q.numel() == 0) return {out, lse};
  const DropoutMask mask(config.dropout_seed, config.dropout_p);
  const bool may_hold = inputs_may_hold_non_finite(q, {&q, &k, &v});
  std::vector<GroupForwardInto> calls;
  for_each_part(starts, config, [&](int64_t sequence, int64_t start, const SequencePart& part) {
    const auto kv_group = key_value_group(part.group, config.heads_per_key_value);
    const auto view = [&](const at::Tensor& x, const HeadGroup& heads) {
      return group_view(rows_of(x, start, part), heads);
    };
    calls.push_back({view(q, part.group), view(k, kv_group), view(v, kv_group),
                     part_options(config, part, sequence, mask, may_hold), view(out, part.group),
                     group_rows_view(rows_of(lse, start, part), part.group)});
  });
  attend_groups_into(calls, config.output_scale);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_kernel(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    const std::vector<int64_t>& starts, const AttentionConfig& config) {
  const auto q = packed_layout(q_in), k = packed_layout(k_in), v = packed_layout(v_in);
  const auto grad_out = packed_layout(grad_out_in), lse = lse_in.contiguous();
  const auto out = packed_layout(out_in);  // the scaled result, as group_attention.h takes it
  auto grad_q = at::zeros(q.sizes(), q.options());
  auto grad_k = at::zeros(k.sizes(), k.options());
  auto grad_v = at::zeros(v.sizes(), v.options());
  if (q.numel() == 0) return {grad_q, grad_k, grad_v};
  const DropoutMask mask(config.dropout_seed, config.dropout_p);
  const bool may_hold = inputs_may_hold_non_finite(q, {&grad_out, &q, &k, &v, &out});
  std::vector<GroupBackwardInto> calls;
  for_each_part(starts, config, [&](int64_t sequence, int64_t start, const SequencePart& part) {
    const auto& group = part.group;
    const auto kv_group = key_value_group(group, config.heads_per_key_value);
    const auto view = [&](const at::Tensor& x, const HeadGroup& heads) {
      return group_view(rows_of(x, start, part), heads);
    };
    calls.push_back({view(grad_out, group), view(q, group), view(k, kv_group), view(v, kv_group),
                     view(out, group), group_rows_view(rows_of(lse, start, part), group),
                     part_options(config, part, sequence, mask, may_hold), view(grad_q, group),
                     view(grad_k, kv_group), view(grad_v, kv_group)});
  });
  // Parts write disjoint rows (sequences, whole segments and tails) of disjoint heads (groups),
  // but groups sharing a key/value head add to its rows.
  attend_groups_backward_into(calls, config.output_scale,
                              /*accumulate_key_values=*/config.heads_per_key_value > 1);
  return {grad_q, grad_k, grad_v};
}

}  // namespace dilated_attention
