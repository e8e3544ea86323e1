// Public C++ API for LibTorch users: typed wrappers that call the registered operators
// through the dispatcher, so autograd, device dispatch and tracing apply exactly as from Python.
// Link against libdilated_attention_ops.so (its static registrations run when it loads).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
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

}  // namespace dilated_attention
