// Independent float64 reference for dilated attention, written straight from the math with
// explicit index sets and explicit masks (it does not use kernels/dilation_plan). Built from
// differentiable ATen ops, so autograd through it gives reference gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace reference {

at::Tensor dilated_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const std::vector<int64_t>& segment_lengths,
                             const std::vector<int64_t>& dilation_rates, bool is_causal,
                             std::optional<double> scale);

}  // namespace reference
