// Checks of the distributed ops: the core checks against the whole sequence (N = rows per rank *
// world size for sharded contracts), plus what the backend's partition of the work needs.
#pragma once

#include <ATen/core/Tensor.h>

#include "ops/attention_args.h"
#include "ops/named_op_table.h"

namespace dilated_attention {

void check_distributed_layout(const at::Tensor& query, const AttentionArgs& args, int world_size,
                              DistributedBackend backend);

}  // namespace dilated_attention
