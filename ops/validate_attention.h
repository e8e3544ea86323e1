// Checks of the shared attention arguments and of query / key / value, used by every op family.
// Each raises ValueError (TORCH_CHECK_VALUE) naming the argument and the expected value, before
// any work. The error phrases live here, once: users' code and tests match them verbatim.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "ops/attention_args.h"

namespace dilated_attention {

// segment_lengths / dilation_rates / dropout_p / scale, independent of the tensors.
void check_attention_args(const AttentionArgs& args);

// query / key / value: 4-D, one device, one supported dtype; key and value [B, N, H_kv, D] with
// H_kv dividing query's H (grouped-query attention; H_kv = H is plain multi-head attention).
void check_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value);

// The decoding layout of dilated_attention_with_kv_cache: query [B, Nq, H, D] the last Nq
// positions of key / value [B, Nk, H_kv, D] (cache and new tokens), Nq <= Nk.
void check_cached_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                                   const at::Tensor& value);

// The packed layout of dilated_attention_varlen: query [T, H, D], key / value [T, H_kv, D].
void check_packed_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                                   const at::Tensor& value);

// scale within the range of the kernels' compute dtype (float32, float64 for float64 inputs).
void check_scale_representable(const at::Tensor& query, const AttentionArgs& args);

// The scores scale * q.k within the compute dtype's range, bounded by |scale| * D * max|q| *
// max|k| over the finite entries. Reads q and k, so real tensors only, and only for |scale| > 1
// (the default is 1/sqrt(D)): with |scale| <= 1 scores overflow float32 only for inputs near its
// own limits, as in any float32 attention.
void check_scores_representable(const at::Tensor& query, const at::Tensor& key,
                                const AttentionArgs& args);

// The heads against the config: H >= G, every group's offset inside its segment.
void check_head_groups(const c10::SymInt& num_heads, const AttentionArgs& args);

// The sequence layout against the config: check_head_groups, and every s_g divides N.
// Works on symbolic sizes (Meta / torch.compile) too.
void check_sequence_layout(const c10::SymInt& seq_len, const c10::SymInt& num_heads,
                           const AttentionArgs& args);

// What the kernels of the query's device can take (dtype, head dim, dropout, a key padding
// mask). Real devices only: Meta tensors stand for any device.
void check_device_supports(const at::Tensor& query, const AttentionArgs& args,
                           const std::optional<at::Tensor>& key_padding_mask);

// key_padding_mask: none, or a bool [B, rows] tensor on the query's device, where rows is the
// query's sequence dimension (this rank's rows for the sharded ops).
void check_key_padding_mask(const at::Tensor& query,
                            const std::optional<at::Tensor>& key_padding_mask);
// The same against the batch and sequence sizes of `rows_of`, which the error describes as
// `expected_rows` (the key's, for a cache).
void check_key_padding_mask(const at::Tensor& rows_of,
                            const std::optional<at::Tensor>& key_padding_mask,
                            const char* expected_rows);

// The tensors the internal backward ops take besides query / key / value, which a caller of
// torch.ops may pass by hand: grad_output and output of the query's shape, dtype and device;
// softmax_lse of `lse_sizes`, the query's device and its compute dtype (float32, float64 for
// float64); rng_state kRngStateSize int64 values.
void check_backward_inputs(const at::Tensor& grad_output, const at::Tensor& query,
                           const at::Tensor& output, const at::Tensor& softmax_lse,
                           const at::Tensor& rng_state, c10::SymIntArrayRef lse_sizes);

// All of the above but the device and backward checks, for dilated_attention's arguments.
void check_dilated_attention_call(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, const AttentionArgs& args,
                                  const std::optional<at::Tensor>& key_padding_mask);

// The same for longnet_attention, which takes any sequence length and any number of heads (a
// branch's segments end at N, an offset without heads is empty): no layout check.
void check_longnet_attention_call(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, const AttentionArgs& args,
                                  const std::optional<at::Tensor>& key_padding_mask);

}  // namespace dilated_attention
