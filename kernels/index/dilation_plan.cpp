#include "kernels/index/dilation_plan.h"

#include <algorithm>
#include <stdexcept>
#include <utility>

namespace dilated_attention {

int64_t HeadGroup::subset_length() const {
  return dilated_subset_length(segment_length, dilation_rate, offset);
}

int64_t group_offset(int64_t group_index, int64_t dilation_rate) {
  return group_index % dilation_rate;
}

int64_t dilated_subset_length(int64_t segment_length, int64_t dilation_rate, int64_t offset) {
  if (offset >= segment_length) return 0;
  return (segment_length - offset + dilation_rate - 1) / dilation_rate;
}

std::vector<HeadGroup> make_head_groups(int64_t num_heads,
                                        const std::vector<int64_t>& segment_lengths,
                                        const std::vector<int64_t>& dilation_rates) {
  const auto num_groups = static_cast<int64_t>(segment_lengths.size());
  std::vector<HeadGroup> groups;
  groups.reserve(segment_lengths.size());
  int64_t next_head = 0;
  for (int64_t g = 0; g < num_groups; ++g) {
    HeadGroup group;
    group.index = g;
    group.first_head = next_head;
    group.num_heads = num_heads / num_groups + (g < num_heads % num_groups ? 1 : 0);
    group.segment_length = segment_lengths[g];
    // A rate at or past the segment length leaves one position per segment, the offset; so does
    // stepping by the segment length, which keeps the views' strides (rate * H * D) in int64
    // for any rate the schema takes. The offset still comes from the rate given.
    group.dilation_rate = std::min(dilation_rates[g], segment_lengths[g]);
    group.offset = group_offset(g, dilation_rates[g]);
    next_head += group.num_heads;
    groups.push_back(group);
  }
  return groups;
}

std::vector<HeadGroup> make_longnet_groups(int64_t num_heads, int64_t sequence_length,
                                           const std::vector<int64_t>& segment_lengths,
                                           const std::vector<int64_t>& dilation_rates) {
  std::vector<HeadGroup> groups;
  for (size_t i = 0; i < segment_lengths.size(); ++i) {
    const int64_t segment = std::min(segment_lengths[i], sequence_length);
    const int64_t rate = dilation_rates[i];
    // ceil(H / r) without overflow for any rate the schema takes.
    const int64_t heads_per_offset = num_heads > 0 ? (num_heads - 1) / rate + 1 : 0;
    // Offsets past the last head (rate > H) or past the segment cover nothing.
    for (int64_t offset = 0; offset < rate && offset < segment; ++offset) {
      const int64_t first_head = offset * heads_per_offset;
      if (first_head >= num_heads) break;
      HeadGroup group;
      group.index = static_cast<int64_t>(i);
      group.first_head = first_head;
      group.num_heads = std::min(heads_per_offset, num_heads - first_head);
      group.segment_length = segment;
      group.dilation_rate = std::min(rate, segment);
      group.offset = offset;
      groups.push_back(group);
    }
  }
  return groups;
}

const HeadGroup& group_of_head(const std::vector<HeadGroup>& groups, int64_t head) {
  for (const auto& group : groups) {
    if (head >= group.first_head && head < group.first_head + group.num_heads) return group;
  }
  throw std::out_of_range("head index outside every head group");
}

std::vector<int64_t> segment_positions(const HeadGroup& group, int64_t segment_index) {
  std::vector<int64_t> positions;
  positions.reserve(static_cast<size_t>(group.subset_length()));
  const int64_t start = segment_index * group.segment_length;
  for (int64_t within = group.offset; within < group.segment_length;
       within += group.dilation_rate) {
    positions.push_back(start + within);
  }
  return positions;
}

bool leaves_positions_uncovered(const std::vector<HeadGroup>& groups) {
  for (const auto& group : groups) {
    if (group.dilation_rate > 1) return true;
  }
  return false;
}

double dilated_attention_forward_flops(int64_t batch, int64_t sequence_length, int64_t head_dim,
                                       const std::vector<HeadGroup>& groups) {
  double flops = 0.0;
  for (const auto& group : groups) {
    flops +=
        4.0 * static_cast<double>(batch) * static_cast<double>(group.num_heads) *
        (static_cast<double>(sequence_length) / static_cast<double>(group.dilation_rate)) *
        (static_cast<double>(group.segment_length) / static_cast<double>(group.dilation_rate)) *
        static_cast<double>(head_dim);
  }
  return flops;
}

}  // namespace dilated_attention

namespace dilated_attention {

std::vector<HeadGroup> restrict_to_heads(const std::vector<HeadGroup>& groups, int64_t first_head,
                                         int64_t num_heads) {
  std::vector<HeadGroup> restricted;
  const int64_t end = first_head + num_heads;
  for (const auto& group : groups) {
    const int64_t lo = std::max(group.first_head, first_head);
    const int64_t hi = std::min(group.first_head + group.num_heads, end);
    if (lo >= hi) continue;
    HeadGroup part = group;
    part.first_head = lo - first_head;
    part.num_heads = hi - lo;
    restricted.push_back(part);
  }
  return restricted;
}

std::vector<HeadGroup> split_at_shared_key_values(const std::vector<HeadGroup>& groups,
                                                  int64_t heads_per_key_value) {
  if (heads_per_key_value <= 1) return groups;
  const int64_t share = heads_per_key_value;
  std::vector<HeadGroup> parts;
  for (const auto& group : groups) {
    const int64_t begin = group.first_head, end = group.first_head + group.num_heads;
    // Cut at the first and last multiples of `share` strictly inside the head range.
    const int64_t first_cut = std::min(end, (begin + share - 1) / share * share);
    const int64_t last_cut = std::max(first_cut, end / share * share);
    for (const auto& [lo, hi] :
         {std::pair{begin, first_cut}, std::pair{first_cut, last_cut}, std::pair{last_cut, end}}) {
      if (lo >= hi) continue;
      HeadGroup part = group;
      part.first_head = lo;
      part.num_heads = hi - lo;
      parts.push_back(part);
    }
  }
  return parts;
}

HeadGroup key_value_group(const HeadGroup& group, int64_t heads_per_key_value) {
  const int64_t share = std::max<int64_t>(1, heads_per_key_value);
  const int64_t first = group.first_head / share;
  const int64_t last = (group.first_head + group.num_heads - 1) / share;
  const bool uniform =
      first == last || (group.first_head % share == 0 && group.num_heads % share == 0);
  if (!uniform) {
    throw std::invalid_argument("key_value_group: a group not split at shared key/value heads");
  }
  HeadGroup keys = group;
  keys.first_head = first;
  keys.num_heads = last - first + 1;
  return keys;
}

std::vector<HeadGroup> key_value_groups(const std::vector<HeadGroup>& groups,
                                        int64_t heads_per_key_value) {
  std::vector<HeadGroup> keys;
  keys.reserve(groups.size());
  for (const auto& group : groups) keys.push_back(key_value_group(group, heads_per_key_value));
  return keys;
}

}  // namespace dilated_attention
