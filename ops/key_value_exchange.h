// How the sharded ops obtain the remote key/value rows their queries need, and how the gradients
// of those rows go back to their owners. Three schedules, one interface:
//   segment ring (recommended): direct isend/irecv of only the dilated rows of segments that span
//     shards, at most two steps in flight (double buffered); nothing at all when every segment is
//     local.
//   full ring: every rank's whole K/V shard travels around the ring over P - 1 steps.
//   all_gather (legacy): K and V gathered on every rank; gradients gathered back in full.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "kernels/index/ring_plan.h"

namespace dilated_attention {

enum class ExchangeKind { kSegmentRing, kFullRing, kAllGather };

// Key/value blocks owned by one rank, in blocks_needed(this rank, owner) order.
struct RemoteBlocks {
  int owner = 0;
  std::vector<BlockRef> blocks;
  std::vector<at::Tensor> keys, values;  // [B, h_kv_g, rows, D] each
};

// Gradients this rank computed for another rank's key/value rows.
struct RemoteGrads {
  std::vector<BlockRef> blocks;
  std::vector<at::Tensor> grad_keys, grad_values;  // [B, h_kv_g, rows, D] each
};

struct ExchangeContext {
  comm::Communicator& comm;
  // The groups over the key/value tensors' heads (key_value_groups of the op's groups): only the
  // H_kv shared heads travel, never a copy per query head.
  const std::vector<HeadGroup>& groups;
  ShardLayout layout;
  bool is_causal = false;
};

// Delivers remote key/value blocks owner by owner while later transfers are in flight.
class KeyValueStream {
 public:
  virtual ~KeyValueStream() = default;
  // Blocks of the next owner with anything to deliver; false when all were delivered.
  virtual bool next(RemoteBlocks& blocks) = 0;
};

// Starts the transfers of `kind` for this rank's shard k, v ([B, n, H, D], contiguous).
std::unique_ptr<KeyValueStream> open_key_value_stream(ExchangeKind kind, const ExchangeContext& ctx,
                                                      const at::Tensor& k, const at::Tensor& v);

// grads_by_owner[r]: what this rank computed for rank r's rows. Sends them to their owners and
// adds what the other ranks computed for this rank's rows into grad_k / grad_v ([B, n, H, D]).
void return_key_value_grads(ExchangeKind kind, const ExchangeContext& ctx,
                            const std::vector<RemoteGrads>& grads_by_owner, at::Tensor& grad_k,
                            at::Tensor& grad_v);

}  // namespace dilated_attention
