#include "ops/distributed_context.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>
#include <string>
#include <unordered_set>

namespace dilated_attention {
namespace {
std::atomic<int64_t> last_call_bytes{0};

std::mutex groups_in_use_mutex;
std::unordered_set<std::string>& groups_in_use() {
  static std::unordered_set<std::string> groups;
  return groups;
}
}  // namespace

ExclusiveGroupUse::ExclusiveGroupUse(const std::string& group_name) : group_name_(group_name) {
  if (group_name_.empty()) return;
  const std::lock_guard<std::mutex> lock(groups_in_use_mutex);
  TORCH_CHECK_VALUE(groups_in_use().insert(group_name_).second, "group_name '", group_name_,
                    "' is in use by another dilated attention call in this process (another "
                    "thread): calls on one process group must not overlap; give each thread its "
                    "own group (torch.distributed.new_group)");
}

ExclusiveGroupUse::~ExclusiveGroupUse() {
  if (group_name_.empty()) return;
  const std::lock_guard<std::mutex> lock(groups_in_use_mutex);
  groups_in_use().erase(group_name_);
}

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
