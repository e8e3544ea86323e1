#include "kernels/group_views.h"

#include <c10/util/Exception.h>
#include <c10/util/strides.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace dilated_attention {
namespace {

// True when no two indices of x address one element: ordered by stride, every dimension of size
// > 1 steps past the whole extent of those below it. ATen's attention kernels take any strides
// but give wrong results (reading uninitialised memory) for inputs whose rows overlap, such as
// heads that share features of an as_strided view; expand()'s stride 0 is an overlap too.
bool addresses_distinct_elements(const at::Tensor& x) {
  std::vector<std::pair<int64_t, int64_t>> stride_size;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (x.size(d) > 1) stride_size.emplace_back(x.stride(d), x.size(d));
  }
  std::sort(stride_size.begin(), stride_size.end());
  int64_t extent = 1;  // one past the largest offset reached by the dimensions so far
  for (const auto& [stride, size] : stride_size) {
    if (stride < extent) return false;
    extent = stride * (size - 1) + extent;
  }
  return true;
}

}  // namespace

at::Tensor with_group_viewable_layout(const at::Tensor& x) {
  const bool dense_last_dim = x.size(-1) <= 1 || x.stride(-1) == 1;
  const bool batch_merges = x.size(0) <= 1 || x.stride(0) == x.size(1) * x.stride(1);
  if (dense_last_dim && batch_merges && addresses_distinct_elements(x)) {
    return x;
  }
  // x.contiguous() returns x itself when only size-1 dimensions carry odd strides (a [B, 1, H, D]
  // slice of sequence-first storage is contiguous), and group_view reads the strides: give the
  // result the row-major strides that address the same elements.
  const auto dense = x.contiguous();
  return dense.as_strided(dense.sizes(), c10::contiguous_strides(dense.sizes()),
                          dense.storage_offset());
}

namespace {

// Stride of the merged (batch, segment) dimension: a segment's, which steps into the next
// batch row only when batch rows follow each other (with_group_viewable_layout); a view with one
// segment per batch row (a truncated tail of a narrowed sequence) takes the batch stride itself.
int64_t view_batch_stride(const at::Tensor& x, const HeadGroup& group) {
  const int64_t batch = x.size(0), seq_len = x.size(1);
  if (group.num_segments(seq_len) == 1) return x.stride(0);
  TORCH_INTERNAL_ASSERT(batch <= 1 || x.stride(0) == seq_len * x.stride(1),
                        "group views merge batch and segments of dense batch rows only");
  return group.segment_length * x.stride(1);
}

}  // namespace

at::Tensor group_view(const at::Tensor& x, const HeadGroup& group) {
  TORCH_INTERNAL_ASSERT(x.dim() == 4);
  const int64_t batch = x.size(0), seq_len = x.size(1), head_dim = x.size(3);
  const int64_t seq_stride = x.stride(1), head_stride = x.stride(2);
  const auto view = x.as_strided(
      {batch * group.num_segments(seq_len), group.subset_length(), group.num_heads, head_dim},
      {view_batch_stride(x, group), group.dilation_rate * seq_stride, head_stride, x.stride(3)},
      x.storage_offset() + group.offset * seq_stride + group.first_head * head_stride);
  return view.transpose(1, 2);
}

at::Tensor group_rows_view(const at::Tensor& rows, const HeadGroup& group) {
  TORCH_INTERNAL_ASSERT(rows.dim() == 3);
  const int64_t batch = rows.size(0), seq_len = rows.size(1);
  return rows.as_strided(
      {batch * group.num_segments(seq_len), group.num_heads, group.subset_length()},
      {view_batch_stride(rows, group), rows.stride(2), group.dilation_rate * rows.stride(1)},
      rows.storage_offset() + group.offset * rows.stride(1) + group.first_head * rows.stride(2));
}

at::Tensor group_positions_view(const at::Tensor& flags, const HeadGroup& group) {
  if (!flags.defined()) return flags;
  TORCH_INTERNAL_ASSERT(flags.dim() == 2);
  const int64_t batch = flags.size(0), seq_len = flags.size(1);
  return flags.as_strided({batch * group.num_segments(seq_len), group.subset_length()},
                          {view_batch_stride(flags, group), group.dilation_rate * flags.stride(1)},
                          flags.storage_offset() + group.offset * flags.stride(1));
}

}  // namespace dilated_attention
