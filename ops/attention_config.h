// Turning the shared arguments into the kernels' AttentionConfig, and the dropout seed that the
// forward draws and hands to backward in a small rng_state tensor. Shared by every op family.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/dilated_attention_kernel.h"
#include "ops/attention_args.h"

namespace dilated_attention {

constexpr int64_t kRngStateSize = 2;  // (seed, offset)

// Groups for `num_heads` query heads reading `num_key_value_heads` key/value heads (validated:
// a divisor of num_heads), resolved scale (1/sqrt(head_dim) unless given), 1/G output scale.
AttentionConfig make_attention_config(int64_t num_heads, int64_t num_key_value_heads,
                                      int64_t head_dim, const AttentionArgs& args,
                                      uint64_t dropout_seed);

// The same for longnet_attention over `seq_len` positions: every head in every branch
// (make_longnet_groups), no output scale.
AttentionConfig make_longnet_config(int64_t num_heads, int64_t num_key_value_heads,
                                    int64_t head_dim, int64_t seq_len, const AttentionArgs& args,
                                    uint64_t dropout_seed);

// A seed from torch's default CPU generator when dropout is on (so torch.manual_seed makes
// dropout repeatable), 0 otherwise.
uint64_t draw_dropout_seed(const AttentionArgs& args);

// The rng_state tensor lives on the inputs' device. Without dropout it is zeros made there and
// never read back, so calls without dropout make no host <-> device copy (no sync, and CUDA
// graph capture works); with dropout the seed is one host value.
at::Tensor pack_rng_state(uint64_t seed, const AttentionArgs& args,
                          const at::TensorOptions& options);
uint64_t unpack_dropout_seed(const at::Tensor& rng_state, const AttentionArgs& args);

}  // namespace dilated_attention
