// Public C++ API for LibTorch users: typed wrappers that call the registered operators
// through the dispatcher, so autograd, device dispatch and tracing apply exactly as from Python.
// Link against libdilated_attention_ops.so (its static registrations run when it loads).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <tuple>

namespace dilated_attention {

// dilated_attention::dilated_attention on [B, N, H, D] query/key/value; see README.md for the math.
inline at::Tensor dilated_attention(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, at::IntArrayRef segment_lengths,
                                    at::IntArrayRef dilation_rates, double dropout_p = 0.0,
                                    bool is_causal = false,
                                    std::optional<double> scale = std::nullopt) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dilated_attention::dilated_attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         at::IntArrayRef, at::IntArrayRef, double, bool,
                                         std::optional<double>)>();
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale);
}

namespace detail {

// The sharded distributed ops share one signature: the core arguments, then group_name.
inline at::Tensor call_sharded_op(const char* name, const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, at::IntArrayRef segment_lengths,
                                  at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                                  std::optional<double> scale, const std::string& group_name) {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow(name, "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                  at::IntArrayRef, at::IntArrayRef, double, bool,
                                  std::optional<double>, c10::string_view)>();
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale,
                 group_name);
}

}  // namespace detail

// The recommended sequence-parallel op: this rank's rows [B, N/P, H, D] of q, k, v in, the same
// rows of the output out. group_name: the c10d group's name ("" = one process).
inline at::Tensor ring_dilated_attention_hybrid_optimized_v2(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p = 0.0,
    bool is_causal = false, std::optional<double> scale = std::nullopt,
    const std::string& group_name = "") {
  return detail::call_sharded_op("dilated_attention::ring_dilated_attention_hybrid_optimized_v2",
                                 query, key, value, segment_lengths, dilation_rates, dropout_p,
                                 is_causal, scale, group_name);
}

// The same with the production safeguards (agreement check, bounded waits naming the peer).
inline at::Tensor ring_dilated_attention_production(const at::Tensor& query, const at::Tensor& key,
                                                    const at::Tensor& value,
                                                    at::IntArrayRef segment_lengths,
                                                    at::IntArrayRef dilation_rates,
                                                    double dropout_p = 0.0, bool is_causal = false,
                                                    std::optional<double> scale = std::nullopt,
                                                    const std::string& group_name = "") {
  return detail::call_sharded_op("dilated_attention::ring_dilated_attention_production", query, key,
                                 value, segment_lengths, dilation_rates, dropout_p, is_causal,
                                 scale, group_name);
}

}  // namespace dilated_attention
