// The functions of include/dilated_attention/ops.h: dispatcher calls, each handle typed from
// the public declaration itself.
#include <ATen/core/dispatch/Dispatcher.h>
#include <dilated_attention/ops.h>

namespace dilated_attention {
namespace {

template <typename Function>
c10::TypedOperatorHandle<Function> handle_of(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Function>();
}

}  // namespace

at::Tensor dilated_attention(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, at::IntArrayRef segment_lengths,
                             at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                             std::optional<double> scale,
                             const std::optional<at::Tensor>& key_padding_mask) {
  static const auto op =
      handle_of<decltype(dilated_attention)>("dilated_attention::dilated_attention");
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale,
                 key_padding_mask);
}

at::Tensor longnet_attention(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, at::IntArrayRef segment_lengths,
                             at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                             std::optional<double> scale,
                             const std::optional<at::Tensor>& key_padding_mask) {
  static const auto op =
      handle_of<decltype(longnet_attention)>("dilated_attention::longnet_attention");
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale,
                 key_padding_mask);
}

at::Tensor dilated_attention_varlen(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, const at::Tensor& cu_seqlens,
                                    int64_t max_seqlen, at::IntArrayRef segment_lengths,
                                    at::IntArrayRef dilation_rates, double dropout_p,
                                    bool is_causal, std::optional<double> scale) {
  static const auto op =
      handle_of<decltype(dilated_attention_varlen)>("dilated_attention::dilated_attention_varlen");
  return op.call(query, key, value, cu_seqlens, max_seqlen, segment_lengths, dilation_rates,
                 dropout_p, is_causal, scale);
}

at::Tensor ring_dilated_attention_hybrid_optimized_v2(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale, c10::string_view group_name,
    const std::optional<at::Tensor>& key_padding_mask) {
  static const auto op = handle_of<decltype(ring_dilated_attention_hybrid_optimized_v2)>(
      "dilated_attention::ring_dilated_attention_hybrid_optimized_v2");
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale,
                 group_name, key_padding_mask);
}

at::Tensor dilated_attention_with_kv_cache(const at::Tensor& query, const at::Tensor& key,
                                           const at::Tensor& value, at::IntArrayRef segment_lengths,
                                           at::IntArrayRef dilation_rates,
                                           std::optional<double> scale,
                                           const std::optional<at::Tensor>& key_padding_mask,
                                           const std::optional<at::Tensor>& sequence_starts,
                                           bool longnet) {
  static const auto op = handle_of<decltype(dilated_attention_with_kv_cache)>(
      "dilated_attention::dilated_attention_with_kv_cache");
  return op.call(query, key, value, segment_lengths, dilation_rates, scale, key_padding_mask,
                 sequence_starts, longnet);
}

at::Tensor ring_longnet_attention(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, at::IntArrayRef segment_lengths,
                                  at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                                  std::optional<double> scale, c10::string_view group_name,
                                  const std::optional<at::Tensor>& key_padding_mask) {
  static const auto op =
      handle_of<decltype(ring_longnet_attention)>("dilated_attention::ring_longnet_attention");
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale,
                 group_name, key_padding_mask);
}

at::Tensor ring_dilated_attention_production(const at::Tensor& query, const at::Tensor& key,
                                             const at::Tensor& value,
                                             at::IntArrayRef segment_lengths,
                                             at::IntArrayRef dilation_rates, double dropout_p,
                                             bool is_causal, std::optional<double> scale,
                                             c10::string_view group_name,
                                             const std::optional<at::Tensor>& key_padding_mask) {
  static const auto op = handle_of<decltype(ring_dilated_attention_production)>(
      "dilated_attention::ring_dilated_attention_production");
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale,
                 group_name, key_padding_mask);
}

}  // namespace dilated_attention
