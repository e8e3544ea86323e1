#include "ops/named_op_table.h"

#include <c10/util/Exception.h>

namespace dilated_attention {
namespace {

const char* signature_name(Signature signature) {
  switch (signature) {
    case Signature::kAttention:
      return "attention";
    case Signature::kProjected:
      return "projected";
    case Signature::kFusedSelfAttention:
      return "fused_self_attention";
  }
  return "";
}

bool is_accepted(DistributedBackend backend) { return kDeprecatedOpsBuilt || !is_legacy(backend); }

// The backends this build accepts.
std::string backend_names() {
  std::string names;
  for (const auto& info : kBackends) {
    if (!is_accepted(info.backend)) continue;
    if (!names.empty()) names += ", ";
    names += info.name;
  }
  return names;
}

}  // namespace

DistributedBackend parse_backend(std::string_view name) {
  for (const auto& info : kBackends) {
    if (name != info.name) continue;
    TORCH_CHECK_VALUE(is_accepted(info.backend), "backend '", name,
                      "' served the deprecated all_gather implementations, which this build "
                      "leaves out (DILATED_ATTENTION_WITHOUT_DEPRECATED); pass each rank its rows "
                      "of the sequence and use segment_ring");
    return info.backend;
  }
  TORCH_CHECK_VALUE(false, "backend must be one of ", backend_names(), ", got '", name, "'");
}

std::string deprecation_warning(const NamedOp& op) {
  return std::string(op.deprecated_class) +
         " is deprecated. This implementation uses all_gather which has poor performance "
         "characteristics. Please use RingDilatedAttentionHybridOptimizedV2 or other ring "
         "implementations that use isend/irecv for better performance.";
}

NamedOpRows named_op_table_rows() {
  NamedOpRows rows;
  for (const auto& op : kNamedOps) {
    if (!is_built(op)) continue;
    const auto& backend = info_of(op.backend);
    c10::Dict<std::string, std::optional<std::string>> row;
    row.insert("name", op.name);
    row.insert("signature", signature_name(op.signature));
    row.insert("backend", backend.name);
    row.insert("contract", backend.contract == Contract::kSharded ? "sharded" : "replicated");
    row.insert("deprecated_class",
               is_deprecated(op) ? std::optional<std::string>(op.deprecated_class) : std::nullopt);
    row.insert("deprecation_warning",
               is_deprecated(op) ? std::optional(deprecation_warning(op)) : std::nullopt);
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace dilated_attention
