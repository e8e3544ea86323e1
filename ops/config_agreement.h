// The production op's safeguard: before a group first runs a configuration, all its ranks
// compare what they were called with, and every rank raises the same clear error when they differ
// (instead of exchanging mismatched buffers, or hanging).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "comm/communicator.h"

namespace dilated_attention {

void check_ranks_agree(comm::Communicator& comm, const std::string& group_name,
                       const at::Tensor& query,
                       at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                       double dropout_p, bool is_causal, std::optional<double> scale);

}  // namespace dilated_attention
