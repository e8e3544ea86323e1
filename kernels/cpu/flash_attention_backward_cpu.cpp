// The fused forward's backward (kernels/cpu/flash_attention_cpu.h): one task per (view batch, key
// head), which owns the gradients of that head's keys and values (accumulated in float32 over
// the query heads that share them, no atomics). Per query block and key block it recomputes
// the scores and dP = dO V^T, forms P and dS in one vectorised pass per row (flash_rows.h), and
// runs the three gradient products: dV += (P * keep)^T dO, dK += dS^T Q (with float products as
// dV^T += dO^T (P * keep) and dK^T += Q^T dS: kTransposesWeights), dQ += dS K, all five products
// in oneDNN's brgemm microkernel (bf16 dot products into fp32 for bfloat16; float16 widened to
// float32 as it is packed).
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/flash_attention_cpu.h"
#include "kernels/cpu/flash_packing.h"
#include "kernels/cpu/flash_rows.h"

namespace dilated_attention {
namespace {

using namespace flash;

// Where the key gradients' products need P and dS transposed. Their B operand must then be
// VNNI pairs of query rows (bf16): dV += P^T dO and dK += dS^T Q, with P and dS transposed per
// key block. With float products they run transposed instead, dV^T += dO^T P and
// dK^T += Q^T dS, whose B operands are P and dS as the row pass writes them: only the query
// block's Q and dO are transposed (once per query block, not per key block), and the key
// gradients are kept as D x kKeyBlock blocks, transposed once per task as they are stored.
template <typename P>
constexpr bool kTransposesWeights = kVnni<P>;

// Whether a query block's Q and dO rows are packed: as the transposed weights' B operands, or
// as the score products' A operands where the products are not the inputs' dtype (float16);
// float32 reads them in place.
template <typename T>
constexpr bool kPacksQueryRows =
    kTransposesWeights<ProductType<T>> || !std::is_same_v<T, ProductType<T>>;

// One task's buffers: its keys and values packed three ways, its key gradients, and one query
// block's operands and products against one key block, in the products' dtype (P).
template <typename T, typename P = ProductType<T>>
struct BackwardScratch {
  std::vector<P> keys_t, values_t, key_rows;
  std::vector<bool> fully_padded;  // per key block
  // Per key block of kKeyBlock keys: kKeyBlock x D rows, or D x kKeyBlock where the weights
  // are not transposed (kTransposesWeights).
  std::vector<float> grad_keys, grad_values;
  std::vector<P> query_rows, grad_out_rows;  // kPacksQueryRows
  std::vector<float> scores, grad_weights, grad_query, delta, lse, keep;
  std::vector<P> weights, grad_scores;
  std::vector<P> weights_t, grad_scores_t;  // kTransposesWeights: per key block
  std::vector<P> queries_t, grad_outs_t;    // otherwise: D x kQueryBlock, per query block
  std::vector<float> key_gradient_rows;     // otherwise: one block's, as they are stored

  explicit BackwardScratch(int64_t head_dim)
      : scores(kQueryBlock * kKeyBlock),
        grad_weights(kQueryBlock * kKeyBlock),
        grad_query(static_cast<size_t>(kQueryBlock * head_dim)),
        delta(kQueryBlock),
        lse(kQueryBlock),
        keep(kKeyBlock),
        weights(kQueryBlock * kKeyBlock),
        grad_scores(kQueryBlock * kKeyBlock) {
    if constexpr (kPacksQueryRows<T>) {
      query_rows.resize(static_cast<size_t>(kQueryBlock * head_dim));
      grad_out_rows.resize(static_cast<size_t>(kQueryBlock * head_dim));
    }
    if constexpr (kTransposesWeights<P>) {
      weights_t.resize(kKeyBlock * kQueryBlock);
      grad_scores_t.resize(kKeyBlock * kQueryBlock);
    } else {
      queries_t.resize(static_cast<size_t>(head_dim * kQueryBlock));
      grad_outs_t.resize(static_cast<size_t>(head_dim * kQueryBlock));
      key_gradient_rows.resize(static_cast<size_t>(kKeyBlock * head_dim));
    }
  }
};

// Rows of a [B', h, L, D] result with unit stride along D.
template <typename T>
struct ResultRows {
  T* data;
  int64_t s0, s1, s2;
  explicit ResultRows(const at::Tensor& x)
      : data(x.data_ptr<T>()), s0(x.stride(0)), s1(x.stride(1)), s2(x.stride(2)) {}
  T* at(int64_t b, int64_t h, int64_t i) const { return data + b * s0 + h * s1 + i * s2; }
};

// One call of a multi-group backward: its operands through their strides and where its
// gradients go, each written as out_scale times the gradient (added to what is there with
// `accumulate`); `out` is out_scale times this call's attention output (delta divides it out).
template <typename T>
struct BackwardCall {
  CallShape shape;
  Strided4d<T> queries, keys, values, grad_outs, outs;
  const float* lse;
  int64_t lse_s0, lse_s1, lse_s2;
  const float* padding_flags;  // [B', Lk], 1.0 at padded keys, or null
  const BlockOptions* options;
  ResultRows<T> grad_q, grad_k, grad_v;
  float out_scale;
  bool accumulate;

