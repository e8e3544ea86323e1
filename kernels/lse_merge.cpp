#include "kernels/lse_merge.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/logaddexp.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <limits>

namespace dilated_attention {
namespace {

at::Tensor fully_masked(const at::Tensor& lse) { return at::isinf(lse).logical_and(lse < 0); }

// exp(lse - total), with 0 where the total is -inf (both sides fully masked).
at::Tensor block_weight(const at::Tensor& lse, const at::Tensor& total) {
  return at::where(fully_masked(total), at::zeros_like(total), at::exp(lse - total)).unsqueeze(-1);
}

}  // namespace

void LseAccumulator::add(const at::Tensor& out, const at::Tensor& lse) {
  // Rows of a fully masked block may hold anything (even NaN): zero them before they count.
  const auto block_out = at::where(fully_masked(lse).unsqueeze(-1), at::zeros_like(out), out)
                             .to(lse.scalar_type());
  if (empty()) {
    out_ = block_out;
    lse_ = lse.clone();
    return;
  }
  const auto total = at::logaddexp(lse_, lse);
  out_ = out_ * block_weight(lse_, total) + block_out * block_weight(lse, total);
  lse_ = total;
}

}  // namespace dilated_attention
