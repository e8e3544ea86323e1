// Checks of the multi-head wrappers' tensors, before any projection runs: inputs [B, N, E_in],
// projection weights [E_out, E_in] with biases [E_out] (or none), all of the query's dtype and
// device, and head counts that split the projected features. Each raises ValueError naming the
// argument (users' tests match "Expected 3D tensors" and "embedding dimension").
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "ops/multihead_attention.h"

namespace dilated_attention {

// query / key / value and the four projections of _multihead_dilated_attention.
void check_projected_call(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const Projections& projections, int64_t num_heads);

// x and the fused [3E, E] projection and [E, E] output projection of the fused self-attention.
void check_fused_self_attention_call(const at::Tensor& x, const at::Tensor& qkv_weight,
                                     const std::optional<at::Tensor>& qkv_bias,
                                     const at::Tensor& out_weight,
                                     const std::optional<at::Tensor>& out_bias, int64_t num_heads);

}  // namespace dilated_attention