  float row_lse(int64_t b, int64_t h, int64_t i) const {
    return lse[b * lse_s0 + h * lse_s1 + i * lse_s2];
  }
};

// rows x D floats, times `factor`, into rows of `dst` (dst_row_stride apart): stored, or added
// to what dst holds.
template <typename T>
void store_rows(const float* src, int64_t rows, int64_t head_dim, float factor, bool accumulate,
                T* dst, int64_t dst_row_stride) {
  const auto& store_scaled = flash_row_kernels<T>().store_scaled;
  for (int64_t i = 0; i < rows; ++i) {
    T* row = dst + i * dst_row_stride;
    const float* from = src + i * head_dim;
    if (accumulate) {
      for (int64_t d = 0; d < head_dim; ++d) {
        row[d] = T(static_cast<float>(row[d]) + from[d] * factor);
      }
    } else {
      store_scaled(from, factor, head_dim, row);
    }
  }
}

// Gradients of query block [first, first + rows) of head h; adds its key gradients to the
// task's accumulators.
template <typename T>
void backward_query_block(const BackwardCall<T>& call, int64_t b, int64_t h, int64_t first,
                          int64_t rows, const float* padded, const SliceDropout& dropout,
                          BackwardScratch<T>& s) {
  using P = ProductType<T>;
  const auto& kernels = flash_row_kernels<P>();
  const auto& q = call.queries;
  const auto& grad_out = call.grad_outs;
  const auto& out = call.outs;
  const BlockOptions& options = *call.options;
  const int64_t D = call.shape.head_dim, key_len = call.shape.key_len;
  const int64_t rows_packed = kVnni<P> ? (rows + 1) / 2 * 2 : rows;
  const float scale = static_cast<float>(options.scale);
  const float infinity = std::numeric_limits<float>::infinity();
  if constexpr (kPacksQueryRows<T>) {
    pack_rows<T, P>(q, b, h, first, rows, D, nullptr, s.query_rows.data());
    pack_rows<T, P>(grad_out, b, h, first, rows, D, nullptr, s.grad_out_rows.data());
  }
  // The score products' A operands: q and dO in place, or the widened rows just packed
  // (row-major, as P is then float32).
  const P* query_a = s.query_rows.data();
  const P* grad_out_a = s.grad_out_rows.data();
  int64_t query_ld = D, grad_out_ld = D;
  if constexpr (std::is_same_v<T, P>) {
    query_a = q.at(b, h, first);
    grad_out_a = grad_out.at(b, h, first);
    query_ld = q.s2;
    grad_out_ld = grad_out.s2;
  }
  if constexpr (!kTransposesWeights<P>) {
    kernels.transpose(query_a, query_ld, s.queries_t.data(), kQueryBlock, rows, D);
    kernels.transpose(grad_out_a, grad_out_ld, s.grad_outs_t.data(), kQueryBlock, rows, D);
  }
  for (int64_t i = 0; i < rows; ++i) {
    const T* o = out.at(b, h, first + i);
    const T* g = grad_out.at(b, h, first + i);
    float dot = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      dot += static_cast<float>(o[d * out.s3]) * static_cast<float>(g[d * grad_out.s3]);
    }
    s.delta[i] = dot / call.out_scale;
    // A row that saw no key (log-sum-exp -inf, with padding) has no gradient: +inf makes every
    // weight of it exp(s - inf) = 0 exactly (DeviceKernels::Backward).
    const float lse = call.row_lse(b, h, first + i);
    s.lse[i] = padded != nullptr && lse == -infinity ? infinity : lse;
  }
  std::fill(s.grad_query.begin(), s.grad_query.begin() + rows * D, 0.0f);
  const int64_t seen_keys = options.is_causal ? std::min(key_len, first + rows) : key_len;
  for (int64_t key_first = 0; key_first < seen_keys; key_first += kKeyBlock) {
    // Nothing flows through a fully padded block: its weights and dS are zero in every row
    // that sees a key (a row that sees none has no gradient), and its key gradients stay zero.
    if (s.fully_padded[static_cast<size_t>(key_first / kKeyBlock)]) continue;
    const int64_t n = std::min(kKeyBlock, key_len - key_first);
    const int64_t n_packed = kVnni<P> ? (n + 1) / 2 * 2 : n;
    const int64_t offset = key_first * D;
    at::native::cpublas::brgemm(rows, n, D, query_ld, kKeyBlock, kKeyBlock, false, query_a,
                                s.keys_t.data() + offset, s.scores.data(), kVnni<P>);
    at::native::cpublas::brgemm(rows, n, D, grad_out_ld, kKeyBlock, kKeyBlock, false, grad_out_a,
                                s.values_t.data() + offset, s.grad_weights.data(), kVnni<P>);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t visible =
          options.is_causal ? std::clamp<int64_t>(first + i + 1 - key_first, 0, n) : n;
      float* keep = nullptr;
      if (dropout.mask != nullptr) {
        keep = s.keep.data();
        dropout.keep_factors(first + i, key_first, n, keep);
      }
      kernels.backward_row(s.scores.data() + i * kKeyBlock, s.grad_weights.data() + i * kKeyBlock,
                           n, visible, scale, padded == nullptr ? nullptr : padded + key_first,
                           keep, s.lse[i], s.delta[i], s.weights.data() + i * kKeyBlock,
                           s.grad_scores.data() + i * kKeyBlock, n_packed);
    }
    if constexpr (kTransposesWeights<P>) {
      if (rows_packed > rows) {  // the zero query row that evens the VNNI pairs
        std::fill_n(s.weights.data() + rows * kKeyBlock, kKeyBlock, P(0));
        std::fill_n(s.grad_scores.data() + rows * kKeyBlock, kKeyBlock, P(0));
      }
      kernels.transpose(s.weights.data(), kKeyBlock, s.weights_t.data(), kQueryBlock, rows_packed,
                        n);
      kernels.transpose(s.grad_scores.data(), kKeyBlock, s.grad_scores_t.data(), kQueryBlock,
                        rows_packed, n);
      at::native::cpublas::brgemm(n, D, rows_packed, kQueryBlock, D, D, true, s.weights_t.data(),
                                  s.grad_out_rows.data(), s.grad_values.data() + offset, kVnni<P>);
      at::native::cpublas::brgemm(n, D, rows_packed, kQueryBlock, D, D, true,
                                  s.grad_scores_t.data(), s.query_rows.data(),
                                  s.grad_keys.data() + offset, kVnni<P>);
    } else {
      at::native::cpublas::brgemm(D, n, rows, kQueryBlock, kKeyBlock, kKeyBlock, true,
                                  s.grad_outs_t.data(), s.weights.data(),
                                  s.grad_values.data() + offset, false);
      at::native::cpublas::brgemm(D, n, rows, kQueryBlock, kKeyBlock, kKeyBlock, true,
                                  s.queries_t.data(), s.grad_scores.data(),
                                  s.grad_keys.data() + offset, false);
    }
    at::native::cpublas::brgemm(rows, D, n_packed, kKeyBlock, D, D, true, s.grad_scores.data(),
                                s.key_rows.data() + offset, s.grad_query.data(), kVnni<P>);
  }
  for (int64_t i = 0; i < rows; ++i) {  // a row without keys: 0 even where its query is NaN
    if (s.lse[i] == infinity) std::fill_n(s.grad_query.data() + i * D, D, 0.0f);
  }
  store_rows(s.grad_query.data(), rows, D, call.out_scale, /*accumulate=*/false,
             call.grad_q.at(b, h, first), call.grad_q.s2);
}

