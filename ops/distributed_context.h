// What every distributed op resolves before it works: the communicator behind `group_name`
// ("" = one process, no communication) and the backend its name selects.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "ops/key_value_exchange.h"

namespace dilated_attention {

// The schedules behind the op names. Sharded backends take this rank's rows; replicated ones
// take the full sequence on every rank.
enum class DistributedBackend {
  kSegmentRing,         // ring_dilated_attention_hybrid_optimized_v2
  kFullRing,            // ring_dilated_attention_hybrid_optimized
  kCheckedSegmentRing,  // ring_dilated_attention_production
  kAllGather,           // ring_dilated_attention_v2_collective, hilbert_ring_dilated_attention
  kReplicatedRows,      // distributed_improved_dilated_attention
  kReplicatedHeads,     // head_parallel_dilated_attention
};

// Parses the backend string of the internal ops; ValueError on an unknown name.
DistributedBackend parse_backend(const std::string& backend);
bool is_sharded(DistributedBackend backend);
ExchangeKind exchange_of(DistributedBackend backend);  // sharded backends only

// The communicator of `group_name`; "" gives a single-rank communicator.
std::shared_ptr<comm::Communicator> communicator_for(const std::string& group_name);

// Bytes this process sent in the latest forward or backward of a distributed op.
void record_bytes_sent(int64_t bytes);
int64_t bytes_sent_by_last_call();

}  // namespace dilated_attention
