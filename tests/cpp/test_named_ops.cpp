// The table of distributed op names (ops/named_op_table.h), through the dispatcher from
// plain C++: every name exists with the core arguments plus group_name, runs on one process
// (group_name ""), equals the core op, and the deprecated names warn exactly once.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <dilated_attention/ops.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "catch_compat.h"
#include "ops/named_op_table.h"

namespace {

using dilated_attention::kNamedOps;
using dilated_attention::Signature;

// The names of this build that take query, key, value [B, N, H, D], from the library's table.
std::vector<dilated_attention::NamedOp> attention_names() {
  std::vector<dilated_attention::NamedOp> names;
  for (const auto& op : kNamedOps) {
    if (dilated_attention::is_built(op) && op.signature == Signature::kAttention) {
      names.push_back(op);
    }
  }
  return names;
}

// Collects the warnings raised while it is installed.
class RecordingHandler : public c10::WarningHandler {
 public:
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
  std::vector<std::string> messages;
};

at::Tensor call_named(const char* name, const at::Tensor& q) {
  // Every attention name has the public v2 op's signature.
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow((std::string("dilated_attention::") + name).c_str(), "")
                .typed<decltype(dilated_attention::ring_dilated_attention_hybrid_optimized_v2)>();
  return op.call(q, q, q, {8, 16}, {1, 2}, 0.0, true, std::nullopt, "", std::nullopt);
}

}  // namespace

TEST_CASE("deprecated names warn once with the notice's text; recommended names never",
          "[named_ops]") {
  const auto q = torch::randn({1, 32, 4, 8});
  for (const auto& op : attention_names()) {
    INFO(op.name);
    RecordingHandler handler;
    {
      c10::WarningUtils::WarningHandlerGuard guard(&handler);
      call_named(op.name, q);
      call_named(op.name, q);
    }
    if (op.deprecated_class == nullptr) {
      CHECK(handler.messages.empty());
      continue;
    }
    // Once per process (this test case runs first, and ctest runs each case in its own process).
    CHECK(handler.messages.size() == 1);
    for (const auto& message : handler.messages) {
      CHECK(message == std::string(op.deprecated_class) +
                           " is deprecated. This implementation uses all_gather which has poor "
                           "performance characteristics. Please use "
                           "RingDilatedAttentionHybridOptimizedV2 or other ring implementations "
                           "that use isend/irecv for better performance.");
    }
    c10::WarningUtils::set_warnAlways(true);
    RecordingHandler always;
    {
      c10::WarningUtils::WarningHandlerGuard guard(&always);
      call_named(op.name, q);
      call_named(op.name, q);
    }
    c10::WarningUtils::set_warnAlways(false);
    CHECK(always.messages.size() == 2);
  }
}

TEST_CASE("every named distributed op equals the core op on one process", "[named_ops]") {
  torch::manual_seed(0);
  const auto q = torch::randn({1, 32, 4, 8}, torch::kDouble);
  const auto expected = dilated_attention::dilated_attention(q, q, q, {8, 16}, {1, 2}, 0.0, true);
  for (const auto& op : attention_names()) {
    INFO(op.name);
    CHECK(torch::allclose(call_named(op.name, q), expected, 0.0, 1e-12));
  }
}

TEST_CASE("the public header's wrappers reach the sharded ops", "[named_ops]") {
  const auto q = torch::randn({1, 32, 4, 8}, torch::kDouble);
  const auto expected = dilated_attention::dilated_attention(q, q, q, {8, 16}, {1, 2});
  CHECK(torch::allclose(
      dilated_attention::ring_dilated_attention_hybrid_optimized_v2(q, q, q, {8, 16}, {1, 2}),
      expected, 0.0, 1e-12));
  CHECK(torch::allclose(
      dilated_attention::ring_dilated_attention_production(q, q, q, {8, 16}, {1, 2}), expected, 0.0,
      1e-12));
}

TEST_CASE("the public header's varlen op on one whole sequence is the core op", "[named_ops]") {
  torch::manual_seed(1);
  const auto q = torch::randn({1, 32, 4, 8}, torch::kDouble);
  const auto kv = torch::randn({1, 32, 2, 8}, torch::kDouble);
  const auto expected = dilated_attention::dilated_attention(q, kv, kv, {8, 16}, {1, 2}, 0.0, true);
  const auto cu_seqlens = torch::tensor({0, 32}, torch::kInt);
  const auto packed = dilated_attention::dilated_attention_varlen(q[0], kv[0], kv[0], cu_seqlens,
                                                                  32, {8, 16}, {1, 2}, 0.0, true);
  CHECK(torch::allclose(packed, expected[0], 0.0, 1e-12));
}
