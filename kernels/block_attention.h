// One batched attention call over [B', h, Lq, D] query and [B', h_kv, Lk, D] key/value views
// (h_kv divides h: query head i reads key/value head i / (h / h_kv)), run
// by the kernels of the tensors' device (kernels/device_kernels.h), returning what every caller
// needs: the output and the per-row log-sum-exp (for backward, and for merging the blocks of a
// ring).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "kernels/block_options.h"

namespace dilated_attention {

// Whether a key block is all its query rows see, or one of several blocks merged afterwards
// (the blocks of a ring). A row with no visible score above -inf is NaN, as a softmax over
// nothing, but only the merged row can tell: a piece gives it log-sum-exp -inf (nothing to
// merge), and with_unseen_rows_as_nan below finishes the merged result.
enum class KeyCoverage { kWholeRow, kPieceOfRow };

// Whether a block of `keys` keys takes the exact NaN/inf handling of the kernels (causal blocks,
// short blocks, scale 0), which starts with a check of the block's inputs: callers that split
// tensors into many such blocks check the whole tensors once instead, where the device checks on
// the host (BlockOptions::may_hold_non_finite).
bool takes_non_finite_handling(const at::Tensor& q, const BlockOptions& options, int64_t keys);

// Whether block_attention_forward (and _backward) of these views is the device's Forward
// (Backward) alone, with rows that see no key zeroed (given no gradient): no causal pieces, no
// marked rows, no zero or negative scale to rewrite.
bool block_attention_is_the_kernel_alone(const at::Tensor& q, const at::Tensor& k,
                                         const BlockOptions& options);

// Rows [B', Lq] that see no key at all: every key they may see (all, or 0..i in a causal block)
// is padding. Undefined without a key_padding_mask.
at::Tensor rows_without_keys(const BlockOptions& options, int64_t query_rows);

// Returns (output [B', h, Lq, D] in the input dtype, log-sum-exp [B', h, Lq] in the
// accumulation dtype). Rows that see no key (options.key_padding) give 0 with log-sum-exp -inf.
std::tuple<at::Tensor, at::Tensor> block_attention_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const BlockOptions& options,
    KeyCoverage coverage = KeyCoverage::kWholeRow);

// A merged result's rows whose log-sum-exp is -inf made NaN, where the device checks non-finite
// values on the host (DeviceKernels::checks_non_finite_on_host), except `rows_without_keys`
// ([B', Lq] or [B', 1, Lq] bool, or undefined): rows whose every key is padding, which stay 0.
std::tuple<at::Tensor, at::Tensor> with_unseen_rows_as_nan(
    at::Tensor out, at::Tensor lse, const at::Tensor& rows_without_keys = at::Tensor());

// Gradients of <grad_out, out> with respect to q, k, v, where `out` and `lse` are the output and
// log-sum-exp of the attention over ALL key blocks of these queries (so the weights this block
// recomputes are the globally normalised ones).
std::tuple<at::Tensor, at::Tensor, at::Tensor> block_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options);

}  // namespace dilated_attention
