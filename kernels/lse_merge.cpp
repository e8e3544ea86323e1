#include "kernels/lse_merge.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/logaddexp.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include "kernels/device_kernels.h"

namespace dilated_attention {
namespace {

at::Tensor fully_masked(const at::Tensor& lse) { return at::isinf(lse).logical_and(lse < 0); }

// exp(lse - total), with 0 where the total is -inf (both sides fully masked).
at::Tensor block_weight(const at::Tensor& lse, const at::Tensor& total) {
  return at::where(fully_masked(total), at::zeros_like(total), at::exp(lse - total)).unsqueeze(-1);
}

// Rows of a fully masked block may hold anything (even NaN): zero them before they count.
at::Tensor masked_rows_zeroed(const at::Tensor& out, const at::Tensor& lse) {
  return at::where(fully_masked(lse).unsqueeze(-1), at::zeros_like(out), out).to(lse.scalar_type());
}

}  // namespace

at::Tensor lse_merge_aten_(at::Tensor& acc_out, const at::Tensor& acc_lse,
                           const at::Tensor& block_out, const at::Tensor& block_lse) {
  const auto total = at::logaddexp(acc_lse, block_lse);
  acc_out = acc_out * block_weight(acc_lse, total) +
            masked_rows_zeroed(block_out, block_lse) * block_weight(block_lse, total);
  return total;
}

void merge_into_places(const at::Tensor& acc_out, const at::Tensor& acc_lse, const at::Tensor& out,
                       const at::Tensor& lse, bool first) {
  if (first) {
    acc_out.copy_(masked_rows_zeroed(out, lse));
    acc_lse.copy_(lse);
    return;
  }
  // The device's merge takes dense accumulators: the places are gathered, merged, put back.
  auto merged_out = acc_out.contiguous();
  const auto merged_lse =
      kernels_for(out.device().type()).merge(merged_out, acc_lse.contiguous(), out, lse);
  acc_out.copy_(merged_out);
  acc_lse.copy_(merged_lse);
}

void LseAccumulator::add(const at::Tensor& out, const at::Tensor& lse) {
  if (empty()) {
    out_ = masked_rows_zeroed(out, lse).contiguous();
    lse_ = lse.contiguous().clone();
    return;
  }
  lse_ = kernels_for(out_.device().type()).merge(out_, lse_, out, lse);
}

}  // namespace dilated_attention
