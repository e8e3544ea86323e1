// Before its first transfer, every call of a distributed op (forward and backward) has all ranks
// of the group compare what they were called with: a small fixed-size fingerprint (backend,
// pass, shape, dtype, the arguments; lists as count and hash) gathered through rank 0, two
// small messages. When they differ every rank raises the same ValueError naming the first field
// that differs, instead of posting transfers whose sizes disagree (which aborts a gloo rank
// and corrupts the others' results). A rank whose own checks refused the call takes part too,
// with a refusal instead of a fingerprint: it raises its own error, and every other rank raises
// one naming it, so none waits for it. A rank that never arrives is named in the timeout.
#pragma once

#include <ATen/core/Tensor.h>

#include <exception>
#include <optional>

#include "comm/communicator.h"
#include "ops/attention_args.h"
#include "ops/named_op_table.h"

namespace dilated_attention {

enum class Pass { kForward, kBackward };

// `refusal`: the error this rank's own checks raised, or null (then the fingerprint is not read
// from query and key).
void check_ranks_agree(comm::Communicator& comm, const at::Tensor& query, const at::Tensor& key,
                       const std::optional<at::Tensor>& key_padding_mask, const AttentionArgs& args,
                       DistributedBackend backend, Pass pass, std::exception_ptr refusal = nullptr);

}  // namespace dilated_attention
