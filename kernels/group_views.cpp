#include "kernels/group_views.h"

#include <c10/util/Exception.h>

namespace dilated_attention {

at::Tensor with_group_viewable_layout(const at::Tensor& x) {
  const bool dense_last_dim = x.size(-1) <= 1 || x.stride(-1) == 1;
  const bool batch_merges = x.size(0) <= 1 || x.stride(0) == x.size(1) * x.stride(1);
  return dense_last_dim && batch_merges ? x : x.contiguous();
}

at::Tensor group_view(const at::Tensor& x, const HeadGroup& group) {
  TORCH_INTERNAL_ASSERT(x.dim() == 4);
  const int64_t batch = x.size(0), seq_len = x.size(1), head_dim = x.size(3);
  const int64_t seq_stride = x.stride(1), head_stride = x.stride(2);
  const auto view = x.as_strided(
      {batch * group.num_segments(seq_len), group.subset_length(), group.num_heads, head_dim},
      {group.segment_length * seq_stride, group.dilation_rate * seq_stride, head_stride,
       x.stride(3)},
      x.storage_offset() + group.offset * seq_stride + group.first_head * head_stride);
  return view.transpose(1, 2);
}

at::Tensor group_rows_view(const at::Tensor& rows, const HeadGroup& group) {
  TORCH_INTERNAL_ASSERT(rows.dim() == 3 && rows.is_contiguous());
  const int64_t batch = rows.size(0), seq_len = rows.size(1), num_heads = rows.size(2);
  return rows.as_strided(
      {batch * group.num_segments(seq_len), group.num_heads, group.subset_length()},
      {group.segment_length * num_heads, 1, group.dilation_rate * num_heads},
      rows.storage_offset() + group.offset * num_heads + group.first_head);
}

}  // namespace dilated_attention
