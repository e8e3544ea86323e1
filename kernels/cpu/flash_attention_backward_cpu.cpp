// The fused forward's backward (kernels/cpu/flash_attention_cpu.h): one task per (view batch, key
// head), which owns the gradients of that head's keys and values (accumulated in float32 over
// the query heads that share them, no atomics). Per query block and key block it recomputes
// the scores and dP = dO V^T, forms P and dS in one vectorised pass per row (flash_rows.h), and
// runs the three gradient products: dV += (P * keep)^T dO, dK += dS^T Q, dQ += dS K, all five
// products in oneDNN's brgemm microkernel (bf16 dot products into fp32 for bfloat16).
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/flash_attention_cpu.h"
#include "kernels/cpu/flash_packing.h"
#include "kernels/cpu/flash_rows.h"

namespace dilated_attention {
namespace {

using namespace flash;

// One task's buffers: its keys and values packed three ways, its key gradients, and one query
// block's operands and products against one key block.
template <typename T>
struct BackwardScratch {
  std::vector<T> keys_t, values_t, key_rows;
  std::vector<bool> fully_padded;  // per key block
  std::vector<float> grad_keys, grad_values;
  std::vector<T> query_rows, grad_out_rows;
  std::vector<float> scores, grad_weights, grad_query, delta, keep;
  std::vector<T> weights, grad_scores, weights_t, grad_scores_t;

  explicit BackwardScratch(int64_t head_dim)
      : query_rows(static_cast<size_t>(kQueryBlock * head_dim)),
        grad_out_rows(static_cast<size_t>(kQueryBlock * head_dim)),
        scores(kQueryBlock * kKeyBlock),
        grad_weights(kQueryBlock * kKeyBlock),
        grad_query(static_cast<size_t>(kQueryBlock * head_dim)),
        delta(kQueryBlock),
        keep(kKeyBlock),
        weights(kQueryBlock * kKeyBlock),
        grad_scores(kQueryBlock * kKeyBlock),
        weights_t(kKeyBlock * kQueryBlock),
        grad_scores_t(kKeyBlock * kQueryBlock) {}
};

struct BackwardViews {
  int64_t heads, key_heads, query_len, key_len, head_dim;
};

template <typename T>
void store_rows(const float* src, int64_t rows, int64_t head_dim, T* dst, int64_t dst_row_stride) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t d = 0; d < head_dim; ++d) dst[i * dst_row_stride + d] = T(src[i * head_dim + d]);
  }
}

// Gradients of query block [first, first + rows) of head h; adds its key gradients to the
// task's accumulators.
template <typename T>
void backward_query_block(const BackwardViews& shape, const Strided4d<T>& q,
                          const Strided4d<T>& grad_out, const Strided4d<T>& out, const float* lse,
                          int64_t b, int64_t h, int64_t first, int64_t rows, const float* padded,
                          const BlockOptions& options, const SliceDropout& dropout,
                          BackwardScratch<T>& s, T* grad_q) {
  const auto& kernels = flash_row_kernels<T>();
  const int64_t D = shape.head_dim, key_len = shape.key_len;
  const int64_t rows_packed = kVnni<T> ? (rows + 1) / 2 * 2 : rows;
  const float scale = static_cast<float>(options.scale);
  pack_rows(q, b, h, first, rows, D, nullptr, s.query_rows.data());
  pack_rows(grad_out, b, h, first, rows, D, nullptr, s.grad_out_rows.data());
  for (int64_t i = 0; i < rows; ++i) {
    const T* o = out.at(b, h, first + i);
    const T* g = grad_out.at(b, h, first + i);
    float dot = 0.0f;
    for (int64_t d = 0; d < D; ++d) {
      dot += static_cast<float>(o[d * out.s3]) * static_cast<float>(g[d * grad_out.s3]);
    }
    s.delta[i] = dot;
  }
  std::fill(s.grad_query.begin(), s.grad_query.begin() + rows * D, 0.0f);
  const int64_t seen_keys = options.is_causal ? std::min(key_len, first + rows) : key_len;
  for (int64_t key_first = 0; key_first < seen_keys; key_first += kKeyBlock) {
    // Nothing flows through a fully padded block: its weights and dS are zero in every row
    // that sees a key (a row that sees none has no gradient), and its key gradients stay zero.
    if (s.fully_padded[static_cast<size_t>(key_first / kKeyBlock)]) continue;
    const int64_t n = std::min(kKeyBlock, key_len - key_first);
    const int64_t n_packed = kVnni<T> ? (n + 1) / 2 * 2 : n;
    const int64_t offset = key_first * D;
    at::native::cpublas::brgemm(rows, n, D, q.s2, kKeyBlock, kKeyBlock, false, q.at(b, h, first),
                                s.keys_t.data() + offset, s.scores.data(), kVnni<T>);
    at::native::cpublas::brgemm(rows, n, D, grad_out.s2, kKeyBlock, kKeyBlock, false,
                                grad_out.at(b, h, first), s.values_t.data() + offset,
                                s.grad_weights.data(), kVnni<T>);
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
                           keep, lse[first + i], s.delta[i], s.weights.data() + i * kKeyBlock,
                           s.grad_scores.data() + i * kKeyBlock, n_packed);
    }
    if (rows_packed > rows) {  // the zero query row that evens the VNNI pairs
      std::fill_n(s.weights.data() + rows * kKeyBlock, kKeyBlock, T(0));
      std::fill_n(s.grad_scores.data() + rows * kKeyBlock, kKeyBlock, T(0));
    }
    kernels.transpose(s.weights.data(), kKeyBlock, s.weights_t.data(), kQueryBlock, rows_packed, n);
    kernels.transpose(s.grad_scores.data(), kKeyBlock, s.grad_scores_t.data(), kQueryBlock,
                      rows_packed, n);
    at::native::cpublas::brgemm(n, D, rows_packed, kQueryBlock, D, D, true, s.weights_t.data(),
                                s.grad_out_rows.data(), s.grad_values.data() + offset, kVnni<T>);
    at::native::cpublas::brgemm(n, D, rows_packed, kQueryBlock, D, D, true, s.grad_scores_t.data(),
                                s.query_rows.data(), s.grad_keys.data() + offset, kVnni<T>);
    at::native::cpublas::brgemm(rows, D, n_packed, kKeyBlock, D, D, true, s.grad_scores.data(),
                                s.key_rows.data() + offset, s.grad_query.data(), kVnni<T>);
  }
  store_rows(s.grad_query.data(), rows, D, grad_q + first * D, D);
}

