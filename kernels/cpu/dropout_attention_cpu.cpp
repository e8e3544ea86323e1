#include "kernels/cpu/dropout_attention_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
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

// Turns a block of scaled scores into softmax weights in place (entries above the causal limit
// become 0) and returns nothing: `lse` gets each row's log-sum-exp, given or computed.
template <typename acc_t>
void scores_to_weights(acc_t* scores, int64_t rows, int64_t cols, int64_t first_row, bool is_causal,
                       acc_t* lse, bool lse_given) {
  for (int64_t i = 0; i < rows; ++i) {
    acc_t* row = scores + i * cols;
    const int64_t visible = is_causal ? std::min(cols, first_row + i + 1) : cols;
    if (!lse_given) {
      acc_t row_max = -std::numeric_limits<acc_t>::infinity();
      for (int64_t j = 0; j < visible; ++j) row_max = std::max(row_max, row[j]);
      acc_t sum = 0;
      for (int64_t j = 0; j < visible; ++j) sum += std::exp(row[j] - row_max);
      lse[i] = row_max + std::log(sum);
    }
    for (int64_t j = 0; j < visible; ++j) row[j] = std::exp(row[j] - lse[i]);
    std::fill(row + visible, row + cols, acc_t(0));
  }
}

// Applies the dropout mask to a block of weights: out[i, j] = w[i, j] * keep * 1/(1-p).
template <typename acc_t>
void apply_mask(const acc_t* weights, acc_t* out, int64_t rows, int64_t cols, int64_t first_row,
                const SliceCoordinates& at, const DropoutMask& mask) {
  const auto keep_scale = static_cast<acc_t>(mask.keep_scale());
  for (int64_t i = 0; i < rows; ++i) {
    const uint64_t row_key = mask.row_key(at.batch, at.head, at.query_position(first_row + i));
    for (int64_t j = 0; j < cols; ++j) {
      out[i * cols + j] =
          mask.keeps(row_key, at.key_position(j)) ? weights[i * cols + j] * keep_scale : acc_t(0);
    }
  }
}

template <typename acc_t>
void forward_slice(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor out,
                   acc_t* lse, bool is_causal, double scale, const DropoutMask& mask,
                   const SliceCoordinates& at) {
  const int64_t query_len = q.size(0), key_len = k.size(0);
  const auto key_t = k.t();
  for (int64_t first = 0; first < query_len; first += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, query_len - first);
    auto weights = at::mm(q.narrow(0, first, rows), key_t).mul_(scale);
    auto* w = weights.data_ptr<acc_t>();
    scores_to_weights(w, rows, key_len, first, is_causal, lse + first, /*lse_given=*/false);
    apply_mask(w, w, rows, key_len, first, at, mask);
    out.narrow(0, first, rows).copy_(at::mm(weights, v));
  }
}

