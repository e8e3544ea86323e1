// dilated_attention_with_kv_cache: the decoding op. Query holds the last Nq positions of causal
// sequences whose keys and values (cache and new tokens) are key / value; the result equals the
// last Nq rows of dilated_attention_varlen (longnet=False) or longnet_attention (longnet=True)
// over each row's sequence, at a cost per token that does not grow with the cache
// (kernels/kv_cache_attention_kernel.h). Forward only: its Autograd kernel lets a forward run on
// inputs that require grad and raises, naming the training ops, on backward. The kernel is
// device-generic and registers once, under CompositeExplicitAutograd; Meta checks and sizes.
#include <ATen/DeviceGuard.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

#include "kernels/kv_cache_attention_kernel.h"
#include "ops/attention_config.h"
#include "ops/validate_attention.h"
#include "ops/validate_kv_cache.h"

namespace dilated_attention {
namespace {

constexpr const char* kSchema =
    "dilated_attention_with_kv_cache(Tensor query, Tensor key, Tensor value, "
    "int[] segment_lengths, int[] dilation_rates, float? scale=None, "
    "Tensor? key_padding_mask=None, Tensor? sequence_starts=None, bool longnet=False) -> Tensor";

// The op's C++ parameters, in schema order.
#define KV_CACHE_ATTENTION_PARAMS                                                    \
  const at::Tensor &query, const at::Tensor &key, const at::Tensor &value,           \
      at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,               \
      std::optional<double> scale, const std::optional<at::Tensor>&key_padding_mask, \
      const std::optional<at::Tensor>&sequence_starts, bool longnet
#define KV_CACHE_ATTENTION_ARGS                                                                 \
  query, key, value, segment_lengths, dilation_rates, scale, key_padding_mask, sequence_starts, \
      longnet

// Decoding is causal and has no dropout: the shared arguments the checks and configs take.
AttentionArgs cache_args(at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                         std::optional<double> scale) {
  return {segment_lengths.vec(), dilation_rates.vec(), 0.0, /*is_causal=*/true, scale};
}

at::Tensor kv_cache_attention(KV_CACHE_ATTENTION_PARAMS) {
  const auto args = cache_args(segment_lengths, dilation_rates, scale);
  check_kv_cache_call(query, key, value, args, key_padding_mask, sequence_starts, longnet);
  check_device_supports(query, args, key_padding_mask);
  check_scores_representable(query, key, args);
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  const int64_t heads = query.size(2), key_value_heads = key.size(2), head_dim = query.size(3);
  ConfigForLength config_for_length;
  if (longnet) {
    config_for_length = [=](int64_t length) {
      return make_longnet_config(heads, key_value_heads, head_dim, length, args, 0);
    };
  } else {
    config_for_length = [config = make_attention_config(heads, key_value_heads, head_dim, args, 0)](
                            int64_t) { return config; };
  }
  return kv_cache_attention_kernel(query, key, value, mask_or_undefined(key_padding_mask),
                                   cache_sequence_starts(sequence_starts, query.size(0)),
                                   config_for_length);
}

at::Tensor kv_cache_attention_meta(KV_CACHE_ATTENTION_PARAMS) {
  check_kv_cache_call(query, key, value, cache_args(segment_lengths, dilation_rates, scale),
                      key_padding_mask, sequence_starts, longnet);
  return at::empty_symint(query.sym_sizes(), query.options());
}

at::Tensor call_kv_cache_attention(KV_CACHE_ATTENTION_PARAMS) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::dilated_attention_with_kv_cache", "")
          .typed<decltype(kv_cache_attention)>();
  return op.call(KV_CACHE_ATTENTION_ARGS);
}

// Forward below autograd; backward raises. (Without an Autograd kernel a forward on inputs that
// require grad would return a result silently cut from the graph.)
class ForwardOnlyFunction : public torch::autograd::Function<ForwardOnlyFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext*, KV_CACHE_ATTENTION_PARAMS) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_kv_cache_attention(KV_CACHE_ATTENTION_ARGS);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(
        false,
        "dilated_attention_with_kv_cache has no backward: it is the decoding op (forward "
        "only). Train with dilated_attention_varlen, dilated_attention or longnet_attention, "
        "which compute the same rows with gradients");
    return {};
  }
};

at::Tensor kv_cache_attention_autograd(KV_CACHE_ATTENTION_PARAMS) {
  return ForwardOnlyFunction::apply(KV_CACHE_ATTENTION_ARGS);
}

}  // namespace
}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  m.def(dilated_attention::kSchema, {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeExplicitAutograd, m) {
  m.impl("dilated_attention_with_kv_cache", &dilated_attention::kv_cache_attention);
}

TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) {
  m.impl("dilated_attention_with_kv_cache", &dilated_attention::kv_cache_attention_meta);
}

TORCH_LIBRARY_IMPL(dilated_attention, Autograd, m) {
  m.impl("dilated_attention_with_kv_cache", &dilated_attention::kv_cache_attention_autograd);
}
