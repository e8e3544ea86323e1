// The in-process backend: ranks are threads of one process that share a mailbox. It exists so C++
// tests can run ring schedules (and their failure modes) without Python or sockets.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "comm/communicator.h"
#include "comm/internal.h"

namespace dilated_attention::comm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// all_gather traffic lives on its own channel so it can never be matched by a user's receive
// that happens to use the same tag.
enum class Channel { kPointToPoint, kAllGather };

// Messages in flight, keyed by (src, dst, tag, channel). Each queue is FIFO, like MPI and c10d:
// two sends with the same key arrive in the order they were posted.
class Mailbox {
 public:
  using Key = std::tuple<int, int, int, Channel>;

  void put(const Key& key, at::Tensor tensor) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queues_[key].push_back(std::move(tensor));
    }
    // notify_all: waiters of different keys share the one condition variable.
    arrived_.notify_all();
  }

  // The oldest message for `key`, or an undefined tensor if none came before `deadline`.
  at::Tensor take(const Key& key, Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto ready = [&] {
      auto it = queues_.find(key);
      return it != queues_.end() && !it->second.empty();
    };
    if (!arrived_.wait_until(lock, deadline, ready)) return {};
    auto it = queues_.find(key);
    at::Tensor tensor = std::move(it->second.front());
    it->second.pop_front();
    if (it->second.empty()) queues_.erase(it);
    return tensor;
  }

 private:
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::map<Key, std::deque<at::Tensor>> queues_;
};

const std::string kGroupName = "in_process";

// Receives `into` from `src` on `key` before `deadline`, or raises naming the peer.
void receive(Mailbox& mailbox, const Mailbox::Key& key, at::Tensor into, int rank,
             Clock::time_point deadline, milliseconds timeout) {
  const int src = std::get<0>(key);
  const std::string what = "receive from rank " + std::to_string(src);
  at::Tensor message = mailbox.take(key, deadline);
  if (!message.defined()) {
    internal::raise_transfer_error(rank, kGroupName, what, /*timed_out=*/true, timeout,
                                   "no message with tag " + std::to_string(std::get<2>(key)));
  }
  // A real backend would corrupt memory or hang on a mismatch; say exactly what differed.
  TORCH_CHECK(message.sizes() == into.sizes() && message.scalar_type() == into.scalar_type(),
              "rank ", rank, " failed to ", what, " (group '", kGroupName, "'): got ",
              message.scalar_type(), message.sizes(), " for a receive of ", into.scalar_type(),
              into.sizes(), " (tag ", std::get<2>(key), ")");
  into.copy_(message);
}

class InProcessExchange final : public PendingExchange {
 public:
  InProcessExchange(std::shared_ptr<Mailbox> mailbox, int rank, std::vector<Transfer> receives,
                    milliseconds timeout)
      : mailbox_(std::move(mailbox)),
        rank_(rank),
        receives_(std::move(receives)),
        timeout_(timeout) {}

  // The timeout is the one in force when the step was posted.
  void wait() override {
    // Sends were delivered at post time; only the receives can still be outstanding. They are
    // dropped before waiting, so a second wait() after an error does not consume messages.
    std::vector<Transfer> receives = std::move(receives_);
    receives_.clear();
    const auto deadline = Clock::now() + timeout_;
    for (const Transfer& t : receives) {
      receive(*mailbox_, {t.peer, rank_, t.tag, Channel::kPointToPoint}, t.tensor, rank_, deadline,
              timeout_);
    }
  }

 private:
  std::shared_ptr<Mailbox> mailbox_;
  int rank_;
  std::vector<Transfer> receives_;
  milliseconds timeout_;
};

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<Mailbox> mailbox, int rank, int size)
      : mailbox_(std::move(mailbox)), rank_(rank), size_(size) {}

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  std::unique_ptr<PendingExchange> post_exchange(const std::vector<Transfer>& sends,
                                                 const std::vector<Transfer>& receives) override {
    internal::check_transfers(sends, receives, rank_, size_);
    for (const Transfer& t : sends) {
      // Clone now: the caller may overwrite its buffer as soon as the next step begins, and a
      // real backend's send would already have captured the bytes by the time wait() returns.
      mailbox_->put({rank_, t.peer, t.tag, Channel::kPointToPoint}, t.tensor.clone());
      count_sent(static_cast<int64_t>(t.tensor.nbytes()));
    }
    return std::make_unique<InProcessExchange>(mailbox_, rank_, receives, timeout());
  }

  void gather_nonempty(at::Tensor& output, const at::Tensor& input) override {
    for (int peer = 0; peer < size_; ++peer) {
      if (peer != rank_) mailbox_->put({rank_, peer, 0, Channel::kAllGather}, input.clone());
    }
    count_sent(static_cast<int64_t>(input.nbytes()) * (size_ - 1));
    const auto deadline = Clock::now() + timeout();
    const int64_t rows = input.size(0);
    // Collect in rank order, so the result does not depend on thread timing.
    for (int peer = 0; peer < size_; ++peer) {
      at::Tensor chunk = output.narrow(0, peer * rows, rows);
      if (peer == rank_) {
        chunk.copy_(input);
      } else {
        receive(*mailbox_, {peer, rank_, 0, Channel::kAllGather}, chunk, rank_, deadline,
                timeout());
      }
    }
  }

 private:
  std::shared_ptr<Mailbox> mailbox_;
  int rank_;
  int size_;
};

}  // namespace

std::vector<std::shared_ptr<Communicator>> make_in_process_world(int size) {
  TORCH_CHECK_VALUE(size >= 1, "make_in_process_world: size must be at least 1, got ", size);
  auto mailbox = std::make_shared<Mailbox>();
  std::vector<std::shared_ptr<Communicator>> world;
  world.reserve(static_cast<size_t>(size));
  for (int rank = 0; rank < size; ++rank) {
    world.push_back(std::make_shared<InProcessCommunicator>(mailbox, rank, size));
  }
  return world;
}

}  // namespace dilated_attention::comm
