// Moving tensors between ranks, and nothing else. One small interface with two
// implementations: a c10d ProcessGroup backend (gloo on CPU, NCCL on GPU; the engine users scale
// on with torchrun) and an in-process backend on threads, so C++ tests can run ring schedules
// without Python. The ops never see which one they talk to.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace dilated_attention::comm {

// One point-to-point transfer: send `tensor` to `peer`, or receive into `tensor` from `peer`.
// Tensors must be contiguous. A send and its matching receive use the same `tag`.
struct Transfer {
  int peer = 0;
  at::Tensor tensor;
  int tag = 0;
};

// Transfers posted together; wait() blocks until all of them completed, at most the
// communicator's timeout, and otherwise raises an error that names the peer that did not answer.
class PendingExchange {
 public:
  virtual ~PendingExchange() = default;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Posts one exchange step (sends and receives) and returns at once, so compute can overlap.
  virtual std::unique_ptr<PendingExchange> post_exchange(const std::vector<Transfer>& sends,
                                                         const std::vector<Transfer>& receives) = 0;

  // Legacy collective: output [size() * input.size(0), ...] receives every rank's `input` in rank
  // order. Blocking, bounded by the timeout. Checks its arguments; an empty input moves nothing
  // (the output is empty too), which backends would refuse.
  void all_gather(at::Tensor& output, const at::Tensor& input);

  // Where this group runs the ranks' small collective exchanges (the ops' agreement): CUDA for a
  // group that runs CUDA tensors on NCCL (which takes CUDA tensors only), none otherwise
  // (point-to-point on the CPU). A property of the group, so every rank chooses the
  // same transport whatever device its own tensors are on.
  virtual std::optional<c10::Device> collective_device() const { return std::nullopt; }

  // Bytes this rank sent (point-to-point payloads, and its input once per peer for all_gather)
  // since the last reset.
  int64_t bytes_sent() const { return bytes_sent_.load(); }
  void reset_bytes_sent() { bytes_sent_ = 0; }

  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 protected:
  void count_sent(int64_t bytes) { bytes_sent_ += bytes; }
  // all_gather with checked, non-empty tensors.
  virtual void gather_nonempty(at::Tensor& output, const at::Tensor& input) = 0;

 private:
  std::atomic<int64_t> bytes_sent_{0};
  std::chrono::milliseconds timeout_{default_timeout()};

 public:
  // DILATED_ATTENTION_COMM_TIMEOUT_S seconds, or 300 s when unset.
  static std::chrono::milliseconds default_timeout();
};

// The communicator of the process group registered under `group_name` (Python passes
// `group.group_name`); ranks are group-local. Raises ValueError for an unknown name. A new
// wrapper each call (byte counter at zero, timeout from the environment).
std::shared_ptr<Communicator> process_group_communicator(const std::string& group_name);

// `size` communicators that talk to each other through memory, one per thread of a test.
std::vector<std::shared_ptr<Communicator>> make_in_process_world(int size);

}  // namespace dilated_attention::comm
