// dilated_attention_varlen: schemas and the device-generic and Meta kernels of the public op and
// of its internal forward / backward ops. Autograd lives in varlen_attention_autograd.cpp. As for
// dilated_attention, the kernels are device-generic and register once, under
// CompositeExplicitAutograd.
#include "ops/varlen_attention_op.h"

#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "kernels/varlen_attention_kernel.h"
#include "ops/attention_config.h"
#include "ops/validate_attention.h"
#include "ops/validate_varlen.h"

namespace dilated_attention {
namespace {

AttentionConfig config_for(const at::Tensor& query, const at::Tensor& key,
                           const AttentionArgs& args, uint64_t seed) {
  return make_attention_config(query.size(1), key.size(1), query.size(2), args, seed);
}

at::Tensor new_like(const at::Tensor& x) { return at::empty_symint(x.sym_sizes(), x.options()); }

// One log-sum-exp per row and head: [T, H].
std::vector<c10::SymInt> lse_sizes_of(const at::Tensor& query) {
  return {query.sym_size(0), query.sym_size(1)};
}

void check_backward_call(const at::Tensor& grad_output, const at::Tensor& query,
                         const at::Tensor& key, const at::Tensor& value, const at::Tensor& output,
                         const at::Tensor& softmax_lse, const at::Tensor& rng_state,
                         const at::Tensor& cu_seqlens, int64_t max_seqlen,
                         const AttentionArgs& args) {
  check_varlen_call(query, key, value, cu_seqlens, max_seqlen, args);
  check_backward_inputs(grad_output, query, output, softmax_lse, rng_state, lse_sizes_of(query));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& cu_seqlens, int64_t max_seqlen, DILATED_ATTENTION_ARGS_PARAMS) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_varlen_call(query, key, value, cu_seqlens, max_seqlen, args);
  auto lse = at::empty_symint(lse_sizes_of(query),
                              query.options().dtype(at::toOpMathType(query.scalar_type())));
  return {new_like(query), lse, at::empty({kRngStateSize}, query.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    DILATED_ATTENTION_ARGS_PARAMS) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_backward_call(grad_output, query, key, value, output, softmax_lse, rng_state, cu_seqlens,
                      max_seqlen, args);
  return {new_like(query), new_like(key), new_like(value)};
}

at::Tensor varlen_attention_meta(const at::Tensor& query, const at::Tensor& key,
                                 const at::Tensor& value, const at::Tensor& cu_seqlens,
                                 int64_t max_seqlen, DILATED_ATTENTION_ARGS_PARAMS) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_varlen_call(query, key, value, cu_seqlens, max_seqlen, args);
  return new_like(query);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_forward_op(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& cu_seqlens, int64_t max_seqlen, DILATED_ATTENTION_ARGS_PARAMS) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_varlen_call(query, key, value, cu_seqlens, max_seqlen, args);
  check_device_supports(query, args, std::nullopt);
  check_scores_representable(query, key, args);
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  const uint64_t seed = draw_dropout_seed(args);
  auto [out, lse] = varlen_attention_forward_kernel(query, key, value, sequence_starts(cu_seqlens),
                                                    config_for(query, key, args, seed));
  return {out, lse, pack_rng_state(seed, args, query.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward_op(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    DILATED_ATTENTION_ARGS_PARAMS) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  check_backward_call(grad_output, query, key, value, output, softmax_lse, rng_state, cu_seqlens,
                      max_seqlen, args);
  check_device_supports(query, args, std::nullopt);
  check_scores_representable(query, key, args);
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  return varlen_attention_backward_kernel(
      grad_output, query, key, value, output, softmax_lse, sequence_starts(cu_seqlens),
      config_for(query, key, args, unpack_dropout_seed(rng_state, args)));
}

at::Tensor varlen_attention_op(const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const at::Tensor& cu_seqlens,
                               int64_t max_seqlen, DILATED_ATTENTION_ARGS_PARAMS) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  return std::get<0>(args.unpack([&](auto... shared) {
    return varlen_attention_forward_op(query, key, value, cu_seqlens, max_seqlen, shared...);
  }));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_varlen_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& cu_seqlens, int64_t max_seqlen, const AttentionArgs& args) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_dilated_attention_varlen_forward", "")
          .typed<decltype(varlen_attention_forward_op)>();
  return args.unpack([&](auto... shared) {
    return op.call(query, key, value, cu_seqlens, max_seqlen, shared...);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_varlen_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const at::Tensor& cu_seqlens, int64_t max_seqlen,
    const AttentionArgs& args) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_dilated_attention_varlen_backward", "")
          .typed<decltype(varlen_attention_backward_op)>();
  return args.unpack([&](auto... shared) {
    return op.call(grad_output, query, key, value, output, softmax_lse, rng_state, cu_seqlens,
                   max_seqlen, shared...);
  });
}

}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  using dilated_attention::attention_args_schema;
  using dilated_attention::SchemaDefaults;
  const std::string packed = "Tensor query, Tensor key, Tensor value, ";
  const std::string op = "dilated_attention_varlen(" + packed +
                         "Tensor cu_seqlens, int max_seqlen, " + attention_args_schema() +
                         ") -> Tensor";
  const std::string forward = "_dilated_attention_varlen_forward(" + packed +
                              "Tensor cu_seqlens, int max_seqlen, " +
                              attention_args_schema(SchemaDefaults::kWithout) +
                              ") -> (Tensor output, Tensor softmax_lse, Tensor rng_state)";
  const std::string backward =
      "_dilated_attention_varlen_backward(Tensor grad_output, " + packed +
      "Tensor output, Tensor softmax_lse, Tensor rng_state, Tensor cu_seqlens, int max_seqlen, " +
      attention_args_schema(SchemaDefaults::kWithout) +
      ") -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)";
  m.def(op.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(forward.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(backward.c_str(), {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(dilated_attention, CompositeExplicitAutograd, m) {
  m.impl("dilated_attention_varlen", &dilated_attention::varlen_attention_op);
  m.impl("_dilated_attention_varlen_forward", &dilated_attention::varlen_attention_forward_op);
  m.impl("_dilated_attention_varlen_backward", &dilated_attention::varlen_attention_backward_op);
}

TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) {
  m.impl("dilated_attention_varlen", &dilated_attention::varlen_attention_meta);
  m.impl("_dilated_attention_varlen_forward", &dilated_attention::varlen_attention_forward_meta);
  m.impl("_dilated_attention_varlen_backward", &dilated_attention::varlen_attention_backward_meta);
}
