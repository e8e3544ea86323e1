#include "ops/key_value_exchange.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "kernels/shard_views.h"

namespace dilated_attention {
namespace {

int64_t tensors_numel(const std::vector<at::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel();
  return n;
}

// Copies `keys` then `values` into one flat buffer (the wire format of every payload).
at::Tensor pack(const std::vector<at::Tensor>& keys, const std::vector<at::Tensor>& values,
                const at::TensorOptions& options) {
  auto buffer = at::empty({tensors_numel(keys) + tensors_numel(values)}, options);
  int64_t offset = 0;
  for (const auto* side : {&keys, &values}) {
    for (const auto& t : *side) {
      buffer.narrow(0, offset, t.numel()).view(t.sizes()).copy_(t);
      offset += t.numel();
    }
  }
  return buffer;
}

// Row views of `blocks` in a shard (or in a full-length tensor with shard_begin = 0).
std::vector<at::Tensor> block_views(const at::Tensor& x, const std::vector<BlockRef>& blocks,
                                    const std::vector<HeadGroup>& groups, int64_t shard_begin) {
  std::vector<at::Tensor> views;
  for (const auto& b : blocks) {
    views.push_back(segment_rows_view(x, groups[b.group_index], b.segment, b.rows, shard_begin));
  }
  return views;
}

// Views of a packed buffer laid out like pack(block_views(k), block_views(v)).
void unpack(const at::Tensor& buffer, const std::vector<BlockRef>& blocks,
            const std::vector<HeadGroup>& groups, int64_t batch, int64_t head_dim,
            std::vector<at::Tensor>& keys, std::vector<at::Tensor>& values) {
  int64_t offset = 0;
  for (auto* side : {&keys, &values}) {
    side->clear();
    for (const auto& b : blocks) {
      const std::vector<int64_t> sizes{batch, groups[b.group_index].num_heads, b.rows.count,
                                       head_dim};
      const int64_t n = sizes[0] * sizes[1] * sizes[2] * sizes[3];
      side->push_back(buffer.narrow(0, offset, n).view(sizes));
      offset += n;
    }
  }
}

at::Tensor empty_payload(const std::vector<BlockRef>& blocks, const ExchangeContext& ctx,
                         const at::Tensor& like) {
  return at::empty({2 * payload_elements(blocks, ctx.groups, like.size(0), like.size(3))},
                   like.options());
}

// Direct exchange with the peer at distance d = step + 1: send it the rows it needs, receive
// the rows this rank needs from the peer at distance -d. At most two steps are in flight.
class SegmentRingStream : public KeyValueStream {
 public:
  SegmentRingStream(const ExchangeContext& ctx, const at::Tensor& k, const at::Tensor& v)
      : ctx_(ctx), k_(k), v_(v), rank_(ctx.comm.rank()), size_(ctx.comm.size()) {
    steps_.resize(static_cast<size_t>(size_ - 1));
    while (posted_ < static_cast<int>(steps_.size()) && posted_ < kStepsInFlight) post(posted_++);
  }

  bool next(RemoteBlocks& out) override {
    while (delivered_ < static_cast<int>(steps_.size())) {
      auto& step = steps_[delivered_++];
      if (step.pending) step.pending->wait();
      if (posted_ < static_cast<int>(steps_.size())) post(posted_++);
      if (step.receive_blocks.empty()) continue;
      out.owner = step.from;
      out.blocks = step.receive_blocks;
      unpack(step.receive_buffer, out.blocks, ctx_.groups, k_.size(0), k_.size(3), out.keys,
             out.values);
      step.send_buffer = at::Tensor();  // its transfer completed
      return true;
    }
    return false;
  }

 private:
  static constexpr int kStepsInFlight = 2;
  struct Step {
    int from = 0;
    std::vector<BlockRef> receive_blocks;
    at::Tensor send_buffer, receive_buffer;
    std::unique_ptr<comm::PendingExchange> pending;
  };

