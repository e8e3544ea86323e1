// The distributed op names users call, generated from ONE table. Each name is a
// CompositeImplicitAutograd alias that redispatches to an internal op with a backend, so Meta
// and autograd come from the target and a compiled graph holds the target. The deprecated
// names (the all_gather implementations of the seed notice) warn once per process per name,
// or on every call under torch.set_warn_always(True).
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <string>
#include <utility>

namespace dilated_attention {
namespace {

enum class Signature {
  kAttention,  // core args + group_name
  kMultihead,  // query/key/value [B, N, E] + projection weights + num_heads + core args +
               // group_name
};

struct NamedOp {
  const char* name;
  Signature signature;
  const char* backend;
  const char* deprecated_class;  // nullptr: a recommended name, never warns
};

#ifdef DILATED_ATTENTION_WITHOUT_DEPRECATED
constexpr size_t kNumNamedOps = 3;
#else
constexpr size_t kNumNamedOps = 8;
#endif

constexpr std::array<NamedOp, kNumNamedOps> kNamedOps{{
    {"ring_dilated_attention_hybrid_optimized_v2", Signature::kAttention, "segment_ring", nullptr},
    {"ring_dilated_attention_hybrid_optimized", Signature::kAttention, "full_ring", nullptr},
    {"ring_dilated_attention_production", Signature::kAttention, "segment_ring_checked", nullptr},
#ifndef DILATED_ATTENTION_WITHOUT_DEPRECATED
    {"ring_dilated_attention_v2_collective", Signature::kAttention, "all_gather",
     "RingDilatedAttentionV2Collective"},
    {"hilbert_ring_dilated_attention", Signature::kAttention, "all_gather",
     "HilbertRingDilatedAttention"},
    {"distributed_improved_dilated_attention", Signature::kAttention, "replicated_rows",
     "DistributedImprovedDilatedAttention"},
    {"distributed_improved_multihead_dilated_attention", Signature::kMultihead, "replicated_rows",
     "DistributedImprovedMultiheadDilatedAttention"},
    {"head_parallel_dilated_attention", Signature::kAttention, "replicated_heads",
     "HeadParallelDilatedAttention"},
#endif
}};

constexpr const char* kCoreArgs =
    "int[] segment_lengths, int[] dilation_rates, float dropout_p=0.0, bool is_causal=False, "
    "float? scale=None, str group_name=\"\"";

std::string schema_of(const NamedOp& op) {
  const std::string inputs =
      op.signature == Signature::kAttention
          ? "Tensor query, Tensor key, Tensor value, "
          : "Tensor query, Tensor key, Tensor value, Tensor q_weight, Tensor? q_bias, "
            "Tensor k_weight, Tensor? k_bias, Tensor v_weight, Tensor? v_bias, "
            "Tensor out_weight, Tensor? out_bias, int num_heads, ";
  return std::string(op.name) + "(" + inputs + kCoreArgs + ") -> Tensor";
}

template <size_t I>
void warn_if_deprecated() {
  constexpr NamedOp op = kNamedOps[I];
  if constexpr (op.deprecated_class != nullptr) {
    static std::atomic<bool> warned{false};
    if (warned.exchange(true) && !c10::WarningUtils::get_warnAlways()) return;
    TORCH_WARN_DEPRECATION(
        op.deprecated_class,
        " is deprecated. This implementation uses all_gather which has poor performance "
        "characteristics. Please use RingDilatedAttentionHybridOptimizedV2 or other ring "
        "implementations that use isend/irecv for better performance.");
  }
}

template <size_t I>
at::Tensor attention_alias(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                           double dropout_p, bool is_causal, std::optional<double> scale,
                           c10::string_view group_name) {
  warn_if_deprecated<I>();
  static auto target =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_distributed_dilated_attention", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            at::IntArrayRef, at::IntArrayRef, double, bool, std::optional<double>,
                            c10::string_view, c10::string_view)>();
  return target.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal,
                     scale, group_name, kNamedOps[I].backend);
}

template <size_t I>
at::Tensor multihead_alias(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           const at::Tensor& q_weight, const std::optional<at::Tensor>& q_bias,
                           const at::Tensor& k_weight, const std::optional<at::Tensor>& k_bias,
                           const at::Tensor& v_weight, const std::optional<at::Tensor>& v_bias,
                           const at::Tensor& out_weight, const std::optional<at::Tensor>& out_bias,
                           int64_t num_heads, at::IntArrayRef segment_lengths,
                           at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                           std::optional<double> scale, c10::string_view group_name) {
  warn_if_deprecated<I>();
  static auto target =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_multihead_dilated_attention", "")
          .typed<at::Tensor(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const std::optional<at::Tensor>&, const at::Tensor&, const std::optional<at::Tensor>&,
              const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
              const std::optional<at::Tensor>&, int64_t, at::IntArrayRef, at::IntArrayRef, double,
              bool, std::optional<double>, c10::string_view, c10::string_view)>();
  return target.call(query, key, value, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias,
                     out_weight, out_bias, num_heads, segment_lengths, dilation_rates, dropout_p,
                     is_causal, scale, group_name, kNamedOps[I].backend);
}

template <size_t... I>
void define_named_ops(torch::Library& m, std::index_sequence<I...>) {
  (m.def(schema_of(kNamedOps[I]).c_str(), {at::Tag::pt2_compliant_tag}), ...);
}

template <size_t... I>
void implement_named_ops(torch::Library& m, std::index_sequence<I...>) {
  auto implement_one = [&m](auto index) {
    constexpr size_t i = decltype(index)::value;
    if constexpr (kNamedOps[i].signature == Signature::kAttention) {
      m.impl(kNamedOps[i].name, &attention_alias<i>);
    } else {
      m.impl(kNamedOps[i].name, &multihead_alias<i>);
    }
  };
  (implement_one(std::integral_constant<size_t, I>{}), ...);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  dilated_attention::define_named_ops(m,
                                      std::make_index_sequence<dilated_attention::kNumNamedOps>{});
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeImplicitAutograd, m) {
  dilated_attention::implement_named_ops(
      m, std::make_index_sequence<dilated_attention::kNumNamedOps>{});
}
