// The arguments every attention op shares, in schema order:
//   int[] segment_lengths, int[] dilation_rates, float dropout_p=0.0, bool is_causal=False,
//   float? scale=None
// Every registered entry point takes them as DILATED_ATTENTION_ARGS_PARAMS and gathers them into
// one AttentionArgs on its first line (DILATED_ATTENTION_ARGS_COLLECT); validation, planning,
// the ranks' agreement check and autograd's save/restore take the struct, and dispatcher calls
// pass it on with AttentionArgs::unpack.
//
// Adding an argument to every op is done in this file and attention_args.cpp: a field, its
// parameter in the two macros and in unpack, its schema text in kAttentionArgsSchema, its
// save/load, then the code that uses it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace torch::autograd {
struct AutogradContext;
}  // namespace torch::autograd

namespace dilated_attention {

// The C++ parameters of the shared arguments, as the dispatcher passes them.
#define DILATED_ATTENTION_ARGS_PARAMS                                                \
  at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p, \
      bool is_causal, std::optional<double> scale

// The struct of DILATED_ATTENTION_ARGS_PARAMS, in a function that takes them.
#define DILATED_ATTENTION_ARGS_COLLECT()                                     \
  ::dilated_attention::AttentionArgs {                                       \
    segment_lengths.vec(), dilation_rates.vec(), dropout_p, is_causal, scale \
  }

struct AttentionArgs {
  std::vector<int64_t> segment_lengths;
  std::vector<int64_t> dilation_rates;
  double dropout_p = 0.0;
  bool is_causal = false;
  std::optional<double> scale;

  // Number of schema arguments the struct stands for (autograd returns no gradient for each).
  static constexpr size_t kNumSchemaArgs = 5;

  // f(DILATED_ATTENTION_ARGS_PARAMS...): hands the fields to a dispatcher call in schema order.
  template <typename F>
  decltype(auto) unpack(F&& f) const {
    return std::forward<F>(f)(at::IntArrayRef(segment_lengths), at::IntArrayRef(dilation_rates),
                              dropout_p, is_causal, scale);
  }

  bool uses_dropout() const { return dropout_p > 0.0; }

  void save(torch::autograd::AutogradContext* ctx) const;
  static AttentionArgs load(torch::autograd::AutogradContext* ctx);
};

// The schema text of the shared arguments. Public ops give them their defaults; the internal
// forward / backward ops, whose callers always pass everything, list them without.
enum class SchemaDefaults { kWith, kWithout };
std::string attention_args_schema(SchemaDefaults defaults = SchemaDefaults::kWith);

// The LAST argument of every attention op, internal ones included (after group_name and backend
// where they exist, with its default, so positional calls written before it keep working):
// "Tensor? key_padding_mask=None", a bool [B, rows] tensor, True = padding
// (torch.nn.MultiheadAttention's convention).
inline constexpr const char* kKeyPaddingMaskSchema = "Tensor? key_padding_mask=None";

// The mask as the kernels take it: undefined when absent.
inline at::Tensor mask_or_undefined(const std::optional<at::Tensor>& key_padding_mask) {
  return key_padding_mask.has_value() ? *key_padding_mask : at::Tensor();
}

}  // namespace dilated_attention
