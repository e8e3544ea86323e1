#include "kernels/lse_merge.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/exp.h>
#include <ATen/ops/isinf.h>
#include <ATen/ops/logaddexp.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>

#include <limits>

#ifdef DILATED_ATTENTION_WITH_CUDA
#include "kernels/cuda/lse_merge_cuda.h"
#endif

namespace dilated_attention {
namespace {

at::Tensor fully_masked(const at::Tensor& lse) { return at::isinf(lse).logical_and(lse < 0); }

// exp(lse - total), with 0 where the total is -inf (both sides fully masked).
at::Tensor block_weight(const at::Tensor& lse, const at::Tensor& total) {
  return at::where(fully_masked(total), at::zeros_like(total), at::exp(lse - total)).unsqueeze(-1);
}

}  // namespace

void LseAccumulator::add(const at::Tensor& out, const at::Tensor& lse) {
  if (empty()) {
    // Rows of a fully masked block may hold anything (even NaN): zero them before they count.
    out_ = at::where(fully_masked(lse).unsqueeze(-1), at::zeros_like(out), out)
               .to(lse.scalar_type())
               .contiguous();
    lse_ = lse.contiguous().clone();
    return;
  }
#ifdef DILATED_ATTENTION_WITH_CUDA
  if (out_.is_cuda() && out_.scalar_type() == at::kFloat) {
    lse_ = lse_merge_cuda_(out_, lse_, out, lse);
    return;
  }
#endif
  const auto block_out =
      at::where(fully_masked(lse).unsqueeze(-1), at::zeros_like(out), out).to(lse.scalar_type());
  const auto total = at::logaddexp(lse_, lse);
  out_ = out_ * block_weight(lse_, total) + block_out * block_weight(lse, total);
  lse_ = total;
}

}  // namespace dilated_attention
