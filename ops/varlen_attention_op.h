// dilated_attention_varlen: packed variable-length sequences (flash-attn's layout), the public op
// and its internal forward / backward ops. The declarations below are the registered,
// device-generic kernels; their Meta kernels have the same types, and every dispatcher handle
// of the family is typed from these declarations.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

#include "ops/attention_args.h"

namespace dilated_attention {

// dilated_attention_varlen(Tensor query, Tensor key, Tensor value, Tensor cu_seqlens,
//     int max_seqlen, <shared args>) -> Tensor
at::Tensor varlen_attention_op(const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const at::Tensor& cu_seqlens,
                               int64_t max_seqlen, DILATED_ATTENTION_ARGS_PARAMS);

// _dilated_attention_varlen_forward(...) -> (Tensor output, Tensor softmax_lse, Tensor rng_state)
std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_forward_op(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& cu_seqlens, int64_t max_seqlen, DILATED_ATTENTION_ARGS_PARAMS);

// _dilated_attention_varlen_backward(...) -> (Tensor grad_query, Tensor grad_key,
//     Tensor grad_value)
std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_op(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    DILATED_ATTENTION_ARGS_PARAMS);

// Dispatcher calls of the internal ops (autograd calls these, so tracing sees dispatcher ops).
std::tuple<at::Tensor, at::Tensor, at::Tensor> call_varlen_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& cu_seqlens, int64_t max_seqlen, const AttentionArgs& args);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_varlen_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    const AttentionArgs& args);

}  // namespace dilated_attention
