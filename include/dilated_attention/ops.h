// The C++ API of libdilated_attention_ops for LibTorch programs. Each function calls the
// registered operator through the dispatcher, so autograd, device dispatch and tracing apply
// exactly as from Python. With CMake:
//   find_package(dilated_attention_ops REQUIRED)
//   target_link_libraries(app PRIVATE dilated_attention_ops::dilated_attention_ops)
// See README.md for the math and the distributed contracts.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>

namespace dilated_attention {

// Dilated attention of [B, N, H, D] query and [B, N, H_kv, D] key / value, H_kv dividing H (the
// op dilated_attention::dilated_attention). key_padding_mask: bool [B, N], True = padded key.
at::Tensor dilated_attention(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, at::IntArrayRef segment_lengths,
                             at::IntArrayRef dilation_rates, double dropout_p = 0.0,
                             bool is_causal = false, std::optional<double> scale = std::nullopt,
                             const std::optional<at::Tensor>& key_padding_mask = std::nullopt);

// Packed variable-length sequences (the op dilated_attention::dilated_attention_varlen): query
// [T, H, D], key / value [T, H_kv, D], cu_seqlens int32 / int64 [S + 1] from 0 to T; each
// sequence attended alone, its last segment truncated at its end.
at::Tensor dilated_attention_varlen(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, const at::Tensor& cu_seqlens,
                                    int64_t max_seqlen, at::IntArrayRef segment_lengths,
                                    at::IntArrayRef dilation_rates, double dropout_p = 0.0,
                                    bool is_causal = false,
                                    std::optional<double> scale = std::nullopt);

// LongNet's combination (the op dilated_attention::longnet_attention): every head in every
// (segment, rate) branch, branches weighted by their softmax denominators; any N (a branch's
// last segment ends at N). Shapes and key_padding_mask as dilated_attention's.
at::Tensor longnet_attention(const at::Tensor& query, const at::Tensor& key,
                             const at::Tensor& value, at::IntArrayRef segment_lengths,
                             at::IntArrayRef dilation_rates, double dropout_p = 0.0,
                             bool is_causal = false, std::optional<double> scale = std::nullopt,
                             const std::optional<at::Tensor>& key_padding_mask = std::nullopt);

// The decoding op (dilated_attention::dilated_attention_with_kv_cache): query [B, Nq, H, D] the
// last Nq positions of causal sequences whose keys and values, cache and new tokens, are key /
// value [B, Nk, H_kv, D] (any strides: transformers' [B, H_kv, Nk, D] cache transposed is read in
// place). Equals the last Nq rows of dilated_attention_varlen over [0, Nk] (longnet: of
// longnet_attention) at a cost per token independent of Nk. key_padding_mask bool [B, Nk];
// sequence_starts int64 [B]: row b's sequence begins at key sequence_starts[b]. Forward only.
at::Tensor dilated_attention_with_kv_cache(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates,
    std::optional<double> scale = std::nullopt,
    const std::optional<at::Tensor>& key_padding_mask = std::nullopt,
    const std::optional<at::Tensor>& sequence_starts = std::nullopt, bool longnet = false);

// The recommended sequence-parallel op: this rank's rows [B, N/P, H, D] of q, k, v in, the same
// rows of the output out. group_name: the c10d group's name ("" = one process);
// key_padding_mask: this rank's rows [B, N/P].
at::Tensor ring_dilated_attention_hybrid_optimized_v2(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p = 0.0,
    bool is_causal = false, std::optional<double> scale = std::nullopt,
    c10::string_view group_name = "",
    const std::optional<at::Tensor>& key_padding_mask = std::nullopt);

// longnet_attention over a sequence sharded across the group's ranks (the op
// dilated_attention::ring_longnet_attention): this rank's rows [B, N/P, H, D] in and out, the
// segment ring's exchange; key_padding_mask: this rank's rows [B, N/P].
at::Tensor ring_longnet_attention(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, at::IntArrayRef segment_lengths,
                                  at::IntArrayRef dilation_rates, double dropout_p = 0.0,
                                  bool is_causal = false,
                                  std::optional<double> scale = std::nullopt,
                                  c10::string_view group_name = "",
                                  const std::optional<at::Tensor>& key_padding_mask = std::nullopt);

// The same with the production safeguards (agreement check, bounded waits naming the peer).
at::Tensor ring_dilated_attention_production(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    at::IntArrayRef segment_lengths, at::IntArrayRef dilation_rates, double dropout_p = 0.0,
    bool is_causal = false, std::optional<double> scale = std::nullopt,
    c10::string_view group_name = "",
    const std::optional<at::Tensor>& key_padding_mask = std::nullopt);

}  // namespace dilated_attention
