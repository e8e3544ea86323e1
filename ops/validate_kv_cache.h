// Checks of dilated_attention_with_kv_cache's arguments. Each raises ValueError naming the
// argument and the expected value, before any work.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "ops/attention_args.h"

namespace dilated_attention {

// query [B, Nq, H, D], key / value [B, Nk, H_kv, D] (Nq <= Nk, H_kv dividing H); the shared
// arguments (is_causal true, no dropout); without longnet, every group's offset inside its
// segment and H >= G; key_padding_mask bool [B, Nk]; sequence_starts int32 / int64 [B] on the
// query's device, on real tensors its values too (read on the host: a sync on CUDA), in [0, Nk].
void check_kv_cache_call(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const AttentionArgs& args,
                         const std::optional<at::Tensor>& key_padding_mask,
                         const std::optional<at::Tensor>& sequence_starts, bool longnet);

// Where each batch row's sequence starts, on the host: sequence_starts' values, or zeros.
std::vector<int64_t> cache_sequence_starts(const std::optional<at::Tensor>& sequence_starts,
                                           int64_t batch);

}  // namespace dilated_attention
