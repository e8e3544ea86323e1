#include "ops/sharded_attention.h"

#include <ATen/OpMathType.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/block_attention.h"
#include "kernels/device_kernels.h"
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
  std::vector<DropoutMask> masks;    // by HeadGroup::index
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
        masks(dropout_masks_by_index(c.attention)) {
    if (!key_padding_mask.defined()) return;
    local_padding = key_padding_mask.contiguous().unsqueeze(-1);
    const auto bytes = key_padding_mask.to(at::kByte).contiguous();
    auto gathered = at::empty({comm.size() * bytes.numel()}, bytes.options());
    comm.all_gather(gathered, bytes.reshape({-1}));
    // [P, B, n] -> [B, P * n] in sequence order.
    full_padding = gathered.view({comm.size(), bytes.size(0), bytes.size(1)})
                       .permute({1, 0, 2})
                       .reshape({bytes.size(0), c.layout.seq_len, 1})
                       .to(at::kBool)
                       .contiguous();  // the reshape is a view when n = 1: views need dense rows
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
    // Every rank's rows: the whole segment, or up to N where the sequence truncates it.
    int64_t rows = 0;
    for (const auto& owned : edge.rows_of_rank) rows = std::max(rows, owned.first + owned.count);
    const auto all = segment_rows_view(full_padding, positions_of(group), edge.segment, {0, rows},
                                       0);  // [B, 1, L]
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
    o.dropout = &masks[static_cast<size_t>(group.index)];
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

// Where the groups' results go. Head-split groups each own their places: results are copied
// there times the output scale. LongNet's branches cover the same places: results merge into an
// accumulator in the accumulation dtype by log-sum-exp (-inf where nothing arrived yet), and at
// the end a row that saw something but nothing above -inf becomes NaN (a softmax over nothing),
// where the device checks non-finite values on the host; rows without keys stay 0.
struct ResultLanding {
  const AttentionConfig& config;
  at::Tensor out, lse, seen;  // seen: [B, n, H] bool, the rows that saw some key (LongNet)
  int64_t first_branch = 0;

  ResultLanding(const AttentionConfig& c, const at::Tensor& q) : config(c) {
    const auto acc = q.options().dtype(at::toOpMathType(q.scalar_type()));
    const std::vector<int64_t> rows{q.size(0), q.size(1), q.size(2)};
    if (!combines_branches()) {
      out = at::zeros_like(q);
      lse = at::zeros(rows, acc);
      return;
    }
    out = at::zeros(q.sizes(), acc);
    lse = at::full(rows, -std::numeric_limits<double>::infinity(), acc);
    if (kernels_for(q.device().type()).checks_non_finite_on_host) {
      seen = at::zeros(rows, acc.dtype(at::kBool));
    }
    first_branch = c.groups.empty() ? 0 : c.groups.front().index;
  }

  bool combines_branches() const { return config.combination == Combination::kLogSumExp; }
  bool tracks_seen() const { return seen.defined(); }
  // A LongNet branch is one part of what its rows see; a head-split group is all of it.
  KeyCoverage coverage() const {
    return combines_branches() ? KeyCoverage::kPieceOfRow : KeyCoverage::kWholeRow;
  }

  // `inner`: the group's segments inside the shard, which land first, group by group, so the
  // first branch's are the first to reach their places; edge segments land after every inner one.
  void land(const at::Tensor& out_places, const at::Tensor& lse_places, const at::Tensor& o,
            const at::Tensor& l, const HeadGroup& group, bool inner) const {
    if (combines_branches()) {
      merge_into_places(out_places, lse_places, o, l, inner && group.index == first_branch);
      return;
    }
    out_places.copy_(o * config.output_scale);
    lse_places.copy_(l);
  }

  // no_keys: [B', L] or [B', 1, L] rows that see no key (undefined: every row sees one).
  static void mark_seen(const at::Tensor& seen_places, const at::Tensor& no_keys) {
    if (!no_keys.defined()) {
      seen_places.fill_(true);
      return;
    }
    seen_places.logical_or_((no_keys.dim() == 2 ? no_keys.unsqueeze(1) : no_keys).logical_not());
  }

  std::tuple<at::Tensor, at::Tensor> finish(at::ScalarType dtype) {
    if (tracks_seen()) std::tie(out, lse) = with_unseen_rows_as_nan(out, lse, seen.logical_not());
    return {out.to(dtype), lse};
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
  ResultLanding landing(config.attention, q);
  auto& out = landing.out;
  auto& lse = landing.lse;
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
    const auto seens =
        landing.tracks_seen() ? run(landing.seen, work.group) : std::vector<SegmentRunView>();
    const auto pads = shard.inner_padding(work);
    for (size_t i = 0; i < qs.size(); ++i) {
      auto options = shard.inner_options(work, qs[i].first_batch);
      options.key_padding = pads.empty() ? at::Tensor() : pads[i];
      auto [o, l] =
          block_attention_forward(qs[i].view, ks[i].view, vs[i].view, options, landing.coverage());
      landing.land(outs[i].view, lses[i].view, o, l, work.group, /*inner=*/true);
      if (landing.tracks_seen()) {
        landing.mark_seen(seens[i].view, rows_without_keys(options, qs[i].view.size(2)));
      }
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
    const auto no_keys = shard.edge_rows_without_keys(g, edge);
    if (landing.combines_branches()) {
      // A branch's rows are one part of what the combination's rows see: finished at the end.
      landing.land(shard.edge_rows(out, g, edge), shard.edge_rows(lse, g, edge), merged[g][e].out(),
                   merged[g][e].lse(), shard.plan[g].group,
                   /*inner=*/false);
      if (landing.tracks_seen()) landing.mark_seen(shard.edge_rows(landing.seen, g, edge), no_keys);
      return;
    }
    const auto [merged_out, merged_lse] =
        with_unseen_rows_as_nan(merged[g][e].out(), merged[g][e].lse(), no_keys);
    landing.land(shard.edge_rows(out, g, edge), shard.edge_rows(lse, g, edge), merged_out,
                 merged_lse, shard.plan[g].group, /*inner=*/false);
  });
  return landing.finish(q.scalar_type());
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
  // LongNet's branches all add to the same rows: summed in the accumulation dtype (so, for half
  // types, the dK / dV returned to their owners travel in float32).
  const bool by_lse = config.attention.combination == Combination::kLogSumExp;
  auto new_grad = [&](const at::Tensor& x) {
    return by_lse ? at::zeros(x.sizes(), x.options().dtype(at::toOpMathType(x.scalar_type())))
                  : at::zeros_like(x);
  };
  auto grad_q = new_grad(q), grad_k = new_grad(k), grad_v = new_grad(v);
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
      // Added, not copied: every LongNet branch covering a row adds to its gradient, and a shared
      // key/value head collects the gradients of every group reading it (all start at zero).
      dqs[i].view.add_(gq.mul_(output_scale));
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
        .add_(edge_grad_q[g][e] * output_scale);
  });
  return_key_value_grads(config.exchange, exchange, grads_by_owner, grad_k, grad_v);
  zero_padded_rows_(grad_k, key_padding_mask);
  zero_padded_rows_(grad_v, key_padding_mask);
  return {grad_q.to(q.scalar_type()), grad_k.to(k.scalar_type()), grad_v.to(v.scalar_type())};
}

}  // namespace dilated_attention
