// Checks of the distributed ops: the core checks against the whole sequence (N = rows per rank *
// world size for sharded contracts), plus what the backend's partition of the work needs.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/attention_args.h"
#include "ops/named_op_table.h"

namespace dilated_attention {

// Head-parallel ops split the key/value heads with the query heads: H_kv must divide by the
// world size too, so that each rank's query heads read only its own key/value heads.
void check_distributed_layout(const at::Tensor& query, const at::Tensor& key,
                              const AttentionArgs& args, int world_size,
                              DistributedBackend backend);

}  // namespace dilated_attention
