// Turning op arguments into the kernels' AttentionConfig, and the dropout seed that the forward
// draws and hands to backward in a small rng_state tensor. Shared by every op family.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "kernels/dilated_attention_kernel.h"

namespace dilated_attention {

constexpr int64_t kRngStateSize = 2;  // (seed, offset)

// Groups for `num_heads` heads, resolved scale, 1/G output scale.
AttentionConfig make_attention_config(int64_t num_heads, int64_t head_dim,
                                      at::IntArrayRef segment_lengths,
                                      at::IntArrayRef dilation_rates, double dropout_p,
                                      bool is_causal, std::optional<double> scale,
                                      uint64_t dropout_seed);

// A seed from torch's default CPU generator when dropout_p > 0 (so torch.manual_seed makes
// dropout repeatable), 0 otherwise.
uint64_t draw_dropout_seed(double dropout_p);

at::Tensor pack_rng_state(uint64_t seed, const at::TensorOptions& options);
uint64_t unpack_dropout_seed(const at::Tensor& rng_state);

}  // namespace dilated_attention