// A task's key (or value) gradients, accumulated per key block as BackwardScratch lays them out,
// times out_scale into the rows of `to` (or added to them).
template <typename T>
void store_key_gradients(const BackwardCall<T>& call, int64_t b, int64_t key_head,
                         const std::vector<float>& blocks, const ResultRows<T>& to,
                         BackwardScratch<T>& s) {
  using P = ProductType<T>;
  const int64_t D = call.shape.head_dim, key_len = call.shape.key_len;
  if constexpr (kTransposesWeights<P>) {
    store_rows(blocks.data(), key_len, D, call.out_scale, call.accumulate, to.at(b, key_head, 0),
               to.s2);
  } else {
    for (int64_t first = 0; first < key_len; first += kKeyBlock) {
      const int64_t n = std::min(kKeyBlock, key_len - first);
      flash_row_kernels<float>().transpose(blocks.data() + first * D, kKeyBlock,
                                           s.key_gradient_rows.data(), D, D, n);
      store_rows(s.key_gradient_rows.data(), n, D, call.out_scale, call.accumulate,
                 to.at(b, key_head, first), to.s2);
    }
  }
}

// The calls' units (view batch, key head) in one parallel region, each owning the gradients
// of its key head's keys and values: their units never write the same rows.
template <typename T>
void fused_backward(const std::vector<BackwardCall<T>>& calls) {
  std::vector<int64_t> first_unit{0};  // calls[c]'s units are [first_unit[c], first_unit[c + 1])
  for (const auto& call : calls) first_unit.push_back(first_unit.back() + call.shape.units());
  parallel_over_items(first_unit.back(), [&](const auto& take) {
    BackwardScratch<T> s(calls.front().shape.head_dim);
    for (int64_t item = take(); item >= 0; item = take()) {
      const auto c = static_cast<size_t>(
          std::upper_bound(first_unit.begin(), first_unit.end(), item) - first_unit.begin() - 1);
      const auto& call = calls[c];
      const int64_t unit = item - first_unit[c], D = call.shape.head_dim;
      const int64_t b = unit / call.shape.key_heads, key_head = unit % call.shape.key_heads;
      const int64_t share = call.shape.heads / call.shape.key_heads;
      const float* padded =
          call.padding_flags == nullptr ? nullptr : call.padding_flags + b * call.shape.key_len;
      pack_key_blocks<T>(call.keys, b, key_head, call.shape.key_len, D, padded, &s.keys_t,
                         &s.key_rows);
      pack_key_blocks<T>(call.values, b, key_head, call.shape.key_len, D, nullptr, &s.values_t,
                         nullptr);
      s.fully_padded = fully_padded_key_blocks(padded, call.shape.key_len);
      s.grad_keys.assign(static_cast<size_t>(s.keys_t.size()), 0.0f);
      s.grad_values.assign(static_cast<size_t>(s.keys_t.size()), 0.0f);
      for (int64_t h = key_head * share; h < (key_head + 1) * share; ++h) {
        const SliceDropout dropout{call.options->uses_dropout() ? call.options->dropout : nullptr,
                                   slice_coordinates(call.options->where, b, h)};
        for (int64_t first = 0; first < call.shape.query_len; first += kQueryBlock) {
          backward_query_block(call, b, h, first,
                               std::min(kQueryBlock, call.shape.query_len - first), padded, dropout,
                               s);
        }
      }
      store_key_gradients(call, b, key_head, s.grad_keys, call.grad_k, s);
      store_key_gradients(call, b, key_head, s.grad_values, call.grad_v, s);
    }
    at::native::cpublas::brgemm_release(kVnni<ProductType<T>>);
  });
}

