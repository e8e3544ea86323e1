#include "ops/validate_distributed.h"

#include <c10/util/Exception.h>

#include "ops/validate_attention.h"

namespace dilated_attention {

void check_distributed_layout(const at::Tensor& query, const at::Tensor& key,
                              const AttentionArgs& args, int world_size,
                              DistributedBackend backend) {
  const bool sharded = info_of(backend).contract == Contract::kSharded;
  const bool splits_heads = backend == DistributedBackend::kReplicatedHeads;
  const auto seq_len = sharded ? query.sym_size(1) * world_size : query.sym_size(1);
  // LongNet's branches take any sequence length and any number of heads (the last segment of a
  // branch ends at N); the head-split groups need whole segments and a head per group.
  if (backend != DistributedBackend::kLongNetSegmentRing) {
    check_sequence_layout(seq_len, query.sym_size(2), args);
  }
  if (!sharded && !splits_heads) {
    TORCH_CHECK_VALUE(seq_len % world_size == 0, "Sequence length (", seq_len,
                      ") must be divisible by the world size (", world_size, ")");
  }
  if (splits_heads) {
    TORCH_CHECK_VALUE(query.sym_size(2) % world_size == 0, "num_heads (", query.sym_size(2),
                      ") must be divisible by the world size (", world_size,
                      ") for head-parallel attention");
    TORCH_CHECK_VALUE(key.sym_size(2) % world_size == 0, "the number of key/value heads (",
                      key.sym_size(2), ") must be divisible by the world size (", world_size,
                      ") for head-parallel attention, so that each rank's query heads read its "
                      "own key/value heads");
  }
}

}  // namespace dilated_attention
