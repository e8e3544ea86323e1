#include "ops/named_op_table.h"

#include <c10/util/Exception.h>

#include <nlohmann/json.hpp>

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

std::string backend_names() {
  std::string names;
  for (const auto& info : kBackends) {
    if (!names.empty()) names += ", ";
    names += info.name;
  }
  return names;
}

}  // namespace

DistributedBackend parse_backend(std::string_view name) {
  for (const auto& info : kBackends) {
    if (name != info.name) continue;
    TORCH_CHECK_VALUE(kDeprecatedOpsBuilt || !is_legacy(info.backend), "backend '", name,
                      "' served the deprecated all_gather implementations, which this build "
                      "leaves out (DILATED_ATTENTION_WITHOUT_DEPRECATED); use segment_ring");
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

std::string named_op_table_json() {
  auto rows = nlohmann::json::array();
  for (const auto& op : kNamedOps) {
    if (!is_built(op)) continue;
    const auto& backend = info_of(op.backend);
    rows.push_back({
        {"name", op.name},
        {"signature", signature_name(op.signature)},
        {"backend", backend.name},
        {"contract", backend.contract == Contract::kSharded ? "sharded" : "replicated"},
        {"deprecated_class", is_deprecated(op) ? nlohmann::json(op.deprecated_class) : nullptr},
        {"deprecation_warning",
         is_deprecated(op) ? nlohmann::json(deprecation_warning(op)) : nullptr},
    });
  }
  return rows.dump();
}

}  // namespace dilated_attention
