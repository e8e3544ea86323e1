// Index math of sequence-parallel dilated attention: which rows of which segments each rank
// owns, which segments a rank can attend on its own, and which key/value rows it needs from
// every other rank. Plain C++ (no torch), shared by all sharded ops, their tests and benchmarks.
//
// Rank i owns positions [i * n, (i + 1) * n) with n = N / P. A segment's dilated rows are
// positions t*s + o + j*r; the rows of each rank form one contiguous range of j.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/index/dilation_plan.h"

namespace dilated_attention {

// Dilated row indices [first, first + count) of one segment.
struct RowRange {
  int64_t first = 0;
  int64_t count = 0;
  bool empty() const { return count == 0; }
};

struct ShardLayout {
  int64_t seq_len = 0;  // N, the whole sequence
  int world_size = 1;   // P
  int64_t shard_len() const { return seq_len / world_size; }
  int64_t shard_begin(int rank) const { return rank * shard_len(); }
};

// Rows j of `segment` whose positions t*s + o + j*r lie in [begin, end).
RowRange dilated_rows_in(const HeadGroup& group, int64_t segment, int64_t begin, int64_t end);

// The rows of `segment` owned by each rank (index = rank).
std::vector<RowRange> rows_by_rank(const HeadGroup& group, int64_t segment,
                                   const ShardLayout& layout);

// A segment in which this rank owns query rows but which does not lie entirely inside its shard:
// it is computed block by block (one block per rank owning rows) and merged by log-sum-exp.
struct EdgeSegment {
  int64_t segment = 0;
  std::vector<RowRange> rows_of_rank;  // index = rank
};

// One group's work on one rank.
struct GroupShardWork {
  HeadGroup group;
  // Segments [first_inner_segment, first_inner_segment + num_inner_segments) lie entirely inside
  // the shard: they are attended locally, exactly as on one device.
  int64_t first_inner_segment = 0;
  int64_t num_inner_segments = 0;
  std::vector<EdgeSegment> edge_segments;
};

std::vector<GroupShardWork> plan_shard_work(const std::vector<HeadGroup>& groups,
                                            const ShardLayout& layout, int rank);

// With causal masking a block of keys owned by `key_rank` is visible to queries of `query_rank`
// only if it does not come later in the sequence.
bool key_block_visible(int query_rank, int key_rank, bool is_causal);

// Key/value rows of `sender` that `receiver` needs, in the order both sides pack them (group,
// then segment). Empty when the receiver's segments never reach the sender's rows.
struct BlockRef {
  int64_t group_index = 0;
  int64_t segment = 0;
  RowRange rows;  // the sender's rows
};
std::vector<BlockRef> blocks_needed(const std::vector<HeadGroup>& groups, const ShardLayout& layout,
                                    int receiver, int sender, bool is_causal);

// Elements of one K (or V) payload holding `blocks`: sum of batch * rows * heads_of_group * D.
int64_t payload_elements(const std::vector<BlockRef>& blocks, const std::vector<HeadGroup>& groups,
                         int64_t batch, int64_t head_dim);

}  // namespace dilated_attention
