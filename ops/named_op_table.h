// The one table of the distributed op names users call: which schedule (backend) each runs,
// whether it takes this rank's rows (sharded) or the whole sequence on every rank (replicated),
// and the class of the Python project our users come from that it deprecates, if any. The C++
// registration (registration/named_ops.cpp), the deprecation warnings, the backends a build
// accepts, the Python classes' backend choice and the test matrix all derive from it; Python
// reads it through the op `named_op_table() -> Dict(str, str?)[]`.
#pragma once

#include <ATen/core/Dict.h>
#include <ATen/core/List.h>

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace dilated_attention {

// The schedules behind the op names.
enum class DistributedBackend {
  kSegmentRing,         // only the dilated K/V rows of segments that span shards, isend/irecv
  kFullRing,            // every K/V shard visits every rank
  kCheckedSegmentRing,  // kSegmentRing (the production op's name for it; every backend checks
                        // that the ranks agree, ops/config_agreement.h)
  kAllGather,           // the K/V rows of spanning segments gathered from every rank at once
  kReplicatedRows,      // full sequence on every rank; each attends its rows, then all_gather
  kReplicatedHeads,     // full sequence on every rank; each attends its heads, then all_gather
  kLongNetSegmentRing,  // kSegmentRing computing LongNet's combination (ring_longnet_attention)
};

enum class Contract {
  kSharded,     // this rank's rows [B, N/P, ...] in and out
  kReplicated,  // the whole sequence [B, N, ...] in and out on every rank
};

struct BackendInfo {
  DistributedBackend backend;
  const char* name;  // the `backend` argument of the internal ops
  Contract contract;
  // The op of its own that runs this backend, outside the named ops' table (their math is the
  // head-split one); nullptr for the table's backends.
  const char* dedicated_op = nullptr;
};

inline constexpr std::array<BackendInfo, 7> kBackends{{
    {DistributedBackend::kSegmentRing, "segment_ring", Contract::kSharded},
    {DistributedBackend::kFullRing, "full_ring", Contract::kSharded},
    {DistributedBackend::kCheckedSegmentRing, "segment_ring_checked", Contract::kSharded},
    {DistributedBackend::kAllGather, "all_gather", Contract::kSharded},
    {DistributedBackend::kReplicatedRows, "replicated_rows", Contract::kReplicated},
    {DistributedBackend::kReplicatedHeads, "replicated_heads", Contract::kReplicated},
    {DistributedBackend::kLongNetSegmentRing, "longnet_segment_ring", Contract::kSharded,
     "ring_longnet_attention"},
}};

constexpr const BackendInfo& info_of(DistributedBackend backend) {
  for (const auto& info : kBackends) {
    if (info.backend == backend) return info;
  }
  return kBackends[0];  // unreachable: every enumerator has a row
}

// How a name's inputs look before the shared attention arguments and group_name.
enum class Signature {
  kAttention,           // query, key, value [B, N, H, D]
  kProjected,           // query, key, value [B, N, E] + q/k/v/out projection weights, num_heads
  kFusedSelfAttention,  // x [B, N, E] + one fused [3E, E] qkv projection, out projection
};

struct NamedOp {
  const char* name;
  Signature signature;
  DistributedBackend backend;
  const char* deprecated_class;  // nullptr: a recommended name, never warns
};

inline constexpr std::array<NamedOp, 9> kNamedOps{{
    {"ring_dilated_attention_hybrid_optimized_v2", Signature::kAttention,
     DistributedBackend::kSegmentRing, nullptr},
    {"ring_dilated_attention_hybrid_optimized", Signature::kAttention,
     DistributedBackend::kFullRing, nullptr},
    {"ring_dilated_attention_production", Signature::kAttention,
     DistributedBackend::kCheckedSegmentRing, nullptr},
    {"ring_multihead_dilated_attention", Signature::kFusedSelfAttention,
     DistributedBackend::kSegmentRing, nullptr},
    {"ring_dilated_attention_v2_collective", Signature::kAttention, DistributedBackend::kAllGather,
     "RingDilatedAttentionV2Collective"},
    {"hilbert_ring_dilated_attention", Signature::kAttention, DistributedBackend::kAllGather,
     "HilbertRingDilatedAttention"},
    {"distributed_improved_dilated_attention", Signature::kAttention,
     DistributedBackend::kReplicatedRows, "DistributedImprovedDilatedAttention"},
    {"distributed_improved_multihead_dilated_attention", Signature::kProjected,
     DistributedBackend::kReplicatedRows, "DistributedImprovedMultiheadDilatedAttention"},
    {"head_parallel_dilated_attention", Signature::kAttention, DistributedBackend::kReplicatedHeads,
     "HeadParallelDilatedAttention"},
}};

// -DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON leaves the deprecated names out of the build, and
// with them the backends only they use.
#ifdef DILATED_ATTENTION_WITHOUT_DEPRECATED
inline constexpr bool kDeprecatedOpsBuilt = false;
#else
inline constexpr bool kDeprecatedOpsBuilt = true;
#endif

constexpr bool is_deprecated(const NamedOp& op) { return op.deprecated_class != nullptr; }
constexpr bool is_built(const NamedOp& op) { return kDeprecatedOpsBuilt || !is_deprecated(op); }

// A backend that only deprecated names use: built only with them.
constexpr bool is_legacy(DistributedBackend backend) {
  if (info_of(backend).dedicated_op != nullptr) return false;
  for (const auto& op : kNamedOps) {
    if (op.backend == backend && !is_deprecated(op)) return false;
  }
  return true;
}

// The backend named `name`; ValueError on an unknown name, and on a legacy one in a build
// without the deprecated ops.
DistributedBackend parse_backend(std::string_view name);

// The warning a deprecated name gives (the deprecation notice's text).
std::string deprecation_warning(const NamedOp& op);

// The rows of this build, one dict each: "name", "signature", "backend", "contract",
// "deprecated_class", "deprecation_warning" (the last two None for recommended names).
using NamedOpRows = c10::List<c10::Dict<std::string, std::optional<std::string>>>;
NamedOpRows named_op_table_rows();

}  // namespace dilated_attention
