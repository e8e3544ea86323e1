// Checks of dilated_attention_varlen's own arguments: cu_seqlens and max_seqlen. Each raises
// ValueError naming the argument and the expected value, before any work.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "ops/attention_args.h"

namespace dilated_attention {

// cu_seqlens: int32 or int64, 1-D [S + 1], on the query's device; on real tensors its values
// too (they are read on the host: a sync on CUDA): 0 first, non-decreasing, T = query.size(0)
// last, and no sequence longer than max_seqlen.
void check_varlen_call(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       const at::Tensor& cu_seqlens, int64_t max_seqlen, const AttentionArgs& args);

// Whether t holds values the checks can read: not a Meta or fake (torch.compile) tensor.
bool has_readable_values(const at::Tensor& t);

// The values of an integer tensor, on the host (a sync on CUDA).
std::vector<int64_t> host_values(const at::Tensor& t);

// The offsets of a checked cu_seqlens, on the host.
std::vector<int64_t> sequence_starts(const at::Tensor& cu_seqlens);

}  // namespace dilated_attention
