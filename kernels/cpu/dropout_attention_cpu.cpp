#include "kernels/cpu/dropout_attention_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/row_kernels.h"
#include "kernels/cpu/slice_coordinates.h"

namespace dilated_attention {
namespace {

// Query rows per block: the score block is kQueryBlock x L, small enough to stay in cache-sized
// pieces for L in the thousands.
constexpr int64_t kQueryBlock = 128;

at::Tensor slice_as(const at::Tensor& x, int64_t view_batch, int64_t view_head,
                    at::ScalarType dtype) {
  return x.select(0, view_batch).select(0, view_head).to(dtype).contiguous();
}

// The keep factors of query row `row` (1 / (1 - p) where kept, 0 where dropped) for keys
// [0, visible), and 0 for keys [visible, n), which the row does not see.
template <typename acc_t>
void fill_keep_row(acc_t* keep, int64_t n, int64_t visible, int64_t row, const SliceCoordinates& at,
                   const DropoutMask& mask) {
  row_kernels<acc_t>().keep_factors(mask.row_key(at.batch, at.head, at.query_position(row)),
                                    mask.drop_below(), static_cast<acc_t>(mask.keep_scale()),
                                    at.key_first, at.step, visible, keep);
  std::fill(keep + visible, keep + n, acc_t(0));
}

// Keys query row i of a block starting at `first` may see: a causal block is square.
int64_t visible_keys(bool is_causal, int64_t first, int64_t i, int64_t key_len) {
  return is_causal ? std::min(key_len, first + i + 1) : key_len;
}

// `padded` ([Lk] bool or undefined) as [Lk] flags in the accumulation dtype (1 = padded), the
// form the row kernels read; null data without a mask.
at::Tensor padding_flags(const at::Tensor& padded, at::ScalarType acc) {
  return padded.defined() ? padded.to(acc).contiguous() : at::Tensor();
}

template <typename acc_t>
const acc_t* data_or_null(const at::Tensor& x) {
  return x.defined() ? x.const_data_ptr<acc_t>() : nullptr;
}

// Each query block's scores come from one GEMM; one pass per row then makes them the dropped-out,
// unnormalised softmax weights with the mask drawn in the same pass (row_kernels.h), one more GEMM
// gives the block's output, and each output row is normalised once, as a D-vector.
template <typename acc_t>
void forward_slice(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor out,
                   acc_t* lse, bool is_causal, double scale, const DropoutMask& mask,
                   const SliceCoordinates& at, const at::Tensor& padded) {
  const int64_t query_len = q.size(0), key_len = k.size(0);
  const auto key_t = k.t();
  const auto flags = padding_flags(padded, q.scalar_type());
  const acc_t* pad = data_or_null<acc_t>(flags);
  const auto& rows = row_kernels<acc_t>();
  const int64_t block_rows = std::min(kQueryBlock, query_len);
  auto scores = at::empty({block_rows, key_len}, q.options());
  auto inverse_sums = at::empty({block_rows, 1}, q.options());
  std::vector<acc_t> keep(static_cast<size_t>(key_len));
  for (int64_t first = 0; first < query_len; first += kQueryBlock) {
    const int64_t block = std::min(kQueryBlock, query_len - first);
    auto block_scores = scores.narrow(0, 0, block);
    at::mm_out(block_scores, q.narrow(0, first, block), key_t);
    acc_t* s = block_scores.data_ptr<acc_t>();
    acc_t* inverse = inverse_sums.data_ptr<acc_t>();
    for (int64_t i = 0; i < block; ++i) {
      const int64_t row = first + i;
      const DropoutRow<acc_t> dropout{mask.row_key(at.batch, at.head, at.query_position(row)),
                                      mask.drop_below(), static_cast<acc_t>(mask.keep_scale()),
                                      at.key_first, at.step};
      const auto softmax =
          rows.softmax_row(s + i * key_len, key_len, visible_keys(is_causal, first, i, key_len),
                           static_cast<acc_t>(scale), pad, &dropout, keep.data());
      lse[row] = softmax.lse;
      inverse[i] = softmax.inverse_sum;
    }
    auto out_block = out.narrow(0, first, block);
    at::mm_out(out_block, block_scores, v);
    out_block.mul_(inverse_sums.narrow(0, 0, block));
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
  const auto flags = padding_flags(padded, q.scalar_type());
  const acc_t* pad = data_or_null<acc_t>(flags);
  const acc_t* row_lse = lse.const_data_ptr<acc_t>();
  const auto& rows = row_kernels<acc_t>();
  for (int64_t first = 0; first < query_len; first += kQueryBlock) {
    const int64_t block = std::min(kQueryBlock, query_len - first);
    const auto q_block = q.narrow(0, first, block);
    const auto dout_block = grad_out.narrow(0, first, block);
    // The globally normalised weights W, recomputed from the saved log-sum-exp, and the mask.
    auto weights = at::mm(q_block, key_t);
    auto keep = at::empty_like(weights);
    acc_t* w = weights.data_ptr<acc_t>();
    acc_t* kf = keep.data_ptr<acc_t>();
    for (int64_t i = 0; i < block; ++i) {
      const int64_t visible = visible_keys(is_causal, first, i, key_len);
      rows.weights_row(w + i * key_len, key_len, visible, static_cast<acc_t>(scale), pad,
                       row_lse[first + i]);
      fill_keep_row(kf + i * key_len, key_len, visible, first + i, at, mask);
    }
    grad_v.addmm_(weights.mul(keep).t(), dout_block);
    // dS = W * (keep * (dO V^T) - rowsum(dO * O)): the softmax backward through the dropout.
    const auto row_dot = (dout_block * out.narrow(0, first, block)).sum(1, /*keepdim=*/true);
    const auto grad_scores = at::mm(dout_block, value_t).mul_(keep).sub_(row_dot).mul_(weights);
    grad_q.narrow(0, first, block).copy_(at::mm(grad_scores, k).mul_(scale));
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
      auto lse_row = lse.select(0, b).select(0, h);  // contiguous: lse is new
      forward_slice<scalar_t>(slice_as(q, b, h, acc), slice_as(k, b, h / share, acc),
                              slice_as(v, b, h / share, acc), out_acc, lse_row.data_ptr<scalar_t>(),
                              is_causal, scale, mask, slice_coordinates(where, b, h),
                              padded_keys(key_padding, b));
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
