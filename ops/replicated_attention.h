// The legacy replicated ops: every rank passes the full [B, N, H, D] and gets the full output.
//   rows:  rank r computes rows [r*n, (r+1)*n) (keys and values gathered with all_gather), then
//          the output rows are all_gathered.
//   heads: rank r computes heads [r*H/P, (r+1)*H/P) with the op's GLOBAL head-to-group mapping,
//          then the head slices are all_gathered.
// Backward uses this rank's part of grad_output and all_gathers the input gradients, so it is
// the full gradient when every rank's grad_output agrees (a replicated loss).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "comm/communicator.h"
#include "kernels/dilated_attention_kernel.h"

namespace dilated_attention {

// Returns (full output, this rank's log-sum-exp: [B, N/P, H] for rows, [B, N, H/P] for heads).
// key_padding_mask: the full [B, N] mask (every rank passes all of it), or undefined.
std::tuple<at::Tensor, at::Tensor> replicated_attention_forward(
    comm::Communicator& comm, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_padding_mask, const AttentionConfig& config, bool split_heads);

std::tuple<at::Tensor, at::Tensor, at::Tensor> replicated_attention_backward(
    comm::Communicator& comm, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& key_padding_mask, const at::Tensor& out,
    const at::Tensor& lse, const AttentionConfig& config, bool split_heads);

}  // namespace dilated_attention
