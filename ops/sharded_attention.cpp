#include "ops/sharded_attention.h"

#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include "kernels/block_attention.h"
#include "kernels/key_padding.h"
#include "kernels/lse_merge.h"
#include "kernels/shard_views.h"

namespace dilated_attention {
namespace {

// A group's positions alone (one "head"), for views of per-position flags [B, n, 1].
HeadGroup positions_of(const HeadGroup& group) {
  HeadGroup positions = group;
  positions.first_head = 0;
  positions.num_heads = 1;
  return positions;
}

// Everything one rank needs to attend its shard: the plan and the contiguous inputs.
struct ShardContext {
  const ShardedAttentionConfig& config;
  int rank;
  int64_t begin;  // first sequence position of this shard
  std::vector<GroupShardWork> plan;
  std::vector<HeadGroup> kv_groups;  // the key/value heads of plan[g].group, for k, v, dK, dV
  DropoutMask mask;
  // The key padding mask as [B, n, 1] (this shard) and [B, N, 1] (every rank's, gathered once
  // per call: remote key blocks need their owners' flags), or undefined.
  at::Tensor local_padding, full_padding;

  ShardContext(comm::Communicator& comm, const ShardedAttentionConfig& c,
               const at::Tensor& key_padding_mask)
      : config(c),
        rank(comm.rank()),
        begin(c.layout.shard_begin(rank)),
        plan(plan_shard_work(c.attention.groups, c.layout, rank)),
        kv_groups(key_value_groups(c.attention.groups, c.attention.heads_per_key_value)),
        mask(c.attention.dropout_seed, c.attention.dropout_p) {
    if (!key_padding_mask.defined()) return;
    local_padding = key_padding_mask.contiguous().unsqueeze(-1);
    const auto bytes = key_padding_mask.to(at::kByte).contiguous();
    auto gathered = at::empty({comm.size() * bytes.numel()}, bytes.options());
    comm.all_gather(gathered, bytes.reshape({-1}));
    // [P, B, n] -> [B, P * n] in sequence order.
    full_padding = gathered.view({comm.size(), bytes.size(0), bytes.size(1)})
                       .permute({1, 0, 2})
                       .reshape({bytes.size(0), c.layout.seq_len, 1})
                       .to(at::kBool);
  }

  // The key padding of a view over this shard's rows, [B', L] (x3: a [B, n, 1] view of it).
  static at::Tensor flags_of(const at::Tensor& x3) { return x3.defined() ? x3.select(1, 0) : x3; }

  // The padding of the inner segment runs of `work`, in segment_run_views' order ([B', L]
  // each); empty without a mask.
  std::vector<at::Tensor> inner_padding(const GroupShardWork& work) const {
    std::vector<at::Tensor> flags;
    if (!local_padding.defined()) return flags;
    for (const auto& run :
         segment_run_views(local_padding, positions_of(work.group), work.first_inner_segment,
                           work.num_inner_segments, begin)) {
      flags.push_back(flags_of(run.view));
    }
    return flags;
  }

  // Padding of the key rows `keys` of an edge segment, whoever owns them: [B, rows].
  at::Tensor edge_padding(size_t g, const EdgeSegment& edge, const RowRange& keys) const {
    if (!full_padding.defined()) return {};
    return flags_of(
        segment_rows_view(full_padding, positions_of(plan[g].group), edge.segment, keys, 0));
  }

  // Rows of this rank in an edge segment that see no key at all: [B, 1, rows], or undefined.
  at::Tensor edge_rows_without_keys(size_t g, const EdgeSegment& edge) const {
    if (!full_padding.defined()) return {};
    const auto& group = plan[g].group;
    const auto all = segment_rows_view(full_padding, positions_of(group), edge.segment,
                                       {0, group.subset_length()}, 0);  // [B, 1, L]
    const auto none_seen = config.attention.is_causal
                               ? all.to(at::kInt).cumprod(-1).to(at::kBool)
                               : all.all(-1, /*keepdim=*/true).expand_as(all);
    const auto& mine = edge.rows_of_rank[rank];
    return none_seen.narrow(-1, mine.first, mine.count);
  }

