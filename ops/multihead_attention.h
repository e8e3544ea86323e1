// Multi-head wrappers around the distributed attention: input projections, the attention on
// [B, N, heads, E / heads], head merge, output projection. Built only from dispatcher ops
// (registered CompositeImplicitAutograd), so autograd and Meta come from the ops they call.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "ops/attention_args.h"
#include "ops/distributed_attention_op.h"

namespace dilated_attention {

// The input and output projections of the query/key/value wrappers, in schema order.
inline constexpr const char* kProjectionsSchema =
    "Tensor q_weight, Tensor? q_bias, Tensor k_weight, Tensor? k_bias, Tensor v_weight, "
    "Tensor? v_bias, Tensor out_weight, Tensor? out_bias";

// The C++ parameters of kProjectionsSchema, as the dispatcher passes them.
#define DILATED_ATTENTION_PROJECTIONS_PARAMS                                                      \
  const at::Tensor &q_weight, const std::optional<at::Tensor>&q_bias, const at::Tensor &k_weight, \
      const std::optional<at::Tensor>&k_bias, const at::Tensor &v_weight,                         \
      const std::optional<at::Tensor>&v_bias, const at::Tensor &out_weight,                       \
      const std::optional<at::Tensor>&out_bias

// The struct of DILATED_ATTENTION_PROJECTIONS_PARAMS, in a function that takes them.
#define DILATED_ATTENTION_PROJECTIONS_COLLECT()                                \
  ::dilated_attention::Projections {                                           \
    q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias \
  }

// References to the caller's tensors: a Projections never outlives the op call that made it.
struct Projections {
  const at::Tensor& q_weight;
  const std::optional<at::Tensor>& q_bias;
  const at::Tensor& k_weight;
  const std::optional<at::Tensor>& k_bias;
  const at::Tensor& v_weight;
  const std::optional<at::Tensor>& v_bias;
  const at::Tensor& out_weight;
  const std::optional<at::Tensor>& out_bias;
};

// _multihead_dilated_attention(Tensor query, Tensor key, Tensor value, <projections>,
//   int num_heads, <shared args>, str group_name="", str backend="segment_ring",
//   Tensor? key_padding_mask=None) -> Tensor
at::Tensor projected_attention_op(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, DILATED_ATTENTION_PROJECTIONS_PARAMS,
                                  int64_t num_heads, DILATED_ATTENTION_ARGS_PARAMS,
                                  c10::string_view group_name, c10::string_view backend,
                                  const std::optional<at::Tensor>& key_padding_mask);

// The same, with the projections and the shared arguments gathered. key_padding_mask [B, N]
// masks the keys (the rows of `key`).
at::Tensor projected_attention(const at::Tensor& query, const at::Tensor& key,
                               const at::Tensor& value, const Projections& projections,
                               int64_t num_heads, const AttentionArgs& args,
                               const DistributedTarget& target,
                               const std::optional<at::Tensor>& key_padding_mask);

// Self-attention on x [B, N, E] with one fused [3E, E] projection (q, k, v in that order).
at::Tensor fused_self_attention(const at::Tensor& x, const at::Tensor& qkv_weight,
                                const std::optional<at::Tensor>& qkv_bias,
                                const at::Tensor& out_weight,
                                const std::optional<at::Tensor>& out_bias, int64_t num_heads,
                                const AttentionArgs& args, const DistributedTarget& target,
                                const std::optional<at::Tensor>& key_padding_mask);

}  // namespace dilated_attention
