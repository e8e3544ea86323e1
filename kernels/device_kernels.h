// The attention kernels of each device, looked up by the tensors' device. Each device's files
// register their own table when the library loads (kernels/cpu/cpu_kernels.cpp,
// kernels/cuda/cuda_kernels.cpp), so the device-generic code above them (group views, the
// sharded engine, log-sum-exp merging) never branches on the device, and a build or a device
// without kernels is a clear error instead of a crash inside ATen.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <tuple>
#include <vector>

#include "kernels/block_options.h"

namespace dilated_attention {

// What a call asks of a device's kernels, known before any work is done.
struct KernelRequest {
  at::ScalarType dtype = at::kFloat;
  int64_t head_dim = 0;
  bool dropout = false;           // dropout_p > 0
  bool key_padding_mask = false;  // a key_padding_mask was given
};

// One head group's share of DeviceKernels::ForwardGroupsInto: its views and options, as Forward
// takes them, and the views of the whole result its rows are written to.
struct GroupForwardInto {
  at::Tensor q, k, v;
  BlockOptions options;
  at::Tensor out;  // [B', h, Lq, D] view of the result, unit stride along D
  at::Tensor lse;  // [B', h, Lq] view of the result's log-sum-exp, accumulation dtype
};

// One head group's share of DeviceKernels::BackwardGroupsInto: its views and options, as
// Backward takes them but `out`, the result's view (out_scale times the group's output), and
// the views of the gradients its rows are written to (unit stride along D).
struct GroupBackwardInto {
  at::Tensor grad_out, q, k, v, out, lse;
  BlockOptions options;
  at::Tensor grad_q, grad_k, grad_v;
};

struct DeviceKernels {
  // One batched attention call over [B', h, Lq, D] query and [B', h_kv, Lk, D] key/value views,
  // h_kv dividing h (query head i reads key/value head i / (h / h_kv), read in place, never
  // copied per query head), padded keys (options.key_padding) excluded: (output in the input
  // dtype, log-sum-exp [B', h, Lq] in the accumulation dtype; rows without a visible key are
  // any value, block_attention.cpp sets them).
  using Forward = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const BlockOptions& options);
  // Gradients of <grad_out, out> with respect to q, k, v (dK and dV [B', h_kv, Lk, D], summed
  // over the sharing query heads); `out` and `lse` cover ALL key blocks of these queries, so the
  // recomputed weights are the globally normalised ones (rows without a visible key come with
  // log-sum-exp +inf: every weight 0).
  using Backward = std::tuple<at::Tensor, at::Tensor, at::Tensor> (*)(
      const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
      const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options);
  // acc_out [..., L, D] and acc_lse [..., L] (accumulation dtype, contiguous) absorb a block's
  // out and lse: acc_out is updated in place, the merged log-sum-exp is returned.
  using Merge = at::Tensor (*)(at::Tensor& acc_out, const at::Tensor& acc_lse,
                               const at::Tensor& block_out, const at::Tensor& block_lse);
  // Optional: every group's forward in one call, each group's output times out_scale written
  // into its view of the result (no per-group result, no copy) and its log-sum-exp into its
  // view; rows that see no key give 0 with log-sum-exp -inf. Only called where Forward alone is
  // block_attention_forward (kernels/block_attention.h: block_attention_is_the_kernel_alone).
  // Returns false, having written nothing, where it does not take the call: the caller then runs
  // the groups one by one.
  using ForwardGroupsInto = bool (*)(const std::vector<GroupForwardInto>& groups, double out_scale);
  // Optional: every group's backward in one call, out_scale times each gradient written into
  // the group's views (grad_k and grad_v added to where accumulate_key_values: groups may share
  // a key head); rows that saw no key get no gradient. Only called where Backward alone is
  // block_attention_backward (block_attention_is_the_kernel_alone). Returns false, having
  // written nothing, where it does not take the call.
  using BackwardGroupsInto = bool (*)(const std::vector<GroupBackwardInto>& groups,
                                      double out_scale, bool accumulate_key_values);
  // Raises ValueError naming what these kernels cannot take (called during validation).
  using CheckSupported = void (*)(const KernelRequest& request);

  Forward forward = nullptr;
  Backward backward = nullptr;
  Merge merge = nullptr;
  CheckSupported check_supported = nullptr;
  // Whether the exact NaN/inf handling of kernels/block_attention.cpp runs: causal blocks whose
  // inputs hold NaN or +-inf computed in pieces (kernels/causal_pieces.h), scores judged where
  // the kernel drops a non-finite row. Each starts with a reduction read on the host: free on
  // the CPU, a device sync on CUDA, where it is off until a sync-free check exists.
  bool checks_non_finite_on_host = false;
  ForwardGroupsInto forward_groups_into = nullptr;
  BackwardGroupsInto backward_groups_into = nullptr;
};

// The kernels of `device`; ValueError when this build has none for it.
const DeviceKernels& kernels_for(c10::DeviceType device);

// Static registration from a device's own file:
//   const DeviceKernelsRegistration registration(c10::DeviceType::CPU, {...});
struct DeviceKernelsRegistration {
  DeviceKernelsRegistration(c10::DeviceType device, const DeviceKernels& kernels);
};

}  // namespace dilated_attention
