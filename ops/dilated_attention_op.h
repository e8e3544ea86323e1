// The dilated_attention op family: the public op and its internal forward / backward ops. The
// declarations below are the registered, device-generic kernels; their Meta kernels have the
// same types, and every dispatcher handle of the family is typed from these declarations.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "ops/attention_args.h"

namespace dilated_attention {

// dilated_attention(Tensor query, Tensor key, Tensor value, <shared args>,
//                   Tensor? key_padding_mask=None) -> Tensor
at::Tensor dilated_attention_op(const at::Tensor& query, const at::Tensor& key,
                                const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                const std::optional<at::Tensor>& key_padding_mask);

// _dilated_attention_forward(...) -> (Tensor output, Tensor softmax_lse, Tensor rng_state)
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_forward_op(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    DILATED_ATTENTION_ARGS_PARAMS, const std::optional<at::Tensor>& key_padding_mask);

// _dilated_attention_backward(...) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_backward_op(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, DILATED_ATTENTION_ARGS_PARAMS,
    const std::optional<at::Tensor>& key_padding_mask);

// Dispatcher calls of the internal ops (autograd calls these, so tracing sees dispatcher ops).
std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const AttentionArgs& args, const std::optional<at::Tensor>& key_padding_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_dilated_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const AttentionArgs& args,
    const std::optional<at::Tensor>& key_padding_mask);

}  // namespace dilated_attention
