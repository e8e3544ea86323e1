#include "kernels/index/ring_plan.h"

#include <algorithm>

namespace dilated_attention {
namespace {

// Smallest j with j * step >= numerator, for step > 0 and any sign of numerator.
int64_t ceil_div(int64_t numerator, int64_t step) {
  return numerator >= 0 ? (numerator + step - 1) / step : -((-numerator) / step);
}

bool segment_inside(const HeadGroup& group, int64_t segment, int64_t begin, int64_t end) {
  return segment * group.segment_length >= begin && (segment + 1) * group.segment_length <= end;
}

}  // namespace

RowRange dilated_rows_in(const HeadGroup& group, int64_t segment, int64_t begin, int64_t end) {
  const int64_t first_position = segment * group.segment_length + group.offset;
  const int64_t len = group.subset_length();
  const int64_t first =
      std::clamp<int64_t>(ceil_div(begin - first_position, group.dilation_rate), 0, len);
  const int64_t last =
      std::clamp<int64_t>(ceil_div(end - first_position, group.dilation_rate), 0, len);
  return {first, std::max<int64_t>(0, last - first)};
}

std::vector<RowRange> rows_by_rank(const HeadGroup& group, int64_t segment,
                                   const ShardLayout& layout) {
  std::vector<RowRange> rows(static_cast<size_t>(layout.world_size));
  for (int r = 0; r < layout.world_size; ++r) {
    rows[r] = dilated_rows_in(group, segment, layout.shard_begin(r),
                              layout.shard_begin(r) + layout.shard_len());
  }
  return rows;
}

std::vector<GroupShardWork> plan_shard_work(const std::vector<HeadGroup>& groups,
                                            const ShardLayout& layout, int rank) {
  const int64_t begin = layout.shard_begin(rank), end = begin + layout.shard_len();
  std::vector<GroupShardWork> plan;
  for (const auto& group : groups) {
    GroupShardWork work;
    work.group = group;
    if (end > begin) {
      const int64_t s = group.segment_length;
      const int64_t first_segment = begin / s, last_segment = (end - 1) / s;
      work.first_inner_segment = ceil_div(begin, s);
      for (int64_t t = first_segment; t <= last_segment; ++t) {
        if (segment_inside(group, t, begin, end)) {
          ++work.num_inner_segments;
        } else if (!dilated_rows_in(group, t, begin, end).empty()) {
          work.edge_segments.push_back({t, rows_by_rank(group, t, layout)});
        }
      }
    }
    plan.push_back(std::move(work));
  }
  return plan;
}

bool key_block_visible(int query_rank, int key_rank, bool is_causal) {
  return !is_causal || key_rank <= query_rank;
}

std::vector<BlockRef> blocks_needed(const std::vector<HeadGroup>& groups, const ShardLayout& layout,
                                    int receiver, int sender, bool is_causal) {
  std::vector<BlockRef> blocks;
  if (receiver == sender || !key_block_visible(receiver, sender, is_causal)) return blocks;
  const auto work = plan_shard_work(groups, layout, receiver);
  for (size_t g = 0; g < work.size(); ++g) {
    for (const auto& edge : work[g].edge_segments) {
      const RowRange& rows = edge.rows_of_rank[sender];
      if (!rows.empty()) blocks.push_back({static_cast<int64_t>(g), edge.segment, rows});
    }
  }
  return blocks;
}

int64_t payload_elements(const std::vector<BlockRef>& blocks, const std::vector<HeadGroup>& groups,
                         int64_t batch, int64_t head_dim) {
  int64_t elements = 0;
  for (const auto& block : blocks) {
    elements += batch * block.rows.count * groups[block.group_index].num_heads * head_dim;
  }
  return elements;
}

}  // namespace dilated_attention
