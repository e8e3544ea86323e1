#include "ops/distributed_context.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>

namespace dilated_attention {
namespace {
std::atomic<int64_t> last_call_bytes{0};
}  // namespace

DistributedBackend parse_backend(const std::string& backend) {
  if (backend == "segment_ring") return DistributedBackend::kSegmentRing;
  if (backend == "full_ring") return DistributedBackend::kFullRing;
  if (backend == "segment_ring_checked") return DistributedBackend::kCheckedSegmentRing;
#ifdef DILATED_ATTENTION_WITHOUT_DEPRECATED
  const bool legacy =
      backend == "all_gather" || backend == "replicated_rows" || backend == "replicated_heads";
  TORCH_CHECK_VALUE(!legacy, "backend '", backend,
                    "' served the deprecated all_gather implementations, which this build leaves "
                    "out (DILATED_ATTENTION_WITHOUT_DEPRECATED); use segment_ring");
#endif
  if (backend == "all_gather") return DistributedBackend::kAllGather;
  if (backend == "replicated_rows") return DistributedBackend::kReplicatedRows;
  if (backend == "replicated_heads") return DistributedBackend::kReplicatedHeads;
  TORCH_CHECK_VALUE(false, "backend must be one of segment_ring, full_ring, segment_ring_checked, ",
                    "all_gather, replicated_rows, replicated_heads, got '", backend, "'");
}

bool is_sharded(DistributedBackend backend) {
  return backend != DistributedBackend::kReplicatedRows &&
         backend != DistributedBackend::kReplicatedHeads;
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
