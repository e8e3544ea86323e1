// The c10d backend: point-to-point send/recv and allgather on a registered ProcessGroup (gloo on
// CPU, NCCL on GPU). Links against libtorch_cpu only; nothing here needs Python.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#include <tuple>
#include <utility>

#include "comm/communicator.h"
#include "comm/internal.h"

namespace dilated_attention::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// One c10d Work and what it stands for, so a failure can name the peer that did not answer.
struct PostedWork {
  c10::intrusive_ptr<c10d::Work> work;
  std::string what;  // "receive from rank 0"
  // NCCL works on CUDA tensors: wait() without a timeout only orders the current stream after
  // the communication (the CPU queues on). With a timeout NCCL blocks the CPU thread polling
  // for completion, which kills the overlap of transfers and attention, and aborts the
  // communicator when it expires; the process group's own timeout bounds them instead.
  bool stream_ordered = false;
};

bool mentions_timeout(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text.find("timed out") != std::string::npos || text.find("timeout") != std::string::npos;
}

// Waits for all works against one deadline (the timeout bounds the whole step, not each work).
void wait_all(const std::vector<PostedWork>& works, int rank, const std::string& group,
              milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (const PostedWork& posted : works) {
    // c10d reads 0 ms as "wait forever", so a spent budget still passes 1 ms.
    const auto left = std::max(milliseconds(1),
                               std::chrono::duration_cast<milliseconds>(deadline - Clock::now()));
    bool completed = false;
    std::string cause;
    try {
      completed = posted.stream_ordered ? posted.work->wait() : posted.work->wait(left);
    } catch (...) {
      cause = internal::current_error_text(std::current_exception());
    }
    if (completed && cause.empty()) continue;
    if (cause.empty()) cause = "the work was aborted";
    // Backends word their timeouts differently, and gloo's own deadline may fire a moment
    // before ours, so the clock decides with a little slack, and the backend's words count too.
    const bool timed_out = Clock::now() + milliseconds(20) >= deadline || mentions_timeout(cause);
    internal::raise_transfer_error(rank, group, posted.what, timed_out, timeout, cause);
  }
}

class ProcessGroupExchange final : public PendingExchange {
 public:
  ProcessGroupExchange(std::vector<PostedWork> works, int rank, std::string group,
                       milliseconds timeout)
      : works_(std::move(works)), rank_(rank), group_(std::move(group)), timeout_(timeout) {}

  // The timeout is the one in force when the step was posted.
  void wait() override {
    // Drop the works even when waiting raises, so a second wait() does not wait again.
    std::vector<PostedWork> works = std::move(works_);
    works_.clear();
    wait_all(works, rank_, group_, timeout_);
  }

 private:
  std::vector<PostedWork> works_;
  int rank_;
  std::string group_;
  milliseconds timeout_;
};

bool all_cuda(const std::vector<Transfer>& sends, const std::vector<Transfer>& receives) {
  if (sends.empty() && receives.empty()) return false;
  const auto is_cuda = [](const Transfer& t) { return t.tensor.is_cuda(); };
  return std::all_of(sends.begin(), sends.end(), is_cuda) &&
         std::all_of(receives.begin(), receives.end(), is_cuda);
}

// Whether the group runs CUDA tensors on NCCL: the device types that setBackend() registered,
// through getDeviceTypes(), which torch 2.11, 2.13 and 2.14 all have (hasBackendForDeviceType()
// reads the same registration but is missing from torch 2.11), and that backend's name. A gloo
// group registers itself for CUDA too (gloo takes CUDA tensors), so the device type alone does
// not tell.
bool runs_cuda_on_nccl(c10d::ProcessGroup& group) {
  const std::vector<c10::Device> devices = group.getDeviceTypes();
  const bool has_cuda = std::any_of(devices.begin(), devices.end(), [](const c10::Device& d) {
    return d.type() == c10::DeviceType::CUDA;
  });
  return has_cuda && group.getBackend(c10::DeviceType::CUDA)->getBackendName() == "nccl";
}

std::string peers_of(const std::vector<Transfer>& transfers) {
  std::string out;
  for (const Transfer& t : transfers) {
    if (!out.empty()) out += ',';
    out += std::to_string(t.peer);
  }
  return out.empty() ? "none" : out;
}

class ProcessGroupCommunicator final : public Communicator {
 public:
  ProcessGroupCommunicator(c10::intrusive_ptr<c10d::ProcessGroup> group, std::string name)
      : group_(std::move(group)), name_(std::move(name)) {}

  const c10::intrusive_ptr<c10d::ProcessGroup>& group() const { return group_; }
  int rank() const override { return group_->getRank(); }
  int size() const override { return group_->getSize(); }

