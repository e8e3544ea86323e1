#include "kernels/block_attention.h"

#include <ATen/ops/isfinite.h>
#include <ATen/ops/zeros_like.h>

#include <limits>
#include <utility>

#include "kernels/device_kernels.h"

namespace dilated_attention {
namespace {

// With scale 0 every key a query may see weighs the same. ATen's attention kernels apply the
// scale after the causal mask, so 0 * -inf gives NaN rows; zero queries at scale 1 give those
// equal weights exactly (every score 0), and the gradients of q and k are 0 (every score is
// 0 * q.k whatever q and k are). A scale below float32's smallest value is 0 in kernels that
// compute in float32 (every input dtype but float64).
bool is_zero_scale(const at::Tensor& q, const BlockOptions& options) {
  return options.scale == 0.0 ||
         (q.scalar_type() != at::kDouble && static_cast<float>(options.scale) == 0.0f);
}

BlockOptions at_unit_scale(const BlockOptions& options) {
  BlockOptions unit = options;
  unit.scale = 1.0;
  return unit;
}

// A query row holding NaN or +-inf has only NaN (or infinite) scores, so its attention is NaN,
// as the float64 reference gives. ATen's CPU flash kernel returns 0 for such a row when the
// block has few keys (under 16 in float32, bf16 and half, under 8 in float64, on AVX2); longer
// blocks propagate the NaN. Marking costs a pass over q and out (a fifth of the attention's time
// at N = 8192 if done for every block), so only blocks of fewer than kShortKeyBlock keys (with
// room for wider vectors), and scale 0 (whose zero queries lose the NaN), take it. No host sync.
// The log-sum-exp is marked too, so merges with other key blocks stay NaN.
constexpr int64_t kShortKeyBlock = 64;

std::tuple<at::Tensor, at::Tensor> with_non_finite_queries_marked(const at::Tensor& q,
                                                                  at::Tensor out, at::Tensor lse) {
  const auto bad_rows = at::isfinite(q).logical_not_().any(-1, /*keepdim=*/true);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  out.masked_fill_(bad_rows, nan);
  lse.masked_fill_(bad_rows.squeeze(-1), nan);
  return {std::move(out), std::move(lse)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> block_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options) {
  const auto& kernels = kernels_for(q.device().type());
  const bool zero_scale = is_zero_scale(q, options);
  auto [out, lse] = zero_scale ? kernels.forward(at::zeros_like(q), k, v, at_unit_scale(options))
                               : kernels.forward(q, k, v, options);
  if (zero_scale || k.size(2) < kShortKeyBlock) {
    return with_non_finite_queries_marked(q, std::move(out), std::move(lse));
  }
  return {std::move(out), std::move(lse)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  const auto& kernels = kernels_for(q.device().type());
  if (is_zero_scale(q, options)) {
    const auto grads =
        kernels.backward(grad_out, at::zeros_like(q), k, v, out, lse, at_unit_scale(options));
    return {at::zeros_like(q), at::zeros_like(k), std::get<2>(grads)};
  }
  return kernels.backward(grad_out, q, k, v, out, lse, options);
}

}  // namespace dilated_attention