  void post(int index) {
    const int distance = index + 1, tag = distance;
    const int to = (rank_ + distance) % size_, from = (rank_ - distance + size_) % size_;
    auto& step = steps_[index];
    step.from = from;
    step.receive_blocks = blocks_needed(ctx_.groups, ctx_.layout, rank_, from, ctx_.is_causal);
    const auto send_blocks = blocks_needed(ctx_.groups, ctx_.layout, to, rank_, ctx_.is_causal);
    std::vector<comm::Transfer> sends, receives;
    if (!send_blocks.empty()) {
      const int64_t begin = ctx_.layout.shard_begin(rank_);
      step.send_buffer = pack(block_views(k_, send_blocks, ctx_.groups, begin),
                              block_views(v_, send_blocks, ctx_.groups, begin), k_.options());
      sends.push_back({to, step.send_buffer, tag});
    }
    if (!step.receive_blocks.empty()) {
      step.receive_buffer = empty_payload(step.receive_blocks, ctx_, k_);
      receives.push_back({from, step.receive_buffer, tag});
    }
    if (!sends.empty() || !receives.empty())
      step.pending = ctx_.comm.post_exchange(sends, receives);
  }

  ExchangeContext ctx_;
  at::Tensor k_, v_;
  int rank_, size_;
  std::vector<Step> steps_;
  int posted_ = 0, delivered_ = 0;
};

// Classic ring: at step d every rank forwards the shard it holds to rank + 1 and receives the
// shard of rank - d from rank - 1, whether or not its segments need it.
class FullRingStream : public KeyValueStream {
 public:
  FullRingStream(const ExchangeContext& ctx, const at::Tensor& k, const at::Tensor& v)
      : ctx_(ctx), held_k_(k), held_v_(v), rank_(ctx.comm.rank()), size_(ctx.comm.size()) {
    post_forward();
  }

  bool next(RemoteBlocks& out) override {
    while (step_ < size_ - 1) {
      pending_->wait();
      ++step_;
      held_k_ = incoming_k_;
      held_v_ = incoming_v_;
      post_forward();
      const int owner = (rank_ - step_ + size_) % size_;
      out.blocks = blocks_needed(ctx_.groups, ctx_.layout, rank_, owner, ctx_.is_causal);
      if (out.blocks.empty()) continue;
      const int64_t begin = ctx_.layout.shard_begin(owner);
      out.owner = owner;
      out.keys = block_views(held_k_, out.blocks, ctx_.groups, begin);
      out.values = block_views(held_v_, out.blocks, ctx_.groups, begin);
      return true;
    }
    return false;
  }

 private:
  void post_forward() {
    if (step_ >= size_ - 1) return;
    incoming_k_ = at::empty_like(held_k_);
    incoming_v_ = at::empty_like(held_v_);
    const int next = (rank_ + 1) % size_, prev = (rank_ - 1 + size_) % size_;
    const int tag = 2 * (step_ + 1);
    pending_ = ctx_.comm.post_exchange({{next, held_k_, tag}, {next, held_v_, tag + 1}},
                                       {{prev, incoming_k_, tag}, {prev, incoming_v_, tag + 1}});
  }

  ExchangeContext ctx_;
  at::Tensor held_k_, held_v_, incoming_k_, incoming_v_;
  int rank_, size_;
  int step_ = 0;
  std::unique_ptr<comm::PendingExchange> pending_;
};

// Legacy: gather every shard's K and V on every rank up front.
class AllGatherStream : public KeyValueStream {
 public:
  AllGatherStream(const ExchangeContext& ctx, const at::Tensor& k, const at::Tensor& v)
      : ctx_(ctx), shard_sizes_(k.sizes().vec()), rank_(ctx.comm.rank()), size_(ctx.comm.size()) {
    gathered_k_ = at::empty({size_ * k.numel()}, k.options());
    gathered_v_ = at::empty({size_ * v.numel()}, v.options());
    ctx_.comm.all_gather(gathered_k_, k.reshape({-1}));
    ctx_.comm.all_gather(gathered_v_, v.reshape({-1}));
  }

  bool next(RemoteBlocks& out) override {
    while (++distance_ < size_) {
      const int owner = (rank_ - distance_ + size_) % size_;
      out.blocks = blocks_needed(ctx_.groups, ctx_.layout, rank_, owner, ctx_.is_causal);
      if (out.blocks.empty()) continue;
      out.owner = owner;
      out.keys = block_views(shard_of(gathered_k_, owner), out.blocks, ctx_.groups,
                             ctx_.layout.shard_begin(owner));
      out.values = block_views(shard_of(gathered_v_, owner), out.blocks, ctx_.groups,
                               ctx_.layout.shard_begin(owner));
      return true;
    }
    return false;
  }

 private:
  at::Tensor shard_of(const at::Tensor& gathered, int owner) const {
    const int64_t numel = gathered.numel() / size_;
    return gathered.narrow(0, owner * numel, numel).view(shard_sizes_);
  }