  std::optional<c10::Device> collective_device() const override {
    if (!runs_cuda_on_nccl(*group_)) return std::nullopt;
    // The current CUDA device, through the device guard torch_cuda registers (this file links
    // libtorch_cpu only).
    return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getDevice();
  }

  std::unique_ptr<PendingExchange> post_exchange(const std::vector<Transfer>& sends,
                                                 const std::vector<Transfer>& receives) override {
    internal::check_transfers(sends, receives, rank(), size());
    // NCCL runs the sends and receives of one step as a single group call (no deadlock when
    // every rank sends first); gloo has no coalescing and posts them independently anyway.
    const bool on_nccl = all_cuda(sends, receives) && runs_cuda_on_nccl(*group_);
    const bool coalesce =
        on_nccl && group_->getBackend(c10::DeviceType::CUDA)->supportsCoalescing();
    if (coalesce) group_->startCoalescing(c10::DeviceType::CUDA);
    std::vector<PostedWork> works;
    int64_t bytes = 0;
    std::string posting;  // the transfer being posted, for the error if posting fails
    try {
      for (const Transfer& t : sends) {
        std::vector<at::Tensor> tensors{t.tensor};
        posting = "send to rank " + std::to_string(t.peer);
        works.push_back({group_->send(tensors, t.peer, t.tag), posting, on_nccl});
        bytes += static_cast<int64_t>(t.tensor.nbytes());
      }
      for (const Transfer& t : receives) {
        std::vector<at::Tensor> tensors{t.tensor};
        posting = "receive from rank " + std::to_string(t.peer);
        works.push_back({group_->recv(tensors, t.peer, t.tag), posting, on_nccl});
      }
    } catch (...) {
      const std::string cause = internal::current_error_text(std::current_exception());
      // Never leave the group in coalescing mode: every later operation would join this block.
      if (coalesce) {
        try {
          group_->endCoalescing(c10::DeviceType::CUDA);
        } catch (...) {
        }
      }
      // A peer that is gone fails the post itself (gloo: "Connection closed by peer"): name it.
      internal::raise_transfer_error(rank(), name_, posting, false, timeout(), cause);
    }
    if (coalesce) {
      auto work = group_->endCoalescing(c10::DeviceType::CUDA);
      works.push_back({work,
                       "complete the coalesced exchange (send to ranks " + peers_of(sends) +
                           "; receive from ranks " + peers_of(receives) + ")",
                       on_nccl});
    }
    // Inside a coalescing block NCCL returns no per-transfer work; the block's work covers them.
    works.erase(
        std::remove_if(works.begin(), works.end(), [](const PostedWork& w) { return !w.work; }),
        works.end());
    count_sent(bytes);
    return std::make_unique<ProcessGroupExchange>(std::move(works), rank(), name_, timeout());
  }

  void gather_nonempty(at::Tensor& output, const at::Tensor& input) override {
    // The single-tensor all_gather (all_gather_into_tensor): c10d writes the contiguous output
    // directly. With a list of outputs ProcessGroupNCCL gathers into a flat buffer and copies
    // back. Through the dispatcher op, which torch 2.11 to 2.14 all register under this name.
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("c10d::_allgather_base_", "")
                         .typed<std::tuple<at::Tensor, c10::intrusive_ptr<c10d::Work>>(
                             at::Tensor&, at::Tensor&,
                             const c10::intrusive_ptr<c10d::ProcessGroup>&, bool, int64_t)>();
    at::Tensor in = input;  // checked contiguous; the op takes a mutable reference
    const std::string what = "all_gather with " + std::to_string(size()) + " ranks";
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = std::get<1>(op.call(output, in, group_, /*async_op=*/true, timeout().count()));
    } catch (...) {
      internal::raise_transfer_error(rank(), name_, what, false, timeout(),
                                     internal::current_error_text(std::current_exception()));
    }
    count_sent(static_cast<int64_t>(input.nbytes()) * (size() - 1));
    const bool on_nccl = input.is_cuda() && runs_cuda_on_nccl(*group_);
    wait_all({{work, what, on_nccl}}, rank(), name_, timeout());
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  std::string name_;
};

}  // namespace

std::shared_ptr<Communicator> process_group_communicator(const std::string& group_name) {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  try {
    group = c10d::resolve_process_group(group_name);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, "group_name '", group_name,
                      "' is not a registered process group; pass group.group_name of an "
                      "initialised torch.distributed group (",
                      e.what_without_backtrace(), ")");
  }
  TORCH_CHECK_VALUE(group, "group_name '", group_name, "' resolved to no process group");

  // A fresh wrapper per call, no cache: holding the group beyond the call would keep a
  // destroyed group (and its threads) alive until static destruction at exit.
  return std::make_shared<ProcessGroupCommunicator>(std::move(group), group_name);
}

}  // namespace dilated_attention::comm
