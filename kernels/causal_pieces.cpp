#include "kernels/causal_pieces.h"

#include <ATen/ops/isfinite.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>

#include "kernels/device_kernels.h"

namespace dilated_attention {
bool holds_non_finite(const at::Tensor& x) {
  if (x.numel() == 0) {
    return false;
  }
  // ATen sums reduced floating types in float already. bfloat16 has float's exponent range,
  // so its own sum answers as a float sum would, without the float copy of x that asking for a
  // float result makes (the copy cost 60-140 ms of a 16384-token causal bf16 forward); float16
  // sums would overflow at 65504, so they ask for a float result.
  const auto type = x.scalar_type();
  const auto accumulate = (type == at::kDouble || type == at::kBFloat16) ? type : at::kFloat;
  return !std::isfinite(x.sum(accumulate).item<double>());
}

namespace {

// [L] bool: position i (dim 2) holds a non-finite value in some view batch, head or channel.
at::Tensor non_finite_positions(const at::Tensor& x) {
  return at::isfinite(x).logical_not_().any(-1).any(1).any(0);
}

}  // namespace

bool may_hold_non_finite(std::initializer_list<const at::Tensor*> tensors) {
  const auto* first = *tensors.begin();
  if (!kernels_for(first->device().type()).checks_non_finite_on_host) {
    return false;
  }
  return std::any_of(tensors.begin(), tensors.end(),
                     [](const at::Tensor* x) { return holds_non_finite(*x); });
}

std::vector<int64_t> causal_cut_points(std::initializer_list<const at::Tensor*> rows,
                                       std::initializer_list<const at::Tensor*> keys) {
  if (!may_hold_non_finite(rows) && !may_hold_non_finite(keys)) {
    return {};
  }
  const int64_t length = (*rows.begin())->size(2);
  auto bad = at::zeros({length}, (*rows.begin())->options().dtype(at::kBool));
  for (const auto* group : {&rows, &keys}) {
    for (const at::Tensor* x : *group) {
      bad.logical_or_(non_finite_positions(*x));
    }
  }
  const auto positions = at::nonzero(bad).flatten().cpu();
  const auto* p = positions.data_ptr<int64_t>();
  std::vector<int64_t> cuts{0};
  for (int64_t i = 0; i < positions.numel(); ++i) {
    for (const int64_t cut : {p[i], p[i] + 1}) {
      if (cut > cuts.back() && cut < length) {
        cuts.push_back(cut);
      }
    }
  }
  cuts.push_back(length);
  return cuts;
}

}  // namespace dilated_attention
