#include "ops/config_agreement.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace dilated_attention {
namespace {

struct Field {
  const char* name;
  std::vector<int64_t> values;
};

int64_t bits_of(double value) {
  int64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
}

// FNV-1a over the values: lists of any length compare through a fixed-size record.
int64_t hash_of(const std::vector<int64_t>& values) {
  uint64_t hash = 14695981039346656037ULL;
  for (const int64_t value : values) {
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= (static_cast<uint64_t>(value) >> (8 * byte)) & 0xFF;
      hash *= 1099511628211ULL;
    }
  }
  return static_cast<int64_t>(hash);
}

std::vector<int64_t> count_and_hash(const std::vector<int64_t>& values) {
  return {static_cast<int64_t>(values.size()), hash_of(values)};
}

// Every field has a fixed number of values, so every rank's fingerprint has the same size.
constexpr int64_t kFingerprintLength = 19;

std::vector<Field> describe_call(const at::Tensor& query, const at::Tensor& key,
                                 const std::optional<at::Tensor>& key_padding_mask,
                                 const AttentionArgs& args, DistributedBackend backend, Pass pass) {
  TORCH_INTERNAL_ASSERT(query.dim() == 4 && key.dim() == 4);
  const auto& scale = args.scale;
  return {{"whether the call was refused", {0}},
          {"the op (backend)", {static_cast<int64_t>(backend)}},
          {"the pass (forward or backward)", {pass == Pass::kForward ? 0 : 1}},
          {"query shape", query.sizes().vec()},
          {"the number of key/value heads", {key.size(2)}},
          {"whether a key_padding_mask was passed", {key_padding_mask.has_value() ? 1 : 0}},
          {"dtype", {static_cast<int64_t>(query.scalar_type())}},
          {"device type", {static_cast<int64_t>(query.device().type())}},
          {"segment_lengths", count_and_hash(args.segment_lengths)},
          {"dilation_rates", count_and_hash(args.dilation_rates)},
          {"dropout_p", {bits_of(args.dropout_p)}},
          {"is_causal", {args.is_causal ? 1 : 0}},
          {"scale", {scale ? 1 : 0, scale ? bits_of(*scale) : 0}}};
}

std::vector<int64_t> fingerprint(const std::vector<Field>& fields) {
  std::vector<int64_t> flat;
  for (const auto& f : fields) flat.insert(flat.end(), f.values.begin(), f.values.end());
  TORCH_INTERNAL_ASSERT(static_cast<int64_t>(flat.size()) == kFingerprintLength);
  return flat;
}

// What a rank whose own checks refused the call sends: the first value says so.
std::vector<int64_t> refusal_fingerprint() {
  std::vector<int64_t> flat(kFingerprintLength, 0);
  flat[0] = 1;
  return flat;
}

std::string op_of(DistributedBackend backend) {
  if (const char* op = info_of(backend).dedicated_op) return op;
  return backend == DistributedBackend::kCheckedSegmentRing
             ? std::string("ring_dilated_attention_production")
             : "distributed dilated attention (backend '" + std::string(info_of(backend).name) +
                   "')";
}

// The first field in which two fingerprints differ.
std::string first_difference(const std::vector<Field>& fields, const int64_t* a, const int64_t* b) {
  int64_t position = 0;
  for (const auto& f : fields) {
    const int64_t len = static_cast<int64_t>(f.values.size());
    if (std::memcmp(a + position, b + position, sizeof(int64_t) * len) != 0) return f.name;
    position += len;
  }
  return "configuration";
}

// Every rank's fingerprint, gathered through rank 0 with point-to-point transfers (not a
// collective), so a rank that never answers is named in the timeout error: rank 0 waits for each
// peer, and the others wait for rank 0.
at::Tensor gather_through_rank_zero(comm::Communicator& comm, const at::Tensor& mine) {
  constexpr int kAgreementTag = 1 << 21;
  const int size = comm.size();
  auto table = at::empty({size, mine.numel()}, mine.options());
  table[comm.rank()].copy_(mine);
  if (comm.rank() == 0) {
    std::vector<comm::Transfer> receives;
    for (int peer = 1; peer < size; ++peer) receives.push_back({peer, table[peer], kAgreementTag});
    comm.post_exchange({}, receives)->wait();
    std::vector<comm::Transfer> sends;
    for (int peer = 1; peer < size; ++peer) sends.push_back({peer, table, kAgreementTag});
    comm.post_exchange(sends, {})->wait();
  } else {
    comm.post_exchange({{0, mine, kAgreementTag}}, {{0, table, kAgreementTag}})->wait();
  }
  return table;
}

// On a group that runs CUDA on NCCL the fingerprints go through one all_gather instead: a
// collective has every rank of the group join NCCL's communicator on the group's first call, which
// a coalesced send/recv step needs (NCCL creates it lazily, and a rank with nothing to exchange
// would never join, leaving the others waiting). NCCL waits are bounded by the process group's own
// timeout.
at::Tensor gather_with_collective(comm::Communicator& comm, const at::Tensor& mine) {
  auto table = at::empty({comm.size() * mine.numel()}, mine.options());
  comm.all_gather(table, mine);
  return table.view({comm.size(), mine.numel()});
}

}  // namespace

void check_ranks_agree(comm::Communicator& comm, const at::Tensor& query, const at::Tensor& key,
                       const std::optional<at::Tensor>& key_padding_mask, const AttentionArgs& args,
                       DistributedBackend backend, Pass pass, std::exception_ptr refusal) {
  if (comm.size() == 1) {
    if (refusal) std::rethrow_exception(refusal);
    return;
  }
  const auto fields = refusal ? std::vector<Field>{}
                              : describe_call(query, key, key_padding_mask, args, backend, pass);
  const auto flat = refusal ? refusal_fingerprint() : fingerprint(fields);
  // The transport is the group's (Communicator::collective_device), not the tensors': ranks
  // whose tensors sit on different devices still meet, and disagree on the device type.
  const auto device = comm.collective_device();
  const auto mine = at::tensor(flat, at::kLong).to(device.value_or(c10::Device(c10::kCPU)));
  const auto table =
      (device ? gather_with_collective(comm, mine) : gather_through_rank_zero(comm, mine)).cpu();
  const int64_t* data = table.data_ptr<int64_t>();
  if (refusal) std::rethrow_exception(refusal);
  for (int r = 0; r < comm.size(); ++r) {
    TORCH_CHECK_VALUE(data[r * kFingerprintLength] == 0, op_of(backend), ": rank ", r,
                      " refused the call (its own error says why); every rank raises so that "
                      "none waits for it");
  }
  for (int r = 1; r < comm.size(); ++r) {
    const int64_t* theirs = data + r * kFingerprintLength;
    if (std::memcmp(theirs, data, sizeof(int64_t) * kFingerprintLength) == 0) continue;
    // Every rank holds the same table, so every rank raises the same error.
    TORCH_CHECK_VALUE(false, op_of(backend), ": ranks disagree on ",
                      first_difference(fields, data, theirs), ": rank 0 and rank ", r,
                      " were called with different values; all ranks of the group must pass the ",
                      "same shapes, dtype, segment_lengths, dilation_rates, dropout_p, is_causal "
                      "and scale");
  }
}

}  // namespace dilated_attention
