#include "comm/communicator.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdlib>

#include "comm/internal.h"

namespace dilated_attention::comm {

std::chrono::milliseconds Communicator::default_timeout() {
  constexpr const char* kVariable = "DILATED_ATTENTION_COMM_TIMEOUT_S";
  const char* text = std::getenv(kVariable);
  if (text == nullptr || *text == '\0') return std::chrono::seconds(300);
  // Fractional seconds are accepted so tests and CI can ask for sub-second timeouts.
  char* end = nullptr;
  const double seconds = std::strtod(text, &end);
  // A typo here would otherwise silently mean "wait forever" or "fail at once": refuse it.
  TORCH_CHECK_VALUE(end != text && *end == '\0' && std::isfinite(seconds) && seconds > 0.0,
                    kVariable, "='", text, "' is not a positive number of seconds");
  // Deadlines are now() + timeout on a nanosecond clock, which overflows near 9.2e9 s: a longer
  // wait would expire at once. A year is far beyond any transfer and far from the overflow.
  constexpr double kLongestSeconds = 365.0 * 24 * 3600;
  TORCH_CHECK_VALUE(seconds <= kLongestSeconds, kVariable, "='", text,
                    "' is longer than the longest timeout, ", static_cast<int64_t>(kLongestSeconds),
                    " seconds (one year)");
  // Round up so that a tiny positive value never becomes 0 ms, which c10d reads as "no timeout".
  return std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000.0)));
}

void Communicator::all_gather(at::Tensor& output, const at::Tensor& input) {
  internal::check_all_gather(output, input, size());
  if (input.numel() > 0) gather_nonempty(output, input);
}

namespace internal {
namespace {
void check_list(const std::vector<Transfer>& transfers, const char* kind, int rank, int size) {
  for (const Transfer& t : transfers) {
    TORCH_CHECK_VALUE(t.peer >= 0 && t.peer < size, "rank ", rank, ": ", kind, " peer ", t.peer,
                      " is outside the group of size ", size);
    TORCH_CHECK_VALUE(t.tensor.defined(), "rank ", rank, ": ", kind, " tensor for peer ", t.peer,
                      " is undefined");
    // Backends move raw memory: a strided view would be sent or filled in the wrong order.
    TORCH_CHECK_VALUE(t.tensor.is_contiguous(), "rank ", rank, ": ", kind, " tensor for peer ",
                      t.peer, " must be contiguous");
  }
}
}  // namespace

void check_transfers(const std::vector<Transfer>& sends, const std::vector<Transfer>& receives,
                     int rank, int size) {
  check_list(sends, "send", rank, size);
  check_list(receives, "receive", rank, size);
}

void check_all_gather(const at::Tensor& output, const at::Tensor& input, int size) {
  TORCH_CHECK_VALUE(input.defined() && output.defined(), "all_gather: tensors must be defined");
  TORCH_CHECK_VALUE(input.dim() >= 1, "all_gather: input must have at least one dimension");
  TORCH_CHECK_VALUE(input.is_contiguous() && output.is_contiguous(),
                    "all_gather: input and output must be contiguous");
  TORCH_CHECK_VALUE(
      output.scalar_type() == input.scalar_type() && output.device() == input.device(),
      "all_gather: output must have the input's dtype and device");
  auto expected = input.sizes().vec();
  expected[0] *= size;
  TORCH_CHECK_VALUE(output.sizes().vec() == expected, "all_gather: output has shape ",
                    output.sizes(), " but ", size, " ranks of input ", input.sizes(), " need ",
                    at::IntArrayRef(expected));
}

std::string current_error_text(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown error";
  }
}

void raise_transfer_error(int rank, const std::string& group, const std::string& what,
                          bool timed_out, std::chrono::milliseconds timeout,
                          const std::string& cause) {
  if (timed_out) {
    TORCH_CHECK(false, "rank ", rank, " timed out after ", timeout.count(), " ms waiting to ", what,
                " (group '", group, "'): the peer did not answer", cause.empty() ? "" : " (", cause,
                cause.empty() ? "" : ")");
  }
  TORCH_CHECK(false, "rank ", rank, " failed to ", what, " (group '", group, "'): ", cause);
}

}  // namespace internal
}  // namespace dilated_attention::comm
