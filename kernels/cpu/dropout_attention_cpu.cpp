#include "kernels/cpu/dropout_attention_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>

namespace dilated_attention {
namespace {

// Query rows per block: the score block is kQueryBlock x L, small enough to stay in cache-sized
// pieces for L in the thousands.
constexpr int64_t kQueryBlock = 64;

// Global coordinates of one (view batch, view head) slice of a view.
struct SliceCoordinates {
  int64_t batch, head, query_first, key_first, step;
  int64_t query_position(int64_t i) const { return query_first + i * step; }
  int64_t key_position(int64_t j) const { return key_first + j * step; }
};

SliceCoordinates slice_coordinates(const ViewCoordinates& where, int64_t view_batch,
                                   int64_t view_head) {
  const int64_t view_start = (view_batch % where.views_per_batch) * where.view_stride;
  return {where.first_batch + view_batch / where.views_per_batch, where.first_head + view_head,
          view_start + where.query_first, view_start + where.key_first, where.step};
}

at::Tensor slice_as(const at::Tensor& x, int64_t view_batch, int64_t view_head,
                    at::ScalarType dtype) {
  return x.select(0, view_batch).select(0, view_head).to(dtype).contiguous();
}

// Per-weight factors of the dropout mask for query rows [first_row, first_row + rows) and every
// key: 1 / (1 - p) where the weight is kept, 0 where it is dropped. The hash is the only scalar
// loop of this kernel; the softmax and products run as vectorised ATen ops on the block.
template <typename acc_t>
at::Tensor keep_factors(int64_t rows, int64_t cols, int64_t first_row, const SliceCoordinates& at,
                        const DropoutMask& mask, const at::TensorOptions& options) {
  auto factors = at::empty({rows, cols}, options);
  acc_t* out = factors.data_ptr<acc_t>();
  const auto keep_scale = static_cast<acc_t>(mask.keep_scale());
  for (int64_t i = 0; i < rows; ++i) {
    const uint64_t row_key = mask.row_key(at.batch, at.head, at.query_position(first_row + i));
    for (int64_t j = 0; j < cols; ++j) {
      out[i * cols + j] = mask.keeps(row_key, at.key_position(j)) ? keep_scale : acc_t(0);
    }
  }
  return factors;
}

// Scaled scores of a query block against all keys, with -inf above the causal diagonal and at
// padded keys (`padded`: [Lk] bool, or undefined).
at::Tensor block_scores(const at::Tensor& q_block, const at::Tensor& key_t, int64_t first_row,
                        bool is_causal, double scale, const at::Tensor& padded) {
  auto scores = at::mm(q_block, key_t).mul_(scale);
  if (padded.defined()) {
    scores.masked_fill_(padded.unsqueeze(0), -std::numeric_limits<double>::infinity());
  }
  if (is_causal) {
    const auto opts = scores.options().dtype(at::kLong);
    const auto above = at::arange(scores.size(1), opts).unsqueeze(0) >
                       at::arange(first_row, first_row + scores.size(0), opts).unsqueeze(1);
    scores.masked_fill_(above, -std::numeric_limits<double>::infinity());
  }
  return scores;
}

template <typename acc_t>
void forward_slice(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor out,
                   at::Tensor lse, bool is_causal, double scale, const DropoutMask& mask,
                   const SliceCoordinates& at, const at::Tensor& padded) {
  const int64_t query_len = q.size(0), key_len = k.size(0);
  const auto key_t = k.t();
  for (int64_t first = 0; first < query_len; first += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, query_len - first);
    const auto scores =
        block_scores(q.narrow(0, first, rows), key_t, first, is_causal, scale, padded);
    const auto block_lse = at::logsumexp(scores, 1, /*keepdim=*/true);
    lse.narrow(0, first, rows).copy_(block_lse.squeeze(1));
    auto weights = scores.sub_(block_lse).exp_();
    weights.mul_(keep_factors<acc_t>(rows, key_len, first, at, mask, weights.options()));
    out.narrow(0, first, rows).copy_(at::mm(weights, v));
  }
}

template <typename acc_t>
void backward_slice(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    at::Tensor grad_q, at::Tensor grad_k, at::Tensor grad_v, bool is_causal,
                    double scale, const DropoutMask& mask, const SliceCoordinates& at,
                    const at::Tensor& padded) {
  const int64_t query_len = q.size(0), key_len = k.size(0);
  const auto key_t = k.t();
  const auto value_t = v.t();
  for (int64_t first = 0; first < query_len; first += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, query_len - first);
    const auto q_block = q.narrow(0, first, rows);
    const auto dout_block = grad_out.narrow(0, first, rows);
    // The globally normalised weights W, recomputed from the saved log-sum-exp.
    const auto weights = block_scores(q_block, key_t, first, is_causal, scale, padded)
                             .sub_(lse.narrow(0, first, rows).unsqueeze(1))
                             .exp_();
    const auto keep = keep_factors<acc_t>(rows, key_len, first, at, mask, weights.options());
    grad_v.addmm_(weights.mul(keep).t(), dout_block);
    // dS = W * (keep * (dO V^T) - rowsum(dO * O)): the softmax backward through the dropout.
    const auto row_dot = (dout_block * out.narrow(0, first, rows)).sum(1, /*keepdim=*/true);
    const auto grad_scores = at::mm(dout_block, value_t).mul_(keep).sub_(row_dot).mul_(weights);
    grad_q.narrow(0, first, rows).copy_(at::mm(grad_scores, k).mul_(scale));
    grad_k.addmm_(grad_scores.t(), q_block, /*beta=*/1, /*alpha=*/scale);
  }
}

