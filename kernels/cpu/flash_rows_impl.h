// The row loops of flash_rows.h, written once with ATen's at::vec and compiled once per CPU
// capability by the files that build row_kernels_impl.h (row_kernels_{default,avx2,avx512}.cpp),
// which also define FLASH_ROWS_TABLE, the name of their table function.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/cpu/flash_rows.h"
#include "kernels/cpu/row_kernels_impl.h"

namespace dilated_attention {
namespace CPU_CAPABILITY {

constexpr float kLog2e = 1.4426950408889634f;

// 2^t for the exponents these loops take: t <= 0 up to rounding (a score minus the row's
// maximum or log-sum-exp) or -inf (a masked score), giving exactly 0; never NaN (a row with a
// NaN maximum stops before). On AVX-512 it is about half of at::vec's exp_u20: 2^t = 2^n 2^f
// with n = round(t), a degree-5 fit of 2^f on [-1/2, 1/2] (relative error 2.1e-7, fitted on
// Chebyshev nodes, checked in float32 Horner steps) and vscalefps for 2^n, which rounds
// 2^-160 and below to 0.
inline Vectorized<float> exp2_of_nonpositive(const Vectorized<float>& t) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 x = _mm512_max_ps(t, _mm512_set1_ps(-160.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(0.0013276466634124517f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.009675540961325169f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.05550713464617729f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24022120237350464f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6931469440460205f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0000001192092896f));
  return _mm512_scalef_ps(p, n);
#else
  return (t * Vectorized<float>(1.0f / kLog2e)).exp_u20();
#endif
}

// The larger of two maxima, NaN when either is NaN.
inline float nan_max(float a, float b) {
  return (std::isnan(a) || std::isnan(b)) ? std::numeric_limits<float>::quiet_NaN()
                                          : std::max(a, b);
}

// dst[j] = src[j] * factor in W, for j < n.
template <typename W>
void store_scaled(const float* src, float factor, int64_t n, W* dst) {
  using Vec = Vectorized<float>;
  constexpr int64_t width = Vec::size();
  const Vec vfactor(factor);
  int64_t j = 0;
  if constexpr (std::is_same_v<W, float>) {
    for (; j + width <= n; j += width) (Vec::loadu(src + j) * vfactor).store(dst + j);
  } else {
    for (; j + 2 * width <= n; j += 2 * width) {
      at::vec::convert_from_float<W>(Vec::loadu(src + j) * vfactor,
                                     Vec::loadu(src + j + width) * vfactor)
          .store(dst + j);
    }
  }
  for (; j < n; ++j) dst[j] = W(src[j] * factor);
}

// The maximum of scores[0, n), NaN when one is NaN.
inline float max_of(const float* scores, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  // vmaxps drops NaNs, at::vec::maximum keeps them at three instructions a vector: here one
  // vmaxps and one vaddps a vector, the sum telling whether every score is finite (a sum that
  // overflows only sends the row to the exact loop below).
  {
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    __m512 vsum = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
      const __m512 s = _mm512_loadu_ps(scores + j);
      vmax = _mm512_max_ps(vmax, s);
      vsum = _mm512_add_ps(vsum, s);
    }
    if (std::isfinite(_mm512_reduce_add_ps(vsum))) {
      float max = _mm512_reduce_max_ps(vmax);
      for (; j < n; ++j) max = nan_max(max, scores[j]);
      return max;
    }
  }
#endif
  using Vec = Vectorized<float>;
  constexpr int64_t width = Vec::size();
  Vec vmax(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + width <= n; j += width) vmax = at::vec::maximum(vmax, Vec::loadu(scores + j));
  float max =
      at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  for (; j < n; ++j) max = nan_max(max, scores[j]);
  return max;
}

// weights[j] = exp(scale * scores[j] - max) in W for j < n (one FMA before the exponential),
// times keep[j] where keep is not null; returns the sum of the float exponentials (before the
// keep factors and any rounding to W).
template <typename W>
float exp_into(const float* scores, int64_t n, float scale, float max, const float* keep,
               W* weights) {
  using Vec = Vectorized<float>;
  constexpr int64_t width = Vec::size();
  // exp(scale s - max) = 2^(log2(e) scale s - log2(e) max), the exponent in one FMA; a maximum
  // (or scale) beyond float's range once times log2(e) takes the scalar loop below.
  const Vec vscale(scale * kLog2e), vneg_max(-max * kLog2e);
  Vec vsum(0.0f);
  const auto kept = [keep](const Vec& e, int64_t j) {
    return keep == nullptr ? e : e * Vec::loadu(keep + j);
  };
  const bool folds = std::isfinite(max * kLog2e) && std::isfinite(scale * kLog2e);
  const int64_t vector_end = folds ? n : 0;
  int64_t j = 0;
  if constexpr (std::is_same_v<W, float>) {
    for (; j + width <= vector_end; j += width) {
      const Vec e = exp2_of_nonpositive(at::vec::fmadd(Vec::loadu(scores + j), vscale, vneg_max));
      vsum = vsum + e;
      kept(e, j).store(weights + j);
    }
  } else {
    for (; j + 2 * width <= vector_end; j += 2 * width) {
      const Vec e0 = exp2_of_nonpositive(at::vec::fmadd(Vec::loadu(scores + j), vscale, vneg_max));
      const Vec e1 =
          exp2_of_nonpositive(at::vec::fmadd(Vec::loadu(scores + j + width), vscale, vneg_max));
      vsum = vsum + e0 + e1;
      at::vec::convert_from_float<W>(kept(e0, j), kept(e1, j + width)).store(weights + j);
    }
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (; j < n; ++j) {
    const float e = std::exp(std::fma(scores[j], scale, -max));
    sum += e;
    weights[j] = W(keep == nullptr ? e : e * keep[j]);
  }
  return sum;
}

template <typename W>
void online_block(float* scores, int64_t n, int64_t visible, float scale, const float* padded,
                  const float* keep, OnlineSoftmaxRow& row, W* weights, int64_t weights_len,
                  float* acc_row, int64_t head_dim) {
  const float infinity = std::numeric_limits<float>::infinity();
  // Without masking the scale goes into the exponential's FMA (scale > 0: the caller negates
  // queries for a negative one, so the maximum of scaled scores is the scaled maximum);
  // otherwise one pass scales and masks first.
  const bool masked = padded != nullptr || visible < n;
  const float block_max =
      masked ? masked_scaled_max(scores, n, visible, scale, padded) : max_of(scores, n) * scale;
  const float exp_scale = masked ? 1.0f : scale;
  const float new_max = nan_max(row.max, block_max);
  if (!(new_max > -infinity && new_max < infinity)) {
    // -inf: nothing seen yet, nothing to add. NaN or +inf: the row is NaN whatever follows.
    if (new_max != -infinity) row.max = std::numeric_limits<float>::quiet_NaN();
    std::fill(weights, weights + weights_len, W(0));
    return;
  }
  // 0 before the first finite block; 1 (no exponential) while the maximum stays, as it mostly
  // does after the first blocks.
  const float rescale = row.max == new_max ? 1.0f : std::exp(row.max - new_max);
  const float sum = exp_into(scores, n, exp_scale, new_max, keep, weights);
  std::fill(weights + n, weights + weights_len, W(0));
  if (rescale != 1.0f) store_scaled(acc_row, rescale, head_dim, acc_row);
  row.sum = row.sum * rescale + sum;
  row.max = new_max;
}

template <typename W>
float finish_row(const float* acc_row, int64_t head_dim, const OnlineSoftmaxRow& row,
                 float out_scale, W* out) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  if (!(row.max > -std::numeric_limits<float>::infinity())) {  // NaN or -inf
    std::fill(out, out + head_dim, W(nan));
    return nan;
  }
  store_scaled(acc_row, out_scale / row.sum, head_dim, out);
  return row.max + std::log(row.sum);
}

template <typename W>
void backward_row(const float* scores, const float* grad_weights, int64_t n, int64_t visible,
                  float scale, const float* padded, const float* keep, float lse, float delta,
                  W* weights, W* grad_scores, int64_t len) {
  if (std::isnan(lse) || lse == std::numeric_limits<float>::infinity()) {
    const W fill(std::isnan(lse) ? lse : 0.0f);
    std::fill(weights, weights + n, fill);
    std::fill(grad_scores, grad_scores + n, fill);
    std::fill(weights + n, weights + len, W(0));
    std::fill(grad_scores + n, grad_scores + len, W(0));
    return;
  }
  using Vec = Vectorized<float>;
  constexpr int64_t width = Vec::size();
  const Vec vscale(scale), vneg_lse(-lse), vdelta(delta), vzero(0.0f), vlog2e(kLog2e);
  alignas(64) float lane[width];
  for (int64_t l = 0; l < width; ++l) lane[l] = static_cast<float>(l);
  const Vec lanes = Vec::loadu(lane);
  int64_t j = 0;
  for (; j < n; j += width) {
    const int64_t count = std::min(width, n - j);
    const Vec s = Vec::loadu(scores + j, count), dp = Vec::loadu(grad_weights + j, count);
    // log2(e) after the FMA: folded into it, -lse log2(e) could leave float's range.
    const Vec undropped = exp2_of_nonpositive(at::vec::fmadd(s, vscale, vneg_lse) * vlog2e);
    Vec p = undropped, dp_kept = dp;
    if (keep != nullptr) {  // the output used P * keep; dS uses the undropped P
      const Vec k = Vec::loadu(keep + j, count);
      dp_kept = dp * k;
      p = undropped * k;
    }
    Vec ds = undropped * (dp_kept - vdelta) * vscale;
    // Hidden (causal) keys, padding and lanes past n: exactly 0.
    Vec hidden = (lanes + Vec(static_cast<float>(j))) >= Vec(static_cast<float>(visible));
    if (padded != nullptr) hidden = hidden | (Vec::loadu(padded + j, count) != vzero);
    p = Vec::blendv(p, vzero, hidden);
    ds = Vec::blendv(ds, vzero, hidden);
    if constexpr (std::is_same_v<W, float>) {
      p.store(weights + j, static_cast<int>(count));
      ds.store(grad_scores + j, static_cast<int>(count));
    } else {
      at::vec::convert_from_float<W>(p, p).store(weights + j, static_cast<int>(count));
      at::vec::convert_from_float<W>(ds, ds).store(grad_scores + j, static_cast<int>(count));
    }
  }
  std::fill(weights + n, weights + len, W(0));
  std::fill(grad_scores + n, grad_scores + len, W(0));
}

// In tiles of at most 32 x 32, the largest at::vec's bf16 transpose takes.
template <typename W>
void transpose(const W* src, int64_t ld_src, W* dst, int64_t ld_dst, int64_t rows, int64_t cols) {
  constexpr int64_t tile = 32;
  for (int64_t i = 0; i < rows; i += tile) {
    for (int64_t j = 0; j < cols; j += tile) {
      at::vec::transpose_mxn<W>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst,
                                static_cast<int>(std::min(tile, rows - i)),
                                static_cast<int>(std::min(tile, cols - j)));
    }
  }
}

template <typename W>
void to_float(const W* src, int64_t n, float* dst) {
  at::vec::convert(src, dst, n);
}

template <typename W>
const FlashRowKernels<W>& flash_table() {
  static const FlashRowKernels<W> kernels{&online_block<W>, &finish_row<W>,   &backward_row<W>,
                                          &transpose<W>,    &store_scaled<W>, &to_float<W>};
  return kernels;
}

}  // namespace CPU_CAPABILITY

template <>
const FlashRowKernels<float>& FLASH_ROWS_TABLE<float>() {
  return CPU_CAPABILITY::flash_table<float>();
}
template <>
const FlashRowKernels<c10::BFloat16>& FLASH_ROWS_TABLE<c10::BFloat16>() {
  return CPU_CAPABILITY::flash_table<c10::BFloat16>();
}
template <>
const FlashRowKernels<c10::Half>& FLASH_ROWS_TABLE<c10::Half>() {
  return CPU_CAPABILITY::flash_table<c10::Half>();
}

}  // namespace dilated_attention