  BlockOptions options(const HeadGroup& group, bool is_causal) const {
    BlockOptions o;
    o.is_causal = is_causal;
    o.scale = config.attention.scale;
    o.dropout = &mask;
    o.where.first_head = config.attention.global_head_offset + group.first_head;
    o.where.step = group.dilation_rate;
    return o;
  }

  // A run of whole segments inside the shard, for view batch `first_batch`.
  BlockOptions inner_options(const GroupShardWork& work, int64_t first_batch) const {
    auto o = options(work.group, config.attention.is_causal);
    o.where.first_batch = first_batch;
    o.where.views_per_batch = work.num_inner_segments;
    o.where.view_stride = work.group.segment_length;
    o.where.query_first = o.where.key_first =
        work.first_inner_segment * work.group.segment_length + work.group.offset;
    return o;
  }

  // This rank's queries of an edge segment against the key rows `keys` owned by `key_rank`.
  BlockOptions edge_options(size_t g, const EdgeSegment& edge, int key_rank,
                            const RowRange& keys) const {
    const auto& group = plan[g].group;
    // Blocks of other ranks are never causal-diagonal: earlier ones are fully visible, and later
    // ones are never requested under causal masking.
    auto o = options(group, config.attention.is_causal && key_rank == rank);
    const int64_t first = edge.segment * group.segment_length + group.offset;
    o.where.query_first = first + edge.rows_of_rank[rank].first * group.dilation_rate;
    o.where.key_first = first + keys.first * group.dilation_rate;
    o.key_padding = edge_padding(g, edge, keys);
    return o;
  }

  at::Tensor edge_rows(const at::Tensor& x, size_t g, const EdgeSegment& edge) const {
    return segment_rows_view(x, plan[g].group, edge.segment, edge.rows_of_rank[rank], begin);
  }

  // The same rows of a key/value tensor (its heads are kv_groups[g]'s).
  at::Tensor edge_key_rows(const at::Tensor& x, size_t g, const EdgeSegment& edge) const {
    return segment_rows_view(x, kv_groups[g], edge.segment, edge.rows_of_rank[rank], begin);
  }

  size_t edge_index(size_t g, int64_t segment) const {
    const auto& edges = plan[g].edge_segments;
    for (size_t e = 0; e < edges.size(); ++e) {
      if (edges[e].segment == segment) return e;
    }
    TORCH_INTERNAL_ASSERT(false, "received rows of a segment this rank does not attend");
  }