// View batch b's padded keys ([Lk] bool), or undefined without a key_padding_mask.
at::Tensor padded_keys(const at::Tensor& key_padding, int64_t view_batch) {
  return key_padding.defined() ? key_padding.select(0, view_batch) : at::Tensor();
}

// Query heads per key/value head of a view pair.
int64_t heads_per_key_value(const at::Tensor& q, const at::Tensor& k) {
  return q.size(1) / k.size(1);
}

// Runs `body(view_batch, view_head)` over every (batch*segment, head) slice in parallel.
template <typename Body>
void for_each_slice(const at::Tensor& q, const Body& body) {
  const int64_t heads = q.size(1);
  at::parallel_for(0, q.size(0) * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) body(task / heads, task % heads);
  });
}

// Runs `body(view_batch, key_value_head)` over every (batch*segment, key/value head) slice in
// parallel: the query heads sharing one key/value head run in one task, which owns the
// gradients of that head's keys and values.
template <typename Body>
void for_each_key_value_slice(const at::Tensor& k, const Body& body) {
  const int64_t heads = k.size(1);
  at::parallel_for(0, k.size(0) * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) body(task / heads, task % heads);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dropout_attention_forward(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool is_causal, double scale,
    const DropoutMask& mask, const ViewCoordinates& where, const at::Tensor& key_padding) {
  const auto acc = at::toOpMathType(q.scalar_type());
  auto out = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(acc));
  const int64_t share = heads_per_key_value(q, k);
  AT_DISPATCH_FLOATING_TYPES(acc, "dropout_attention_forward", [&] {
    for_each_slice(q, [&](int64_t b, int64_t h) {
      auto out_acc = at::empty({q.size(2), q.size(3)}, q.options().dtype(acc));
      forward_slice<scalar_t>(slice_as(q, b, h, acc), slice_as(k, b, h / share, acc),
                              slice_as(v, b, h / share, acc), out_acc,
                              lse.select(0, b).select(0, h), is_causal, scale, mask,
                              slice_coordinates(where, b, h), padded_keys(key_padding, b));
      out.select(0, b).select(0, h).copy_(out_acc);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dropout_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool is_causal, double scale,
    const DropoutMask& mask, const ViewCoordinates& where, const at::Tensor& key_padding) {
  const auto acc = at::toOpMathType(q.scalar_type());
  auto grad_q = at::empty(q.sizes(), q.options());
  auto grad_k = at::empty(k.sizes(), k.options());
  auto grad_v = at::empty(v.sizes(), v.options());
  const int64_t share = heads_per_key_value(q, k);
  AT_DISPATCH_FLOATING_TYPES(acc, "dropout_attention_backward", [&] {
    for_each_key_value_slice(k, [&](int64_t b, int64_t kv_head) {
      const auto slice_options = q.options().dtype(acc);
      auto dk = at::zeros({k.size(2), k.size(3)}, slice_options);
      auto dv = at::zeros({v.size(2), v.size(3)}, slice_options);
      const auto key = slice_as(k, b, kv_head, acc), value = slice_as(v, b, kv_head, acc);
      for (int64_t h = kv_head * share; h < (kv_head + 1) * share; ++h) {
        auto dq = at::empty({q.size(2), q.size(3)}, slice_options);
        const auto lse_row = lse.select(0, b).select(0, h).to(acc).contiguous();
        backward_slice<scalar_t>(slice_as(grad_out, b, h, acc), slice_as(q, b, h, acc), key, value,
                                 slice_as(out, b, h, acc), lse_row, dq, dk, dv, is_causal, scale,
                                 mask, slice_coordinates(where, b, h), padded_keys(key_padding, b));
        grad_q.select(0, b).select(0, h).copy_(dq);
      }
      grad_k.select(0, b).select(0, kv_head).copy_(dk);
      grad_v.select(0, b).select(0, kv_head).copy_(dv);
    });
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace dilated_attention
