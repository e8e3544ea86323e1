// Our fused attention forward and backward on the CPU, for the calls where they beat ATen's CPU
// flash kernel (which the CPU's kernel table uses otherwise). Query blocks run an online softmax
// over key blocks; the products go through oneDNN's brgemm microkernel
// (at::native::cpublas::brgemm): bfloat16 with bf16 dot products into float32 accumulators,
// float32 with FMAs, float16 widened to float32 as it is packed. Keys and values of one (view
// batch, key head) are packed once into the layouts the microkernel reads (the transposed keys; for
// bfloat16 the VNNI pairs of rows), so strided group views are read in place and never gathered per
// query head.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>
#include <vector>

#include "kernels/block_options.h"
#include "kernels/device_kernels.h"

namespace dilated_attention {

enum class FusedPass { kForward, kBackward };

// Whether the fused kernel takes this pass of a call: a dtype and head dim it computes, on a CPU
// where it was measured faster than ATen's kernel (flash_attention_cpu.cpp says where); with
// dropout too (the mask of kernels/index/dropout_mask.h, drawn per key block, the same mask the
// dropout kernel draws). DILATED_ATTENTION_CPU_ATTENTION=aten never takes it (ATen's kernel, or
// our dropout kernel), =fused takes it wherever it can run, =fused-backward for the backward
// only (so the tests compare every pairing on one machine).
bool fused_kernel_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options,
                        FusedPass pass);
bool fused_forward_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options);

// The DeviceKernels::Forward contract (kernels/device_kernels.h): q [B', h, Lq, D],
// k and v [B', h_kv, Lk, D] with any strides; (output [B', h, Lq, D] in q's dtype, log-sum-exp
// [B', h, Lq] float32). Exact NaN rules: a row with a visible NaN or +inf score, or whose visible
// scores are all -inf, is NaN (output and log-sum-exp), but a row that sees no key (all padding)
// is 0 with log-sum-exp -inf; padded keys' values are never read.
std::tuple<at::Tensor, at::Tensor> fused_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options);

// DeviceKernels::ForwardGroupsInto: all groups in one parallel region, written into place;
// false where fused_forward_takes refuses a group (or the groups differ in dtype or head dim).
bool fused_forward_groups_into(const std::vector<GroupForwardInto>& groups, double out_scale);

// The fused backward (flash_attention_backward_cpu.cpp): taken where fused_kernel_takes the
// backward and the call has at least one (view batch, key head) per thread; any forward's out
// and lse (ours, ATen's or the dropout kernel's).
bool fused_backward_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options);

// The DeviceKernels::Backward contract: (dQ, dK, dV) in the inputs' dtype and shapes,
// contiguous, dK and dV summed over the query heads sharing a key head.
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options);

// DeviceKernels::BackwardGroupsInto: where fused_kernel_takes the backward of every group (of one
// dtype and head dim), their units in one parallel region, taken when the groups together have a
// unit per thread (one region per group where key values accumulate, so then each must).
bool fused_backward_groups_into(const std::vector<GroupBackwardInto>& groups, double out_scale,
                                bool accumulate_key_values);

// The query-side operand of the products needs unit stride along D and rows at least D apart:
// `x` itself when it has them, else a contiguous copy.
at::Tensor with_readable_rows(const at::Tensor& x);

}  // namespace dilated_attention
