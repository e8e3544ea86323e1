// The engine of the sequence-sharded ops: this rank holds positions [rank * n, (rank + 1) * n)
// of q, k, v and computes the same rows of the output. Segments inside the shard are attended
// locally while the key/value transfers fly; segments that span shards are attended block by
// block (one block per owning rank) and merged by log-sum-exp. Backward walks the same plan
// and returns dK / dV of remote rows to their owners.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "comm/communicator.h"
#include "kernels/dilated_attention_kernel.h"
#include "ops/key_value_exchange.h"

namespace dilated_attention {

struct ShardedAttentionConfig {
  AttentionConfig attention;  // groups and scales of the whole op
  ShardLayout layout;         // N and P
  ExchangeKind exchange = ExchangeKind::kSegmentRing;
};

// key_padding_mask: this rank's rows [B, n] (True = padded key) or undefined; the ranks' masks
// are gathered once per call, since remote key blocks need their owners' flags. Returns
// (output [B, n, H, D], log-sum-exp [B, n, H]).
std::tuple<at::Tensor, at::Tensor> sharded_attention_forward(
    comm::Communicator& comm, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_padding_mask, const ShardedAttentionConfig& config);

std::tuple<at::Tensor, at::Tensor, at::Tensor> sharded_attention_backward(
    comm::Communicator& comm, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& key_padding_mask, const at::Tensor& out,
    const at::Tensor& lse, const ShardedAttentionConfig& config);

}  // namespace dilated_attention
