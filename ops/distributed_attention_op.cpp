// _distributed_dilated_attention: schemas and the device-generic and Meta kernels of the op and
// of its forward / backward; autograd is in distributed_attention_autograd.cpp.
#include "ops/distributed_attention_op.h"

#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <exception>
#include <optional>
#include <vector>

#include "ops/attention_config.h"
#include "ops/config_agreement.h"
#include "ops/distributed_context.h"
#include "ops/replicated_attention.h"
#include "ops/sharded_attention.h"
#include "ops/validate_attention.h"
#include "ops/validate_distributed.h"

namespace dilated_attention {
namespace {

struct DistributedCall {
  DistributedBackend backend;
  std::shared_ptr<comm::Communicator> comm;
};

// The backend and the group's communicator: what a call needs before it can tell its peers
// anything. Unknown names raise here.
DistributedCall resolve(c10::string_view group_name, c10::string_view backend) {
  return {parse_backend(backend), communicator_for(std::string(group_name))};
}

// Everything one rank can check alone about a call (no RNG draw, allocation or transfer).
void check_call(const DistributedCall& call, const at::Tensor& query, const at::Tensor& key,
                const at::Tensor& value, const AttentionArgs& args,
                const std::optional<at::Tensor>& key_padding_mask) {
  check_attention_args(args);
  check_attention_inputs(query, key, value);
  check_key_padding_mask(query, key_padding_mask);
  check_scale_representable(query, args);
  check_distributed_layout(query, key, args, call.comm->size(), call.backend);
}

// For the Meta kernels, which never communicate.
DistributedCall prepare(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                        const AttentionArgs& args, c10::string_view group_name,
                        c10::string_view backend,
                        const std::optional<at::Tensor>& key_padding_mask) {
  auto call = resolve(group_name, backend);
  check_call(call, query, key, value, args, key_padding_mask);
  return call;
}

// The error `checks` raise, or null: a refused call still takes part in the ranks' agreement,
// so its peers raise too instead of waiting for it.
template <typename Checks>
std::exception_ptr refusal_of(Checks&& checks) {
  try {
    checks();
  } catch (const c10::Error&) {
    return std::current_exception();
  }
  return nullptr;
}

ShardedAttentionConfig sharded_config(const AttentionConfig& attention, const at::Tensor& query,
                                      const DistributedCall& call) {
  const int size = call.comm->size();
  return {attention, {query.size(1) * size, size}, exchange_of(call.backend)};
}

// The groups and scales of the whole op (N = this rank's rows times P for sharded contracts).
AttentionConfig attention_config(const at::Tensor& query, const at::Tensor& key,
                                 const AttentionArgs& args, const DistributedCall& call,
                                 uint64_t seed) {
  if (call.backend == DistributedBackend::kLongNetSegmentRing) {
    return make_longnet_config(query.size(2), key.size(2), query.size(3),
                               query.size(1) * call.comm->size(), args, seed);
  }
  return make_attention_config(query.size(2), key.size(2), query.size(3), args, seed);
}

bool splits_heads(const DistributedCall& call) {
  return call.backend == DistributedBackend::kReplicatedHeads;
}

// The log-sum-exp covers this rank's rows (sharded, replicated rows) or heads (replicated heads).
std::vector<c10::SymInt> lse_sizes_of(const at::Tensor& query, const DistributedCall& call) {
  const int size = call.comm->size();
  c10::SymInt rows = query.sym_size(1), heads = query.sym_size(2);
  if (call.backend == DistributedBackend::kReplicatedRows) rows = rows / size;
  if (splits_heads(call)) heads = heads / size;
  return {query.sym_size(0), rows, heads};
}

// The backward's other tensors, with lse_sizes_of for the backend.
void check_backward_call(const DistributedCall& call, const at::Tensor& grad_output,
                         const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                         const at::Tensor& output, const at::Tensor& softmax_lse,
                         const at::Tensor& rng_state, const AttentionArgs& args,
                         const std::optional<at::Tensor>& key_padding_mask) {
  check_call(call, query, key, value, args, key_padding_mask);
  check_backward_inputs(grad_output, query, output, softmax_lse, rng_state,
                        lse_sizes_of(query, call));
}

// Meta: the output has the query's shape in both contracts.
std::tuple<at::Tensor, at::Tensor, at::Tensor> distributed_attention_forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name, c10::string_view backend,
    const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  const auto call = prepare(query, key, value, args, group_name, backend, key_padding_mask);
  auto lse = at::empty_symint(lse_sizes_of(query, call),
                              query.options().dtype(at::toOpMathType(query.scalar_type())));
  return {at::empty_symint(query.sym_sizes(), query.options()), lse,
          at::empty({kRngStateSize}, query.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distributed_attention_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name,
    c10::string_view backend, const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  const auto call = resolve(group_name, backend);
  check_backward_call(call, grad_output, query, key, value, output, softmax_lse, rng_state, args,
                      key_padding_mask);
  auto like = [](const at::Tensor& x) { return at::empty_symint(x.sym_sizes(), x.options()); };
  return {like(query), like(key), like(value)};
}

at::Tensor distributed_attention_meta(const at::Tensor& query, const at::Tensor& key,
                                      const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                      c10::string_view group_name, c10::string_view backend,
                                      const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  return std::get<0>(args.unpack([&](auto... shared) {
    return distributed_attention_forward_meta(query, key, value, shared..., group_name, backend,
                                              key_padding_mask);
  }));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> distributed_attention_forward_op(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name, c10::string_view backend,
    const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  const auto call = resolve(group_name, backend);
  const auto refusal = refusal_of([&] {
    check_call(call, query, key, value, args, key_padding_mask);
    check_device_supports(query, args, key_padding_mask);
    check_scores_representable(query, key, args);
  });
  const ExclusiveGroupUse group_in_use{std::string(group_name)};
  // Kernels launch on the inputs' device and its current stream.
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  auto& comm = *call.comm;
  check_ranks_agree(comm, query, key, key_padding_mask, args, call.backend, Pass::kForward,
                    refusal);
  const uint64_t seed = draw_dropout_seed(args);
  const auto attention = attention_config(query, key, args, call, seed);
  comm.reset_bytes_sent();
  auto [out, lse] =
      is_sharded(call.backend)
          ? sharded_attention_forward(comm, query, key, value, mask_or_undefined(key_padding_mask),
                                      sharded_config(attention, query, call))
          : replicated_attention_forward(comm, query, key, value,
                                         mask_or_undefined(key_padding_mask), attention,
                                         splits_heads(call));
  record_bytes_sent(comm.bytes_sent());
  return {out, lse, pack_rng_state(seed, args, query.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> distributed_attention_backward_op(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, DILATED_ATTENTION_ARGS_PARAMS, c10::string_view group_name,
    c10::string_view backend, const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  const auto call = resolve(group_name, backend);
  const auto refusal = refusal_of([&] {
    check_backward_call(call, grad_output, query, key, value, output, softmax_lse, rng_state, args,
                        key_padding_mask);
    check_device_supports(query, args, key_padding_mask);
    check_scores_representable(query, key, args);
  });
  const ExclusiveGroupUse group_in_use{std::string(group_name)};
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  auto& comm = *call.comm;
  check_ranks_agree(comm, query, key, key_padding_mask, args, call.backend, Pass::kBackward,
                    refusal);
  const auto attention =
      attention_config(query, key, args, call, unpack_dropout_seed(rng_state, args));
  comm.reset_bytes_sent();
  auto grads = is_sharded(call.backend)
                   ? sharded_attention_backward(comm, grad_output, query, key, value,
                                                mask_or_undefined(key_padding_mask), output,
                                                softmax_lse, sharded_config(attention, query, call))
                   : replicated_attention_backward(comm, grad_output, query, key, value,
                                                   mask_or_undefined(key_padding_mask), output,
                                                   softmax_lse, attention, splits_heads(call));
  record_bytes_sent(comm.bytes_sent());
  return grads;
}

at::Tensor distributed_attention_op(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, DILATED_ATTENTION_ARGS_PARAMS,
                                    c10::string_view group_name, c10::string_view backend,
                                    const std::optional<at::Tensor>& key_padding_mask) {
  const auto args = DILATED_ATTENTION_ARGS_COLLECT();
  return std::get<0>(args.unpack([&](auto... shared) {
    return distributed_attention_forward_op(query, key, value, shared..., group_name, backend,
                                            key_padding_mask);
  }));
}

void check_before_distributed_call(const at::Tensor& input, const AttentionArgs& args,
                                   const DistributedTarget& target,
                                   const std::function<void()>& checks) {
  const auto refusal = refusal_of(checks);
  if (!refusal) return;
  const bool tracing = input.is_meta() || input.key_set().has(c10::DispatchKey::Python);
  std::optional<DistributedCall> call;
  if (!tracing) {
    // An unknown group or backend: there are no peers to tell; the checks' error is raised.
    call = [&]() -> std::optional<DistributedCall> {
      try {
        return resolve(target.group_name, target.backend);
      } catch (const c10::Error&) {
        return std::nullopt;
      }
    }();
  }
  if (call) {
    const ExclusiveGroupUse group_in_use{target.group_name};
    check_ranks_agree(*call->comm, input, input, std::nullopt, args, call->backend, Pass::kForward,
                      refusal);
  }
  std::rethrow_exception(refusal);
}

at::Tensor call_distributed_attention(const at::Tensor& query, const at::Tensor& key,
                                      const at::Tensor& value, const AttentionArgs& args,
                                      const DistributedTarget& target,
                                      const std::optional<at::Tensor>& key_padding_mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dilated_attention::_distributed_dilated_attention", "")
                       .typed<decltype(distributed_attention_op)>();
  return args.unpack([&](auto... shared) {
    return op.call(query, key, value, shared..., target.group_name, target.backend,
                   key_padding_mask);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const AttentionArgs& args, const DistributedTarget& target,
    const std::optional<at::Tensor>& key_padding_mask) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_distributed_dilated_attention_forward", "")
          .typed<decltype(distributed_attention_forward_op)>();
  return args.unpack([&](auto... shared) {
    return op.call(query, key, value, shared..., target.group_name, target.backend,
                   key_padding_mask);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, const AttentionArgs& args, const DistributedTarget& target,
    const std::optional<at::Tensor>& key_padding_mask) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_distributed_dilated_attention_backward", "")
          .typed<decltype(distributed_attention_backward_op)>();
  return args.unpack([&](auto... shared) {
    return op.call(grad_output, query, key, value, output, softmax_lse, rng_state, shared...,
                   target.group_name, target.backend, key_padding_mask);
  });
}

}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  using dilated_attention::attention_args_schema;
  using dilated_attention::kKeyPaddingMaskSchema;
  using dilated_attention::SchemaDefaults;
  const std::string inputs = "(Tensor query, Tensor key, Tensor value, " + attention_args_schema() +
                             ", str group_name=\"\", str backend=\"segment_ring\", " +
                             kKeyPaddingMaskSchema + ")";
  const std::string op = "_distributed_dilated_attention" + inputs + " -> Tensor";
  const std::string forward = "_distributed_dilated_attention_forward" + inputs +
                              " -> (Tensor output, Tensor softmax_lse, Tensor rng_state)";
  const std::string backward =
      "_distributed_dilated_attention_backward(Tensor grad_output, Tensor query, Tensor key, "
      "Tensor value, Tensor output, Tensor softmax_lse, Tensor rng_state, " +
      attention_args_schema(SchemaDefaults::kWithout) + ", str group_name, str backend, " +
      kKeyPaddingMaskSchema + ") -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)";
  m.def(op.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(forward.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(backward.c_str(), {at::Tag::pt2_compliant_tag});
}

// Device-generic: the device's attention and merge kernels come from kernels/device_kernels.h.
TORCH_LIBRARY_IMPL(dilated_attention, CompositeExplicitAutograd, m) {
  m.impl("_distributed_dilated_attention", &dilated_attention::distributed_attention_op);
  m.impl("_distributed_dilated_attention_forward",
         &dilated_attention::distributed_attention_forward_op);
  m.impl("_distributed_dilated_attention_backward",
         &dilated_attention::distributed_attention_backward_op);
}

TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) {
  m.impl("_distributed_dilated_attention", &dilated_attention::distributed_attention_meta);
  m.impl("_distributed_dilated_attention_forward",
         &dilated_attention::distributed_attention_forward_meta);
  m.impl("_distributed_dilated_attention_backward",
         &dilated_attention::distributed_attention_backward_meta);
}
