// _distributed_dilated_attention: the one internal op family behind all eight distributed names
// (registration/named_ops.cpp maps each name to a backend). Schemas, CPU and Meta kernels of
// the op and of its forward / backward; autograd is in distributed_attention_autograd.cpp.
#include "ops/distributed_attention_op.h"

#include <ATen/DeviceGuard.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops/attention_config.h"
#include "ops/config_agreement.h"
#include "ops/distributed_context.h"
#include "ops/replicated_attention.h"
#include "ops/sharded_attention.h"
#include "ops/validation.h"

namespace dilated_attention {
namespace {

struct DistributedCall {
  DistributedBackend backend;
  std::shared_ptr<comm::Communicator> comm;
};

// Resolves the group and the backend, and validates everything before any work.
DistributedCall prepare(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                        at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                        double dropout_p, std::optional<double> scale,
                        const std::string& group_name, const std::string& backend) {
  check_dilation_config(segment_lengths, dilation_rates, dropout_p, scale);
  check_attention_inputs(query, key, value);
  DistributedCall call{parse_backend(backend), communicator_for(group_name)};
  check_distributed_layout(query, segment_lengths, dilation_rates, call.comm->size(),
                           is_sharded(call.backend),
                           call.backend == DistributedBackend::kReplicatedHeads);
  return call;
}

ShardedAttentionConfig sharded_config(const AttentionConfig& attention, const at::Tensor& query,
                                      const DistributedCall& call) {
  const int size = call.comm->size();
  return {attention, {query.size(1) * size, size}, exchange_of(call.backend)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_dense(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend) {
  // Kernels launch on the inputs' device and its current stream.
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  const auto call = prepare(query, key, value, segment_lengths, dilation_rates, dropout_p, scale,
                            std::string(group_name), std::string(backend));
  auto& comm = *call.comm;
  if (call.backend == DistributedBackend::kCheckedSegmentRing) {
    check_ranks_agree(comm, query, segment_lengths, dilation_rates, dropout_p, is_causal, scale);
  }
  const uint64_t seed = draw_dropout_seed(dropout_p);
  const auto attention = make_attention_config(query.size(2), query.size(3), segment_lengths,
                                               dilation_rates, dropout_p, is_causal, scale, seed);
  comm.reset_bytes_sent();
  auto [out, lse] =
      is_sharded(call.backend)
          ? sharded_attention_forward(comm, query, key, value,
                                      sharded_config(attention, query, call))
          : replicated_attention_forward(comm, query, key, value, attention,
                                         call.backend == DistributedBackend::kReplicatedHeads);
  record_bytes_sent(comm.bytes_sent());
  return {out, lse, pack_rng_state(seed, query.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_dense(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend) {
  // Kernels launch on the inputs' device and its current stream.
  const at::OptionalDeviceGuard device_guard(at::device_of(query));
  const auto call = prepare(query, key, value, segment_lengths, dilation_rates, dropout_p, scale,
                            std::string(group_name), std::string(backend));
  auto& comm = *call.comm;
  const auto attention =
      make_attention_config(query.size(2), query.size(3), segment_lengths, dilation_rates,
                            dropout_p, is_causal, scale, unpack_dropout_seed(rng_state));
  comm.reset_bytes_sent();
  auto grads = is_sharded(call.backend)
                   ? sharded_attention_backward(comm, grad_output, query, key, value, output,
                                                softmax_lse, sharded_config(attention, query, call))
                   : replicated_attention_backward(
                         comm, grad_output, query, key, value, output, softmax_lse, attention,
                         call.backend == DistributedBackend::kReplicatedHeads);
  record_bytes_sent(comm.bytes_sent());
  return grads;
}

at::Tensor distributed_dense(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, at::IntArrayRef segment_lengths,
                             at::IntArrayRef dilation_rates, double dropout_p, bool is_causal,
                             std::optional<double> scale, c10::string_view group_name,
                             c10::string_view backend) {
  return std::get<0>(forward_dense(query, key, value, segment_lengths, dilation_rates, dropout_p,
                                   is_causal, scale, group_name, backend));
}

// Meta: the output has the query's shape in both contracts; the log-sum-exp covers this rank's
// rows (sharded, replicated rows) or heads (replicated heads).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend) {
  const auto call = prepare(query, key, value, segment_lengths, dilation_rates, dropout_p, scale,
                            std::string(group_name), std::string(backend));
  const int size = call.comm->size();
  c10::SymInt rows = query.sym_size(1), heads = query.sym_size(2);
  if (call.backend == DistributedBackend::kReplicatedRows) rows = rows / size;
  if (call.backend == DistributedBackend::kReplicatedHeads) heads = heads / size;
  auto lse = at::empty_symint({query.sym_size(0), rows, heads},
                              query.options().dtype(at::toOpMathType(query.scalar_type())));
  return {at::empty_symint(query.sym_sizes(), query.options()), lse,
          at::empty({kRngStateSize}, query.options().dtype(at::kLong))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend) {
  prepare(query, key, value, segment_lengths, dilation_rates, dropout_p, scale,
          std::string(group_name), std::string(backend));
  auto like = [&] { return at::empty_symint(query.sym_sizes(), query.options()); };
  return {like(), like(), like()};
}

at::Tensor distributed_meta(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                            at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                            double dropout_p, bool is_causal, std::optional<double> scale,
                            c10::string_view group_name, c10::string_view backend) {
  return std::get<0>(forward_meta(query, key, value, segment_lengths, dilation_rates, dropout_p,
                                  is_causal, scale, group_name, backend));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p,
    bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_distributed_dilated_attention_forward", "")
          .typed<decltype(forward_dense)>();
  return op.call(query, key, value, segment_lengths, dilation_rates, dropout_p, is_causal, scale,
                 group_name, backend);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_distributed_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& softmax_lse,
    const at::Tensor& rng_state, at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    double dropout_p, bool is_causal, std::optional<double> scale, c10::string_view group_name,
    c10::string_view backend) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("dilated_attention::_distributed_dilated_attention_backward", "")
          .typed<decltype(backward_dense)>();
  return op.call(grad_output, query, key, value, output, softmax_lse, rng_state, segment_lengths,
                 dilation_rates, dropout_p, is_causal, scale, group_name, backend);
}

}  // namespace dilated_attention

TORCH_LIBRARY_FRAGMENT(dilated_attention, m) {
  const std::string core_args =
      "Tensor query, Tensor key, Tensor value, int[] segment_lengths, int[] dilation_rates, "
      "float dropout_p=0.0, bool is_causal=False, float? scale=None, str group_name=\"\", "
      "str backend=\"segment_ring\"";
  const std::string op_schema = "_distributed_dilated_attention(" + core_args + ") -> Tensor";
  const std::string forward_schema = "_distributed_dilated_attention_forward(" + core_args +
                                     ") -> (Tensor output, Tensor softmax_lse, Tensor rng_state)";
  m.def(op_schema.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(forward_schema.c_str(), {at::Tag::pt2_compliant_tag});
  m.def(
      "_distributed_dilated_attention_backward(Tensor grad_output, Tensor query, Tensor key, "
      "Tensor value, Tensor output, Tensor softmax_lse, Tensor rng_state, int[] segment_lengths, "
      "int[] dilation_rates, float dropout_p, bool is_causal, float? scale, str group_name, "
      "str backend) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value)",
      {at::Tag::pt2_compliant_tag});
}

// The dense kernels are device-generic (ATen views, copies and the attention kernel
// block_attention picks), so CPU and CUDA register the same functions.
TORCH_LIBRARY_IMPL(dilated_attention, CPU, m) {
  m.impl("_distributed_dilated_attention", &dilated_attention::distributed_dense);
  m.impl("_distributed_dilated_attention_forward", &dilated_attention::forward_dense);
  m.impl("_distributed_dilated_attention_backward", &dilated_attention::backward_dense);
}

TORCH_LIBRARY_IMPL(dilated_attention, CUDA, m) {
  m.impl("_distributed_dilated_attention", &dilated_attention::distributed_dense);
  m.impl("_distributed_dilated_attention_forward", &dilated_attention::forward_dense);
  m.impl("_distributed_dilated_attention_backward", &dilated_attention::backward_dense);
}

TORCH_LIBRARY_IMPL(dilated_attention, Meta, m) {
  m.impl("_distributed_dilated_attention", &dilated_attention::distributed_meta);
  m.impl("_distributed_dilated_attention_forward", &dilated_attention::forward_meta);
  m.impl("_distributed_dilated_attention_backward", &dilated_attention::backward_meta);
}
