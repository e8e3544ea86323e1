#include "kernels/shard_views.h"

#include <c10/util/Exception.h>
#include <c10/util/strides.h>

namespace dilated_attention {
namespace {

// Sequence and head strides of a [B, n, H, D] tensor or a [B, n, H] log-sum-exp.
struct RowStrides {
  int64_t batch, position, head, feature;
};

// From the sizes, not x.strides(): is_contiguous() ignores the strides of size-1 dimensions, so a
// contiguous shard may report any stride there (a [B, 1, H, D] slice of sequence-first storage),
// while the row-major strides address exactly its elements.
RowStrides row_strides(const at::Tensor& x) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && (x.dim() == 4 || x.dim() == 3));
  const auto st = c10::contiguous_strides(x.sizes());
  return {st[0], st[1], st[2], x.dim() == 4 ? st[3] : 0};
}

// [outer, rows, h_g(, D)] strided view, then heads moved before rows.
at::Tensor rows_view(const at::Tensor& x, int64_t outer, int64_t outer_stride, int64_t rows,
                     int64_t row_stride, const HeadGroup& group, int64_t offset) {
  const auto st = row_strides(x);
  std::vector<int64_t> sizes{outer, rows, group.num_heads};
  std::vector<int64_t> strides{outer_stride, row_stride, st.head};
  if (x.dim() == 4) {
    sizes.push_back(x.size(3));
    strides.push_back(st.feature);
  }
  return x.as_strided(sizes, strides, x.storage_offset() + offset + group.first_head * st.head)
      .transpose(1, 2);
}

}  // namespace

at::Tensor segment_rows_view(const at::Tensor& x, const HeadGroup& group, int64_t segment,
                             const RowRange& rows, int64_t shard_begin) {
  const auto st = row_strides(x);
  const int64_t first_position = segment * group.segment_length + group.offset +
                                 rows.first * group.dilation_rate - shard_begin;
  TORCH_INTERNAL_ASSERT(first_position >= 0 && (rows.count == 0 || first_position < x.size(1)));
  return rows_view(x, x.size(0), st.batch, rows.count, group.dilation_rate * st.position, group,
                   first_position * st.position);
}

std::vector<SegmentRunView> segment_run_views(const at::Tensor& x, const HeadGroup& group,
                                              int64_t first_segment, int64_t count,
                                              int64_t shard_begin) {
  const auto st = row_strides(x);
  const int64_t s = group.segment_length, len = group.subset_length();
  const int64_t first_position = first_segment * s + group.offset - shard_begin;
  const int64_t segment_stride = s * st.position, row_stride = group.dilation_rate * st.position;
  const bool batch_merges = x.size(0) == 1 || st.batch == count * segment_stride;
  if (batch_merges) {
    return {{rows_view(x, x.size(0) * count, segment_stride, len, row_stride, group,
                       first_position * st.position),
             0}};
  }
  std::vector<SegmentRunView> views;
  for (int64_t b = 0; b < x.size(0); ++b) {
    views.push_back({rows_view(x, count, segment_stride, len, row_stride, group,
                               b * st.batch + first_position * st.position),
                     b});
  }
  return views;
}

}  // namespace dilated_attention
