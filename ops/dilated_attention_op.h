// Internal entry points of the dilated_attention op family, shared by its registration files.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace dilated_attention {

// Typed dispatcher calls of the internal forward / backward ops (autograd calls these so that
// tracing sees dispatcher ops, not direct kernel calls).
std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale);

}  // namespace dilated_attention
