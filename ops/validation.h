// Argument checks shared by every op of the library. Each raises ValueError (TORCH_CHECK_VALUE)
// naming the argument and the expected value, before any work. The error phrases live here,
// once: users' code and tests match them verbatim.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace dilated_attention {

// segment_lengths / dilation_rates / dropout_p / scale, independent of the tensors.
void check_dilation_config(at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
                           double dropout_p, std::optional<double> scale);

// query / key / value: 4-D, equal shapes, one device, one supported dtype.
void check_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value);

// The sequence layout against the config: H >= G, every s_g divides N, offsets inside segments.
// Works on symbolic sizes (Meta / torch.compile) too.
void check_sequence_layout(const c10::SymInt& seq_len, const c10::SymInt& num_heads,
                           at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates);

// All of the above for dilated_attention's arguments.
void check_dilated_attention_args(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, at::IntArrayRef segment_lengths,
                                  at::IntArrayRef dilation_rates, double dropout_p,
                                  std::optional<double> scale);

// 1/sqrt(D) unless a scale is given.
double resolve_scale(std::optional<double> scale, int64_t head_dim);

}  // namespace dilated_attention

namespace dilated_attention {

// Distributed ops: the core checks against the whole sequence (N = rows per rank * world size
// for sharded backends), plus what the backend's partition needs.
void check_distributed_layout(const at::Tensor& query, at::IntArrayRef segment_lengths,
                              at::IntArrayRef dilation_rates, int world_size, bool sharded,
                              bool splits_heads);

}  // namespace dilated_attention

namespace dilated_attention {

// Multi-head wrappers: x is [B, N, E] with E = embed_dim and E divisible by num_heads.
void check_multihead_input(const at::Tensor& x, const char* name, const c10::SymInt& embed_dim,
                           int64_t num_heads);

}  // namespace dilated_attention
