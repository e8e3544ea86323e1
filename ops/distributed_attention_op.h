// _distributed_dilated_attention: the one internal op family behind every distributed name
// (ops/named_op_table.h maps each name to a backend). The declarations below are the registered,
// device-generic kernels; their Meta kernels have the same types, and every dispatcher handle of
// the family is typed from these declarations.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>

#include "ops/attention_args.h"

namespace dilated_attention {

// _distributed_dilated_attention(Tensor query, Tensor key, Tensor value, <shared args>,
//     str group_name="", str backend="segment_ring", Tensor? key_padding_mask=None) -> Tensor
at::Tensor distributed_attention_op(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                    c10::string_view group_name, c10::string_view backend,
                                    const std::optional<at::Tensor>& key_padding_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> distributed_attention_forward_op(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name, c10::string_view backend,
    const std::optional<at::Tensor>& key_padding_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> distributed_attention_backward_op(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name,
    c10::string_view backend, const std::optional<at::Tensor>& key_padding_mask);

// Where a distributed call runs: the process group and the schedule.
struct DistributedTarget {
  std::string group_name;
  std::string backend;
};

// For ops that call this family after checks of their own (the multi-head ops' projections):
// runs `checks`, and when they raise, this rank still takes part in the ranks' agreement with the
// refusal, as the family's own checks do, so its peers raise naming it instead of waiting; then
// the error is raised here. While tracing (fake tensors) nothing is exchanged.
void check_before_distributed_call(const at::Tensor& input, const AttentionArgs& args,
                                   const DistributedTarget& target,
                                   const std::function<void()>& checks);

// Dispatcher calls of the family's ops.
at::Tensor call_distributed_attention(const at::Tensor& query, const at::Tensor& key,
                                      const at::Tensor& value, const AttentionArgs& args,
                                      const DistributedTarget& target,
                                      const std::optional<at::Tensor>& key_padding_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const AttentionArgs& args, const DistributedTarget& target,
    const std::optional<at::Tensor>& key_padding_mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const AttentionArgs& args, const DistributedTarget& target,
    const std::optional<at::Tensor>& key_padding_mask);

}  // namespace dilated_attention
