// Checks and messages shared by the communicator backends. Private to comm/: not part of the API.
#pragma once

#include <chrono>
#include <exception>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace dilated_attention::comm::internal {

// Raises ValueError for a peer outside [0, size) or a non-contiguous / undefined tensor, so
// both backends reject the same misuse with the same words before anything is posted.
void check_transfers(const std::vector<Transfer>& sends, const std::vector<Transfer>& receives,
                     int rank, int size);

// Raises ValueError unless `output` is contiguous and shaped [size * input.size(0), ...] with
// input's dtype and device.
void check_all_gather(const at::Tensor& output, const at::Tensor& input, int size);

// The message of the exception in flight, without the C++ backtrace c10::Error appends.
std::string current_error_text(std::exception_ptr error);

// "rank 1 timed out after 5000 ms waiting to receive from rank 0 (group 'x'): ..." when the
// deadline passed, "rank 1 failed to receive from rank 0 (group 'x'): ..." otherwise; `what` is
// the action ("receive from rank 0"), `cause` the backend's own words (kept for debugging).
[[noreturn]] void raise_transfer_error(int rank, const std::string& group, const std::string& what,
                                       bool timed_out, std::chrono::milliseconds timeout,
                                       const std::string& cause);

}  // namespace dilated_attention::comm::internal
