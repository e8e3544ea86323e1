// Dilated attention on the CPU: every head group runs as one batched attention call over
// zero-copy strided views (ATen's CPU flash kernel; our dropout kernel when dropout_p > 0), and
// its result lands in its strided place in the output with the 1/G scale.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "kernels/dilation_plan.h"

namespace dilated_attention {

struct AttentionConfig {
  std::vector<HeadGroup> groups;
  double scale = 1.0;  // already resolved (1/sqrt(D) unless given)
  bool is_causal = false;
  double dropout_p = 0.0;
  uint64_t dropout_seed = 0;
};

// q, k, v: [B, N, H, D]. Returns (output [B, N, H, D], log-sum-exp [B, N, H] in the
// accumulation dtype; entries of positions a head does not attend are 0 and never read).
std::tuple<at::Tensor, at::Tensor> dilated_attention_forward_cpu(const at::Tensor& q,
                                                                 const at::Tensor& k,
                                                                 const at::Tensor& v,
                                                                 const AttentionConfig& config);

// Gradients with respect to q, k, v given the forward's output and log-sum-exp.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const AttentionConfig& config);

}  // namespace dilated_attention