  ExchangeContext exchange(comm::Communicator& comm) const {
    return {comm, kv_groups, config.layout, config.attention.is_causal};
  }
};

template <typename Body>
void for_each_edge(const ShardContext& shard, const Body& body) {
  for (size_t g = 0; g < shard.plan.size(); ++g) {
    for (size_t e = 0; e < shard.plan[g].edge_segments.size(); ++e) body(g, e);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sharded_attention_forward(comm::Communicator& comm,
                                                             const at::Tensor& q_in,
                                                             const at::Tensor& k_in,
                                                             const at::Tensor& v_in,
                                                             const at::Tensor& key_padding_mask,
                                                             const ShardedAttentionConfig& config) {
  const auto q = q_in.contiguous();
  const auto k = without_non_finite_padding(k_in, key_padding_mask).contiguous();
  const auto v = without_non_finite_padding(v_in, key_padding_mask).contiguous();
  const ShardContext shard(comm, config, key_padding_mask);
  const double output_scale = config.attention.output_scale;
  auto out = at::zeros_like(q);
  auto lse = at::zeros({q.size(0), q.size(1), q.size(2)},
                       q.options().dtype(at::toOpMathType(q.scalar_type())));
  // Transfers start first, so they fly while the local work below runs.
  auto stream = open_key_value_stream(config.exchange, shard.exchange(comm), k, v);

  for (size_t g = 0; g < shard.plan.size(); ++g) {
    const auto& work = shard.plan[g];
    if (work.num_inner_segments == 0) continue;
    auto run = [&](const at::Tensor& x, const HeadGroup& heads) {
      return segment_run_views(x, heads, work.first_inner_segment, work.num_inner_segments,
                               shard.begin);
    };
    const auto& kv = shard.kv_groups[g];
    const auto qs = run(q, work.group), ks = run(k, kv), vs = run(v, kv),
               outs = run(out, work.group), lses = run(lse, work.group);
    const auto pads = shard.inner_padding(work);
    for (size_t i = 0; i < qs.size(); ++i) {
      auto options = shard.inner_options(work, qs[i].first_batch);
      options.key_padding = pads.empty() ? at::Tensor() : pads[i];
      auto [o, l] = block_attention_forward(qs[i].view, ks[i].view, vs[i].view, options);
      outs[i].view.copy_(o.mul_(output_scale));
      lses[i].view.copy_(l);
    }
  }

  std::vector<std::vector<LseAccumulator>> merged(shard.plan.size());
  for (size_t g = 0; g < shard.plan.size(); ++g)
    merged[g].resize(shard.plan[g].edge_segments.size());
  for_each_edge(shard, [&](size_t g, size_t e) {
    const auto& edge = shard.plan[g].edge_segments[e];
    auto [o, l] = block_attention_forward(
        shard.edge_rows(q, g, edge), shard.edge_key_rows(k, g, edge),
        shard.edge_key_rows(v, g, edge),
        shard.edge_options(g, edge, shard.rank, edge.rows_of_rank[shard.rank]),
        KeyCoverage::kPieceOfRow);
    merged[g][e].add(o, l);
  });
  RemoteBlocks remote;
  while (stream->next(remote)) {
    for (size_t i = 0; i < remote.blocks.size(); ++i) {
      const auto& block = remote.blocks[i];
      const size_t g = block.group_index, e = shard.edge_index(g, block.segment);
      const auto& edge = shard.plan[g].edge_segments[e];
      auto [o, l] = block_attention_forward(
          shard.edge_rows(q, g, edge), remote.keys[i], remote.values[i],
          shard.edge_options(g, edge, remote.owner, block.rows), KeyCoverage::kPieceOfRow);
      merged[g][e].add(o, l);
    }
  }
  for_each_edge(shard, [&](size_t g, size_t e) {
    const auto& edge = shard.plan[g].edge_segments[e];
    const auto [merged_out, merged_lse] = with_unseen_rows_as_nan(
        merged[g][e].out(), merged[g][e].lse(), shard.edge_rows_without_keys(g, edge));
    shard.edge_rows(out, g, edge).copy_(merged_out * output_scale);
    shard.edge_rows(lse, g, edge).copy_(merged_lse);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sharded_attention_backward(
    comm::Communicator& comm, const at::Tensor& grad_out_in, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& key_padding_mask,
    const at::Tensor& out_in, const at::Tensor& lse_in, const ShardedAttentionConfig& config) {
  const auto q = q_in.contiguous();
  const auto k = without_non_finite_padding(k_in, key_padding_mask).contiguous();
  const auto v = without_non_finite_padding(v_in, key_padding_mask).contiguous();
  const auto grad_out = grad_out_in.contiguous(), lse = lse_in.contiguous();
  const double output_scale = config.attention.output_scale;
  // Block gradients are taken of <grad_out, O_unscaled>: each carries 1 / output_scale.
  const auto out = out_in.contiguous().div(output_scale);
  const ShardContext shard(comm, config, key_padding_mask);
  auto grad_q = at::zeros_like(q), grad_k = at::zeros_like(k), grad_v = at::zeros_like(v);
  // Backward needs the remote keys and values again: they are exchanged anew, not kept.
  const auto exchange = shard.exchange(comm);
  auto stream = open_key_value_stream(config.exchange, exchange, k, v);

  for (size_t g = 0; g < shard.plan.size(); ++g) {
    const auto& work = shard.plan[g];
    if (work.num_inner_segments == 0) continue;
    auto run = [&](const at::Tensor& x, const HeadGroup& heads) {
      return segment_run_views(x, heads, work.first_inner_segment, work.num_inner_segments,
                               shard.begin);
    };
    const auto& qh = work.group;
    const auto& kv = shard.kv_groups[g];
    const auto qs = run(q, qh), ks = run(k, kv), vs = run(v, kv), os = run(out, qh),
               ls = run(lse, qh), dos = run(grad_out, qh), dqs = run(grad_q, qh),
               dks = run(grad_k, kv), dvs = run(grad_v, kv);
    const auto pads = shard.inner_padding(work);
    for (size_t i = 0; i < qs.size(); ++i) {
      auto options = shard.inner_options(work, qs[i].first_batch);
      options.key_padding = pads.empty() ? at::Tensor() : pads[i];
      auto [gq, gk, gv] = block_attention_backward(dos[i].view, qs[i].view, ks[i].view, vs[i].view,
                                                   os[i].view, ls[i].view, options);
      dqs[i].view.copy_(gq.mul_(output_scale));
      // Added, not copied: a shared key/value head collects the gradients of every group
      // reading it (grad_k and grad_v start at zero).
      dks[i].view.add_(gk.mul_(output_scale));
      dvs[i].view.add_(gv.mul_(output_scale));
    }
  }

  std::vector<std::vector<at::Tensor>> edge_grad_q(shard.plan.size());
  for (size_t g = 0; g < shard.plan.size(); ++g)
    edge_grad_q[g].resize(shard.plan[g].edge_segments.size());
  auto edge_backward = [&](size_t g, const EdgeSegment& edge, const at::Tensor& keys,
                           const at::Tensor& values, int key_rank, const RowRange& key_rows) {
    return block_attention_backward(shard.edge_rows(grad_out, g, edge), shard.edge_rows(q, g, edge),
                                    keys, values, shard.edge_rows(out, g, edge),
                                    shard.edge_rows(lse, g, edge),
                                    shard.edge_options(g, edge, key_rank, key_rows));
  };
  auto add_grad_q = [&](size_t g, size_t e, const at::Tensor& gq) {
    auto& acc = edge_grad_q[g][e];
    acc = acc.defined() ? acc.add_(gq) : gq.to(at::toOpMathType(gq.scalar_type()));
  };
  for_each_edge(shard, [&](size_t g, size_t e) {
    const auto& edge = shard.plan[g].edge_segments[e];
    auto [gq, gk, gv] =
        edge_backward(g, edge, shard.edge_key_rows(k, g, edge), shard.edge_key_rows(v, g, edge),
                      shard.rank, edge.rows_of_rank[shard.rank]);
    add_grad_q(g, e, gq);
    shard.edge_key_rows(grad_k, g, edge).add_(gk.mul_(output_scale));
    shard.edge_key_rows(grad_v, g, edge).add_(gv.mul_(output_scale));
  });
  std::vector<RemoteGrads> grads_by_owner(static_cast<size_t>(comm.size()));
  RemoteBlocks remote;
  while (stream->next(remote)) {
    auto& owner = grads_by_owner[remote.owner];
    owner.blocks = remote.blocks;
    for (size_t i = 0; i < remote.blocks.size(); ++i) {
      const auto& block = remote.blocks[i];
      const size_t g = block.group_index, e = shard.edge_index(g, block.segment);
      auto [gq, gk, gv] = edge_backward(g, shard.plan[g].edge_segments[e], remote.keys[i],
                                        remote.values[i], remote.owner, block.rows);
      add_grad_q(g, e, gq);
      owner.grad_keys.push_back(gk.mul_(output_scale));
      owner.grad_values.push_back(gv.mul_(output_scale));
    }
  }
  for_each_edge(shard, [&](size_t g, size_t e) {
    shard.edge_rows(grad_q, g, shard.plan[g].edge_segments[e])
        .copy_(edge_grad_q[g][e] * output_scale);
  });
  return_key_value_grads(config.exchange, exchange, grads_by_owner, grad_k, grad_v);
  zero_padded_rows_(grad_k, key_padding_mask);
  zero_padded_rows_(grad_v, key_padding_mask);
  return {grad_q, grad_k, grad_v};
}

}  // namespace dilated_attention