template <typename acc_t>
void backward_slice(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const acc_t* lse_in,
                    at::Tensor grad_q, at::Tensor grad_k, at::Tensor grad_v, bool is_causal,
                    double scale, const DropoutMask& mask, const SliceCoordinates& at) {
  const int64_t query_len = q.size(0), key_len = k.size(0), head_dim = q.size(1);
  const auto key_t = k.t();
  const auto value_t = v.t();
  std::vector<acc_t> lse(lse_in, lse_in + query_len);
  for (int64_t first = 0; first < query_len; first += kQueryBlock) {
    const int64_t rows = std::min(kQueryBlock, query_len - first);
    const auto q_block = q.narrow(0, first, rows);
    const auto dout_block = grad_out.narrow(0, first, rows);
    auto weights = at::mm(q_block, key_t).mul_(scale);
    auto* w = weights.data_ptr<acc_t>();
    scores_to_weights(w, rows, key_len, first, is_causal, lse.data() + first, /*lse_given=*/true);
    auto dropped = at::empty_like(weights);
    apply_mask(w, dropped.data_ptr<acc_t>(), rows, key_len, first, at, mask);
    grad_v.addmm_(dropped.t(), dout_block);

    // dS = W * (mask(dO V^T) - rowsum(dO * O)): the softmax backward through the dropout.
    auto grad_weights = at::mm(dout_block, value_t);
    auto* gw = grad_weights.data_ptr<acc_t>();
    apply_mask(gw, gw, rows, key_len, first, at, mask);
    const acc_t* o = out.data_ptr<acc_t>() + first * head_dim;
    const acc_t* dout = dout_block.data_ptr<acc_t>();
    for (int64_t i = 0; i < rows; ++i) {
      acc_t row_dot = 0;
      for (int64_t d = 0; d < head_dim; ++d)
        row_dot += dout[i * head_dim + d] * o[i * head_dim + d];
      for (int64_t j = 0; j < key_len; ++j) {
        gw[i * key_len + j] = w[i * key_len + j] * (gw[i * key_len + j] - row_dot);
      }
    }
    grad_q.narrow(0, first, rows).copy_(at::mm(grad_weights, k).mul_(scale));
    grad_k.addmm_(grad_weights.t(), q_block, /*beta=*/1, /*alpha=*/scale);
  }
}

// Runs `body(view_batch, view_head)` over every (batch*segment, head) slice in parallel.
template <typename Body>
void for_each_slice(const at::Tensor& q, const Body& body) {
  const int64_t heads = q.size(1);
  at::parallel_for(0, q.size(0) * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) body(task / heads, task % heads);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> dropout_attention_forward(const at::Tensor& q,
                                                             const at::Tensor& k,
                                                             const at::Tensor& v, bool is_causal,
                                                             double scale, const DropoutMask& mask,
                                                             const ViewCoordinates& where) {
  const auto acc = at::toOpMathType(q.scalar_type());
  auto out = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  auto lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES(acc, "dropout_attention_forward", [&] {
    for_each_slice(q, [&](int64_t b, int64_t h) {
      auto out_acc = at::empty({q.size(2), q.size(3)}, q.options().dtype(acc));
      forward_slice<scalar_t>(slice_as(q, b, h, acc), slice_as(k, b, h, acc),
                              slice_as(v, b, h, acc), out_acc,
                              lse.select(0, b).select(0, h).data_ptr<scalar_t>(), is_causal, scale,
                              mask, slice_coordinates(where, b, h));
      out.select(0, b).select(0, h).copy_(out_acc);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dropout_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, bool is_causal, double scale,
    const DropoutMask& mask, const ViewCoordinates& where) {
  const auto acc = at::toOpMathType(q.scalar_type());
  auto grad_q = at::empty(q.sizes(), q.options());
  auto grad_k = at::empty(k.sizes(), k.options());
  auto grad_v = at::empty(v.sizes(), v.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "dropout_attention_backward", [&] {
    for_each_slice(q, [&](int64_t b, int64_t h) {
      const auto slice_options = q.options().dtype(acc);
      auto dq = at::empty({q.size(2), q.size(3)}, slice_options);
      auto dk = at::zeros({k.size(2), k.size(3)}, slice_options);
      auto dv = at::zeros({v.size(2), v.size(3)}, slice_options);
      const auto lse_row = lse.select(0, b).select(0, h).to(acc).contiguous();
      backward_slice<scalar_t>(slice_as(grad_out, b, h, acc), slice_as(q, b, h, acc),
                               slice_as(k, b, h, acc), slice_as(v, b, h, acc),
                               slice_as(out, b, h, acc), lse_row.data_ptr<scalar_t>(), dq, dk, dv,
                               is_causal, scale, mask, slice_coordinates(where, b, h));
      grad_q.select(0, b).select(0, h).copy_(dq);
      grad_k.select(0, b).select(0, h).copy_(dk);
      grad_v.select(0, b).select(0, h).copy_(dv);
    });
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace dilated_attention
