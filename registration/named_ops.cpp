// The distributed op names users call, generated from the one table in ops/named_op_table.h.
// Each name is a CompositeImplicitAutograd alias that calls the internal op with the name's
// backend, so Meta and autograd come from that op and a compiled graph holds it. Deprecated
// names warn once per process per name, or on every call under torch.set_warn_always(True).
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <string>
#include <utility>

#include "ops/multihead_attention.h"
#include "ops/named_op_table.h"

namespace dilated_attention {
namespace {

// What a name's schema lists before the shared arguments.
std::string inputs_of(Signature signature) {
  switch (signature) {
    case Signature::kAttention:
      return "Tensor query, Tensor key, Tensor value";
    case Signature::kProjected:
      return std::string("Tensor query, Tensor key, Tensor value, ") + kProjectionsSchema +
             ", int num_heads";
    case Signature::kFusedSelfAttention:
      return "Tensor x, Tensor qkv_weight, Tensor? qkv_bias, Tensor out_weight, "
             "Tensor? out_bias, int num_heads";
  }
  return "";
}

std::string schema_of(const NamedOp& op) {
  return std::string(op.name) + "(" + inputs_of(op.signature) + ", " + attention_args_schema() +
         ", str group_name=\"\", " + kKeyPaddingMaskSchema + ") -> Tensor";
}

template <size_t I>
DistributedTarget target_of(c10::string_view group_name) {
  constexpr NamedOp op = kNamedOps[I];
  if constexpr (is_deprecated(op)) {
    static std::atomic<bool> warned{false};
    if (!warned.exchange(true) || c10::WarningUtils::get_warnAlways()) {
      TORCH_WARN_DEPRECATION(deprecation_warning(op));
    }
  }
  return {std::string(group_name), info_of(op.backend).name};
}

template <size_t I>
at::Tensor attention_alias(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name,
                           const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  return call_distributed_attention(query, key, value, args, target_of<I>(group_name),
                                    key_padding_mask);
}

template <size_t I>
at::Tensor projected_alias(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           DILATED_ATTENTION_PROJECTIONS_PARAMS, int64_t num_heads,
                           DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name,
                           const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  return projected_attention(query, key, value, DILATED_ATTENTION_PROJECTIONS_COLLECT(), num_heads,
                             args, target_of<I>(group_name), key_padding_mask);
}

template <size_t I>
at::Tensor fused_self_attention_alias(const at::Tensor& x, const at::Tensor& qkv_weight,
                                      const std::optional<at::Tensor>& qkv_bias,
                                      const at::Tensor& out_weight,
                                      const std::optional<at::Tensor>& out_bias, int64_t num_heads,
                                      DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name,
                                      const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  return fused_self_attention(x, qkv_weight, qkv_bias, out_weight, out_bias, num_heads, args,
                              target_of<I>(group_name), key_padding_mask);
}

template <size_t I>
void define_one(torch::Library& m) {
  if constexpr (is_built(kNamedOps[I])) {
    m.def(schema_of(kNamedOps[I]).c_str(), {at::Tag::pt2_compliant_tag});
  }
}

template <size_t I>
void implement_one(torch::Library& m) {
  constexpr NamedOp op = kNamedOps[I];
  if constexpr (!is_built(op)) {
    return;
  } else if constexpr (op.signature == Signature::kAttention) {
    m.impl(op.name, &attention_alias<I>);
  } else if constexpr (op.signature == Signature::kProjected) {
    m.impl(op.name, &projected_alias<I>);
  } else {
    m.impl(op.name, &fused_self_attention_alias<I>);
  }
}

template <size_t... I>
void define_named_ops(torch::Library& m, std::index_sequence<I...>) {
  (define_one<I>(m), ...);
}

template <size_t... I>
void implement_named_ops(torch::Library& m, std::index_sequence<I...>) {
  (implement_one<I>(m), ...);
}

constexpr auto kAllNamedOps = std::make_index_sequence<kNamedOps.size()>{};

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  dilated_attention::define_named_ops(m, dilated_attention::kAllNamedOps);
  // The table itself, for Python (the package's classes and the tests derive from it).
  m.def("named_op_table() -> Dict(str, str?)[]",
        [] { return dilated_attention::named_op_table_rows(); });
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeImplicitAutograd, m) {
  dilated_attention::implement_named_ops(m, dilated_attention::kAllNamedOps);
}
