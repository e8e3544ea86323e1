// Zero-copy views into one rank's shard [B, n, H, D] (and its [B, n, H] log-sum-exp) for the
// sharded ops: the dilated rows of one segment, and runs of whole segments inside the shard.
// Shard tensors are contiguous (the sharded ops make them so once).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "kernels/index/dilation_plan.h"
#include "kernels/index/ring_plan.h"

namespace dilated_attention {

// Rows `rows` of `segment` of `group`, in a shard starting at sequence position `shard_begin`:
// [B, h_g, rows.count, D] for 4-D x, [B, h_g, rows.count] for a 3-D log-sum-exp.
at::Tensor segment_rows_view(const at::Tensor& x, const HeadGroup& group, int64_t segment,
                             const RowRange& rows, int64_t shard_begin);

// Segments [first_segment, first_segment + count) lying inside the shard, as group views
// [B' , h_g, L, D] (or [B', h_g, L] for 3-D). One view with B' = B * count when the batch merges
// with the segments, otherwise one view per batch (B' = count); `first_batch` says which.
struct SegmentRunView {
  at::Tensor view;
  int64_t first_batch = 0;
};
std::vector<SegmentRunView> segment_run_views(const at::Tensor& x, const HeadGroup& group,
                                              int64_t first_segment, int64_t count,
                                              int64_t shard_begin);

}  // namespace dilated_attention