// The tensors a call reads, kept alive while the run lasts.
struct BackwardInputs {
  at::Tensor queries, grad_out, lse, padding_flags;
};

BackwardInputs backward_inputs(const GroupBackwardInto& group) {
  return {with_readable_rows(group.q), with_readable_rows(group.grad_out), group.lse.to(at::kFloat),
          padding_flags(group.options)};
}

template <typename T>
BackwardCall<T> backward_call(const GroupBackwardInto& group, const BackwardInputs& inputs,
                              float out_scale, bool accumulate) {
  const at::Tensor& q = inputs.queries;
  return {CallShape::of(q, group.k),
          Strided4d<T>(q),
          Strided4d<T>(group.k),
          Strided4d<T>(group.v),
          Strided4d<T>(inputs.grad_out),
          Strided4d<T>(group.out),
          inputs.lse.const_data_ptr<float>(),
          inputs.lse.stride(0),
          inputs.lse.stride(1),
          inputs.lse.stride(2),
          inputs.padding_flags.defined() ? inputs.padding_flags.const_data_ptr<float>() : nullptr,
          &group.options,
          ResultRows<T>(group.grad_q),
          ResultRows<T>(group.grad_k),
          ResultRows<T>(group.grad_v),
          out_scale,
          accumulate};
}

