// The production op's safeguard: before every call's exchange, all ranks of the group compare what
// they were called with (a fingerprint gathered through rank 0: two small messages, microseconds
// next to the attention), and every rank raises the same clear error when they differ instead of
// exchanging mismatched buffers or hanging. A rank that never arrives is named in the timeout.
#pragma once

#include <ATen/core/Tensor.h>

#include "comm/communicator.h"
#include "ops/attention_args.h"

namespace dilated_attention {

void check_ranks_agree(comm::Communicator& comm, const at::Tensor& query,
                       const AttentionArgs& args);

}  // namespace dilated_attention
