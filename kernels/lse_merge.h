// Merging partial attention results by log-sum-exp: attention of the same queries over
// disjoint key blocks combines exactly as
//   lse = log(exp(lse_a) + exp(lse_b)),  out = out_a * exp(lse_a - lse) + out_b * exp(lse_b - lse).
// A block whose rows are fully masked (lse = -inf) contributes nothing, never NaN.
#pragma once

#include <ATen/core/Tensor.h>

namespace dilated_attention {

// Running merge of blocks for one set of queries, kept in the accumulation dtype. Merges run in
// the device's merge kernel (kernels/device_kernels.h).
class LseAccumulator {
 public:
  // out: [..., L, D], lse: [..., L]; the first block initialises the accumulator.
  void add(const at::Tensor& out, const at::Tensor& lse);
  bool empty() const { return !out_.defined(); }
  const at::Tensor& out() const { return out_; }
  const at::Tensor& lse() const { return lse_; }

 private:
  at::Tensor out_, lse_;
};

// A block's out [..., L, D] and lse [..., L] merged into strided places of an accumulator
// (acc_out, acc_lse: views in the accumulation dtype). `first`: nothing reached these places
// before (they hold 0 and -inf), so the block is copied, its rows that saw nothing as 0.
void merge_into_places(const at::Tensor& acc_out, const at::Tensor& acc_lse, const at::Tensor& out,
                       const at::Tensor& lse, bool first);

// The merge written with ATen operations: device-generic, the reference for fused kernels.
// acc_out is replaced by the merged output; the merged log-sum-exp is returned.
at::Tensor lse_merge_aten_(at::Tensor& acc_out, const at::Tensor& acc_lse,
                           const at::Tensor& block_out, const at::Tensor& block_lse);

}  // namespace dilated_attention
