// Index math of LongNet-style dilated attention: which heads form each group, which
// positions a segment attends over, and how much work that is. Plain C++ on purpose: the
// ops, kernels, tests and benchmarks all call these functions, so each rule lives here once.
#pragma once

#include <cstdint>
#include <vector>

namespace dilated_attention {

// One head group: the heads [first_head, first_head + num_heads) share a segment length,
// a dilation rate and an offset. make_head_groups caps the rate at the segment length (the
// positions are the same: only the offset once the rate reaches it).
struct HeadGroup {
  int64_t index = 0;
  int64_t first_head = 0;
  int64_t num_heads = 0;
  int64_t segment_length = 0;
  int64_t dilation_rate = 1;
  int64_t offset = 0;

  // Number of positions one segment of this group attends over (s/r rounded up past the
  // offset); 0 when the offset does not fit inside the segment.
  int64_t subset_length() const;
  // Number of segments in a sequence of `sequence_length` positions.
  int64_t num_segments(int64_t sequence_length) const { return sequence_length / segment_length; }
};

// Offset of group `group_index`: the group index modulo its dilation rate.
int64_t group_offset(int64_t group_index, int64_t dilation_rate);

// Length of the dilated subset {o + j*r < s : j >= 0}.
int64_t dilated_subset_length(int64_t segment_length, int64_t dilation_rate, int64_t offset);

// Heads split into len(segment_lengths) contiguous groups; the first H % G groups get one
// extra head. Callers validate the arguments first (same lengths, positive values, H >= G).
std::vector<HeadGroup> make_head_groups(int64_t num_heads,
                                        const std::vector<int64_t>& segment_lengths,
                                        const std::vector<int64_t>& dilation_rates);

// LongNet's branches (arXiv 2307.02486 section 2.2, microsoft/torchscale's rule): every head takes
// part in every branch i = (segment_lengths[i], dilation_rates[i]). The branch's segment length
// is min(w_i, N); its heads form r_i contiguous blocks of ceil(H / r_i) heads (the last ones
// fewer, or none), and block m attends at offset m. One group per block that covers some
// position, index = branch i; the rate is capped at the segment length as make_head_groups does.
// A sequence of `sequence_length` positions: the last segment of a branch may be truncated
// (the kernels attend it as a shorter segment), so no padding row exists.
std::vector<HeadGroup> make_longnet_groups(int64_t num_heads, int64_t sequence_length,
                                           const std::vector<int64_t>& segment_lengths,
                                           const std::vector<int64_t>& dilation_rates);

// The group that owns `head` (the group whose head range contains it).
const HeadGroup& group_of_head(const std::vector<HeadGroup>& groups, int64_t head);

// Sequence positions of segment `segment_index` of `group`, increasing.
std::vector<int64_t> segment_positions(const HeadGroup& group, int64_t segment_index);

// True when some position of some head is attended by no segment (dilation rate > 1), so the
// output and the input gradients need zeros there.
bool leaves_positions_uncovered(const std::vector<HeadGroup>& groups);

// Effective forward FLOPs, counting only the dilated work: 4 * B * h_g * (N / r_g) * (s_g / r_g)
// * D summed over the groups. Forward + backward is counted as 3.5x this (backward = 2.5x, the
// flash-attention convention).
double dilated_attention_forward_flops(int64_t batch, int64_t sequence_length, int64_t head_dim,
                                       const std::vector<HeadGroup>& groups);

}  // namespace dilated_attention

namespace dilated_attention {

// The groups restricted to heads [first_head, first_head + num_heads), renumbered so head
// `first_head` becomes head 0 (for head-parallel work on a slice of the heads). Groups with no
// head in the range are dropped; segment lengths, rates and offsets stay those of the whole op.
std::vector<HeadGroup> restrict_to_heads(const std::vector<HeadGroup>& groups, int64_t first_head,
                                         int64_t num_heads);

// Grouped-query attention: `heads_per_key_value` consecutive query heads share one key/value
// head (query head h reads key/value head h / heads_per_key_value, as flash-attn and
// transformers' repeat_kv do). The attention kernels take one ratio per call, so each group is
// split where that ratio would not be uniform: a leading part inside one key/value head, an
// aligned middle (whole sets of sharing heads), a trailing part inside one key/value head. The
// parts keep the group's index, segment length, rate and offset, so the math is the group's.
// heads_per_key_value = 1 returns the groups unchanged.
std::vector<HeadGroup> split_at_shared_key_values(const std::vector<HeadGroup>& groups,
                                                  int64_t heads_per_key_value);

// The key/value heads that the query heads of `group` (a part made by
// split_at_shared_key_values) read, as a group over the key/value tensors: the same segments,
// rate and offset, the heads [first_head / heads_per_key_value, ...).
HeadGroup key_value_group(const HeadGroup& group, int64_t heads_per_key_value);

std::vector<HeadGroup> key_value_groups(const std::vector<HeadGroup>& groups,
                                        int64_t heads_per_key_value);

}  // namespace dilated_attention