  ExchangeContext ctx_;
  std::vector<int64_t> shard_sizes_;
  at::Tensor gathered_k_, gathered_v_;
  int rank_, size_;
  int distance_ = 0;
};

void add_into_rows(at::Tensor& grad, const std::vector<BlockRef>& blocks,
                   const std::vector<at::Tensor>& values, const std::vector<HeadGroup>& groups,
                   int64_t shard_begin) {
  auto views = block_views(grad, blocks, groups, shard_begin);
  for (size_t i = 0; i < views.size(); ++i) views[i].add_(values[i]);
}

void return_point_to_point(const ExchangeContext& ctx,
                           const std::vector<RemoteGrads>& grads_by_owner, at::Tensor& grad_k,
                           at::Tensor& grad_v) {
  const int rank = ctx.comm.rank(), size = ctx.comm.size();
  constexpr int kGradTag = 1 << 20;  // apart from the forward steps' tags
  std::vector<comm::Transfer> sends, receives;
  std::vector<std::vector<BlockRef>> sent_to(static_cast<size_t>(size));
  for (int peer = 0; peer < size; ++peer) {
    if (peer == rank) continue;
    const auto& mine = grads_by_owner[peer];
    if (!mine.blocks.empty()) {
      sends.push_back({peer, pack(mine.grad_keys, mine.grad_values, grad_k.options()), kGradTag});
    }
    sent_to[peer] = blocks_needed(ctx.groups, ctx.layout, peer, rank, ctx.is_causal);
    if (!sent_to[peer].empty()) {
      receives.push_back({peer, empty_payload(sent_to[peer], ctx, grad_k), kGradTag});
    }
  }
  if (sends.empty() && receives.empty()) return;
  ctx.comm.post_exchange(sends, receives)->wait();
  const int64_t begin = ctx.layout.shard_begin(rank);
  for (const auto& received : receives) {
    std::vector<at::Tensor> keys, values;
    unpack(received.tensor, sent_to[received.peer], ctx.groups, grad_k.size(0), grad_k.size(3),
           keys, values);
    add_into_rows(grad_k, sent_to[received.peer], keys, ctx.groups, begin);
    add_into_rows(grad_v, sent_to[received.peer], values, ctx.groups, begin);
  }
}

// Legacy: every rank gathers every rank's full-length partial gradients and keeps its rows.
void return_by_all_gather(const ExchangeContext& ctx,
                          const std::vector<RemoteGrads>& grads_by_owner, at::Tensor& grad,
                          bool keys) {
  const int rank = ctx.comm.rank(), size = ctx.comm.size();
  auto partial =
      at::zeros({grad.size(0), ctx.layout.seq_len, grad.size(2), grad.size(3)}, grad.options());
  for (const auto& owner : grads_by_owner) {
    add_into_rows(partial, owner.blocks, keys ? owner.grad_keys : owner.grad_values, ctx.groups, 0);
  }
  auto gathered = at::empty({size * partial.numel()}, partial.options());
  ctx.comm.all_gather(gathered, partial.reshape({-1}));
  grad.add_(gathered.view({size, grad.size(0), ctx.layout.seq_len, grad.size(2), grad.size(3)})
                .narrow(2, ctx.layout.shard_begin(rank), ctx.layout.shard_len())
                .sum(0));
}

}  // namespace

std::unique_ptr<KeyValueStream> open_key_value_stream(ExchangeKind kind, const ExchangeContext& ctx,
                                                      const at::Tensor& k, const at::Tensor& v) {
  switch (kind) {
    case ExchangeKind::kSegmentRing:
      return std::make_unique<SegmentRingStream>(ctx, k, v);
    case ExchangeKind::kFullRing:
      return std::make_unique<FullRingStream>(ctx, k, v);
    case ExchangeKind::kAllGather:
      return std::make_unique<AllGatherStream>(ctx, k, v);
  }
  TORCH_INTERNAL_ASSERT(false, "unknown exchange kind");
}

void return_key_value_grads(ExchangeKind kind, const ExchangeContext& ctx,
                            const std::vector<RemoteGrads>& grads_by_owner, at::Tensor& grad_k,
                            at::Tensor& grad_v) {
  if (ctx.comm.size() == 1) return;
  if (kind == ExchangeKind::kAllGather) {
    return_by_all_gather(ctx, grads_by_owner, grad_k, /*keys=*/true);
    return_by_all_gather(ctx, grads_by_owner, grad_v, /*keys=*/false);
    return;
  }
  return_point_to_point(ctx, grads_by_owner, grad_k, grad_v);
}

}  // namespace dilated_attention
