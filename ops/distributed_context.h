// What every distributed op resolves before it works: the communicator behind `group_name`
// ("" = one process, no communication) and the key/value exchange of its backend.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"
#include "ops/key_value_exchange.h"
#include "ops/named_op_table.h"

namespace dilated_attention {

bool is_sharded(DistributedBackend backend);
ExchangeKind exchange_of(DistributedBackend backend);  // sharded backends only

// The communicator of `group_name`; "" gives a single-rank communicator.
std::shared_ptr<comm::Communicator> communicator_for(const std::string& group_name);

// Held for the whole of one distributed call on a process group. Two overlapping calls on one
// group (from two threads of this process) would match each other's messages, whose tags are
// the same, and mix their data; so a second call while one is in flight raises ValueError at
// once. (A lock would not be enough: the ranks could still pair different threads' calls.)
// The single-process "" group communicates nothing and is never held.
class ExclusiveGroupUse {
 public:
  explicit ExclusiveGroupUse(const std::string& group_name);
  ~ExclusiveGroupUse();
  ExclusiveGroupUse(const ExclusiveGroupUse&) = delete;
  ExclusiveGroupUse& operator=(const ExclusiveGroupUse&) = delete;

 private:
  std::string group_name_;
};

// Bytes this process sent in the latest forward or backward of a distributed op.
void record_bytes_sent(int64_t bytes);
int64_t bytes_sent_by_last_call();

}  // namespace dilated_attention
