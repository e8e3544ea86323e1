#include "ops/distributed_context.h"

#include <torch/library.h>

#include <atomic>

namespace dilated_attention {
namespace {
std::atomic<int64_t> last_call_bytes{0};
}  // namespace

bool is_sharded(DistributedBackend backend) {
  return info_of(backend).contract == Contract::kSharded;
}

ExchangeKind exchange_of(DistributedBackend backend) {
  switch (backend) {
    case DistributedBackend::kFullRing:
      return ExchangeKind::kFullRing;
    case DistributedBackend::kAllGather:
    case DistributedBackend::kReplicatedRows:
      return ExchangeKind::kAllGather;
    default:
      return ExchangeKind::kSegmentRing;
  }
}

std::shared_ptr<comm::Communicator> communicator_for(const std::string& group_name) {
  if (group_name.empty()) {
    thread_local auto single = comm::make_in_process_world(1).front();
    return single;
  }
  return comm::process_group_communicator(group_name);
}

void record_bytes_sent(int64_t bytes) { last_call_bytes = bytes; }
int64_t bytes_sent_by_last_call() { return last_call_bytes.load(); }

}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  // For tests and benchmarks: how many bytes this process sent in the latest forward or backward
  // of a distributed op.
  m.def("bytes_sent_by_last_call() -> int",
        [] { return dilated_attention::bytes_sent_by_last_call(); });
}
