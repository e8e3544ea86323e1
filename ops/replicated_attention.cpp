#include "ops/replicated_attention.h"

#include <ATen/ops/empty.h>

#include "ops/sharded_attention.h"

namespace dilated_attention {
namespace {

// This rank's slice of a [B, N, H, D] tensor along `dim` (1: rows, 2: heads).
at::Tensor my_part(const at::Tensor& x, const comm::Communicator& comm, int64_t dim) {
  const int64_t part = x.size(dim) / comm.size();
  return x.narrow(dim, comm.rank() * part, part);
}

// All ranks' parts (along `dim`) joined back into the full tensor.
at::Tensor gather_parts(comm::Communicator& comm, const at::Tensor& part, int64_t dim) {
  const auto contiguous = part.contiguous();
  auto gathered = at::empty({comm.size() * contiguous.numel()}, contiguous.options());
  comm.all_gather(gathered, contiguous.reshape({-1}));
  std::vector<int64_t> sizes{comm.size()};
  for (auto s : contiguous.sizes()) sizes.push_back(s);
  // [P, B, n, H, D] -> [B, P, n, H, D] (rows) or [B, N, P, h, D] (heads), then merge P in.
  auto full = gathered.view(sizes).movedim(0, dim);
  auto merged = full.sizes().vec();
  merged[dim] *= merged[dim + 1];
  merged.erase(merged.begin() + dim + 1);
  return full.reshape(merged);
}

ShardedAttentionConfig rows_config(const AttentionConfig& config, const at::Tensor& q, int size) {
  return {config, {q.size(1), size}, ExchangeKind::kAllGather};
}

AttentionConfig heads_config(const AttentionConfig& config, const at::Tensor& q,
                             const comm::Communicator& comm) {
  const int64_t heads_per_rank = q.size(2) / comm.size();
  AttentionConfig part = config;
  part.global_head_offset = comm.rank() * heads_per_rank;
  part.groups = restrict_to_heads(config.groups, part.global_head_offset, heads_per_rank);
  return part;
}

// This rank's rows of the [B, N] key padding mask (rows split) or all of it (heads split).
at::Tensor my_padding(const at::Tensor& key_padding_mask, const comm::Communicator& comm,
                      bool split_heads) {
  if (!key_padding_mask.defined() || split_heads) return key_padding_mask;
  return my_part(key_padding_mask, comm, 1);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> replicated_attention_forward(
    comm::Communicator& comm, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& key_padding_mask, const AttentionConfig& config, bool split_heads) {
  const int64_t dim = split_heads ? 2 : 1;
  const auto padding = my_padding(key_padding_mask, comm, split_heads);
  auto [out, lse] =
      split_heads ? dilated_attention_forward_kernel(my_part(q, comm, dim), my_part(k, comm, dim),
                                                     my_part(v, comm, dim), padding,
                                                     heads_config(config, q, comm))
                  : sharded_attention_forward(comm, my_part(q, comm, dim), my_part(k, comm, dim),
                                              my_part(v, comm, dim), padding,
                                              rows_config(config, q, comm.size()));
  return {gather_parts(comm, out, dim), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> replicated_attention_backward(
    comm::Communicator& comm, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& key_padding_mask, const at::Tensor& out,
    const at::Tensor& lse, const AttentionConfig& config, bool split_heads) {
  const int64_t dim = split_heads ? 2 : 1;
  auto part = [&](const at::Tensor& x) { return my_part(x, comm, dim); };
  const auto padding = my_padding(key_padding_mask, comm, split_heads);
  auto [gq, gk, gv] =
      split_heads
          ? dilated_attention_backward_kernel(part(grad_out), part(q), part(k), part(v), padding,
                                              part(out), lse, heads_config(config, q, comm))
          : sharded_attention_backward(comm, part(grad_out), part(q), part(k), part(v), padding,
                                       part(out), lse, rows_config(config, q, comm.size()));
  return {gather_parts(comm, gq, dim), gather_parts(comm, gk, dim), gather_parts(comm, gv, dim)};
}

}  // namespace dilated_attention