// Groups with no query row or no key have nothing to add (their key gradients are 0 where
// written rather than added to).
template <typename T>
void run_backward_into(const std::vector<GroupBackwardInto>& groups, double out_scale,
                       bool accumulate) {
  std::vector<const GroupBackwardInto*> with_work;
  for (const auto& group : groups) {
    if (group.q.numel() > 0 && group.k.numel() > 0) {
      with_work.push_back(&group);
      continue;
    }
    group.grad_q.zero_();
    if (!accumulate) {
      group.grad_k.zero_();
      group.grad_v.zero_();
    }
  }
  std::vector<BackwardInputs> inputs;
  for (const auto* group : with_work) inputs.push_back(backward_inputs(*group));
  std::vector<BackwardCall<T>> calls;
  for (size_t i = 0; i < with_work.size(); ++i) {
    calls.push_back(
        backward_call<T>(*with_work[i], inputs[i], static_cast<float>(out_scale), accumulate));
  }
  if (calls.empty()) return;
  if (!accumulate) {
    fused_backward(calls);
    return;
  }
  // Groups may share a key head (grouped-query K/V): one region per group, so no two threads
  // add to the same rows.
  for (const auto& call : calls) fused_backward(std::vector<BackwardCall<T>>{call});
}

void backward_into(const std::vector<GroupBackwardInto>& groups, double out_scale,
                   bool accumulate) {
  switch (groups.front().q.scalar_type()) {
    case at::kBFloat16:
      run_backward_into<c10::BFloat16>(groups, out_scale, accumulate);
      break;
    case at::kHalf:
      run_backward_into<c10::Half>(groups, out_scale, accumulate);
      break;
    default:
      run_backward_into<float>(groups, out_scale, accumulate);
  }
}

// One task per (view batch, key head): a parallel region with fewer than the threads leaves some
// idle, where ATen's kernel (or the dropout kernel) spreads the work better.
bool enough_units_for_the_threads(int64_t units) { return units >= at::get_num_threads(); }

int64_t units_of(const at::Tensor& q, const at::Tensor& k) { return q.size(0) * k.size(1); }

}  // namespace

bool fused_backward_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options) {
  return fused_kernel_takes(q, k, options, FusedPass::kBackward) &&
         enough_units_for_the_threads(units_of(q, k));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  auto grad_q = at::empty(q.sizes(), q.options());
  auto grad_k = at::empty(k.sizes(), k.options());
  auto grad_v = at::empty(v.sizes(), v.options());
  backward_into({{grad_out, q, k, v, out, lse, options, grad_q, grad_k, grad_v}}, 1.0,
                /*accumulate=*/false);
  return {grad_q, grad_k, grad_v};
}

bool fused_backward_groups_into(const std::vector<GroupBackwardInto>& groups, double out_scale,
                                bool accumulate_key_values) {
  if (groups.empty()) return true;
  const auto dtype = groups.front().q.scalar_type();
  const int64_t head_dim = groups.front().q.size(3);
  // Every operand is read, and every gradient written, as the first query's dtype with its head
  // dim (the callers' views agree; a mismatch runs group by group).
  const auto same_kind = [&](const at::Tensor& x) {
    return x.scalar_type() == dtype && x.size(3) == head_dim;
  };
  const bool takes = std::all_of(groups.begin(), groups.end(), [&](const auto& group) {
    const auto result_ok = [&](const at::Tensor& x) { return same_kind(x) && x.stride(3) == 1; };
    return same_kind(group.q) && same_kind(group.k) && same_kind(group.v) && same_kind(group.out) &&
           same_kind(group.grad_out) && result_ok(group.grad_q) && result_ok(group.grad_k) &&
           result_ok(group.grad_v) &&
           fused_kernel_takes(group.q, group.k, group.options, FusedPass::kBackward);
  });
  if (!takes) return false;
  // Where key values accumulate each group runs its own region (run_backward_into), so each
  // needs the units for the threads; otherwise they share one, and a short group (a varlen
  // tail part) rides with the rest.
  int64_t total_units = 0;
  for (const auto& group : groups) {
    if (group.q.numel() == 0 || group.k.numel() == 0) continue;  // no region (run_backward_into)
    const int64_t units = units_of(group.q, group.k);
    if (accumulate_key_values && !enough_units_for_the_threads(units)) return false;
    total_units += units;
  }
  if (!enough_units_for_the_threads(total_units)) return false;
  backward_into(groups, out_scale, accumulate_key_values);
  return true;
}

}  // namespace dilated_attention