template <typename T>
void fused_backward(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                    const at::Tensor& padding_flags, const BlockOptions& options,
                    at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_v) {
  const BackwardViews shape{q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  const int64_t share = shape.heads / shape.key_heads, batch = q.size(0);
  const Strided4d<T> queries(q), keys(k), values(v), grad_outs(grad_out), outs(out);
  const float* flags = padding_flags.defined() ? padding_flags.const_data_ptr<float>() : nullptr;
  const float* lse_data = lse.const_data_ptr<float>();
  const int64_t D = shape.head_dim;
  parallel_over_items(batch * shape.key_heads, [&](const auto& take) {
    BackwardScratch<T> s(D);
    for (int64_t unit = take(); unit >= 0; unit = take()) {
      const int64_t b = unit / shape.key_heads, key_head = unit % shape.key_heads;
      const float* padded = flags == nullptr ? nullptr : flags + b * shape.key_len;
      pack_key_blocks<T>(keys, b, key_head, shape.key_len, D, padded, &s.keys_t, &s.key_rows);
      pack_key_blocks<T>(values, b, key_head, shape.key_len, D, nullptr, &s.values_t, nullptr);
      s.fully_padded = fully_padded_key_blocks(padded, shape.key_len);
      s.grad_keys.assign(static_cast<size_t>(s.keys_t.size()), 0.0f);
      s.grad_values.assign(static_cast<size_t>(s.keys_t.size()), 0.0f);
      for (int64_t h = key_head * share; h < (key_head + 1) * share; ++h) {
        const SliceDropout dropout{options.uses_dropout() ? options.dropout : nullptr,
                                   slice_coordinates(options.where, b, h)};
        const float* row_lse = lse_data + (b * shape.heads + h) * shape.query_len;
        T* dq = grad_q.data_ptr<T>() + (b * shape.heads + h) * shape.query_len * D;
        for (int64_t first = 0; first < shape.query_len; first += kQueryBlock) {
          backward_query_block(shape, queries, grad_outs, outs, row_lse, b, h, first,
                               std::min(kQueryBlock, shape.query_len - first), padded, options,
                               dropout, s, dq);
        }
      }
      const int64_t key_offset = (b * shape.key_heads + key_head) * shape.key_len * D;
      store_rows(s.grad_keys.data(), shape.key_len, D, grad_k.data_ptr<T>() + key_offset, D);
      store_rows(s.grad_values.data(), shape.key_len, D, grad_v.data_ptr<T>() + key_offset, D);
    }
    at::native::cpublas::brgemm_release(kVnni<T>);
  });
}

}  // namespace

bool fused_backward_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options) {
  // One task per (view batch, key head): with fewer than the threads, ATen's kernel (or the
  // dropout kernel) spreads the work better.
  return fused_kernel_takes(q, k, options, FusedPass::kBackward) &&
         q.size(0) * k.size(1) >= at::get_num_threads();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  auto grad_q = at::empty(q.sizes(), q.options());
  auto grad_k = at::empty(k.sizes(), k.options());
  auto grad_v = at::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0) {
    return {grad_q.zero_(), grad_k.zero_(), grad_v.zero_()};
  }
  const auto query = with_readable_rows(q), gradient = with_readable_rows(grad_out);
  const auto row_lse = lse.to(at::kFloat).contiguous();
  const auto flags = options.key_padding.defined() ? options.key_padding.to(at::kFloat).contiguous()
                                                   : at::Tensor();
  if (q.scalar_type() == at::kBFloat16) {
    fused_backward<c10::BFloat16>(gradient, query, k, v, out, row_lse, flags, options, grad_q,
                                  grad_k, grad_v);
  } else {
    fused_backward<float>(gradient, query, k, v, out, row_lse, flags, options, grad_q, grad_k,
                          grad_v);
  }
  return {grad_q, grad_k, grad_v};
}

}  // namespace dilated_attention
