// Typed dispatcher calls of the internal distributed forward / backward ops.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace dilated_attention {

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend);

}  // namespace dilated_attention
