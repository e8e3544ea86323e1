// The row loops of row_kernels.h, written once with ATen's at::vec and compiled once per CPU
// capability: the including file defines CPU_CAPABILITY (and CPU_CAPABILITY_AVX512 for the
// AVX-512 build, as ATen's own kernels do) and ROW_KERNELS_TABLE, the name of its table function.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/row_kernels.h"
#include "kernels/index/dropout_mask.h"

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace dilated_attention {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

#if defined(CPU_CAPABILITY_AVX512)
// The draws of one query row's keys first, first + step, ..., eight 64-bit lanes at a time: the
// same splitmix64 steps as dropout_draw, lane by lane. position * golden advances by addition.
class KeptLanes {
 public:
  KeptLanes(uint64_t row_key, uint64_t drop_below, int64_t first, int64_t step)
      : key_(_mm512_set1_epi64(static_cast<long long>(row_key))),
        threshold_(_mm512_set1_epi64(static_cast<long long>(drop_below))),
        mul1_(_mm512_set1_epi64(static_cast<long long>(0xbf58476d1ce4e5b9ULL))),
        mul2_(_mm512_set1_epi64(static_cast<long long>(0x94d049bb133111ebULL))) {
    const uint64_t golden_step = static_cast<uint64_t>(step) * kDropoutGolden;
    const uint64_t start = static_cast<uint64_t>(first) * kDropoutGolden;
    alignas(64) uint64_t lanes[8];
    for (int lane = 0; lane < 8; ++lane)
      lanes[lane] = start + static_cast<uint64_t>(lane) * golden_step;
    hashed_position_ = _mm512_load_si512(lanes);
    advance_ = _mm512_set1_epi64(static_cast<long long>(8 * golden_step));
  }

  // Bit i set where the weight of the next key i (of eight) is kept; moves on by eight keys.
  __mmask8 next() {
    __m512i x = _mm512_xor_si512(key_, hashed_position_);
    hashed_position_ = _mm512_add_epi64(hashed_position_, advance_);
    x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 30));
    x = _mm512_mullo_epi64(x, mul1_);
    x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 27));
    x = _mm512_mullo_epi64(x, mul2_);
    x = _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
    return _mm512_cmpge_epu64_mask(x, threshold_);
  }

 private:
  __m512i key_, threshold_, mul1_, mul2_, hashed_position_, advance_;
};
#endif

template <typename T>
void keep_factors(uint64_t row_key, uint64_t drop_below, T keep_scale, int64_t first, int64_t step,
                  int64_t n, T* out) {
  int64_t j = 0;
#if defined(CPU_CAPABILITY_AVX512)
  KeptLanes lanes(row_key, drop_below, first, step);
  for (; j + 8 <= n; j += 8) {
    const __mmask8 kept = lanes.next();
    if constexpr (sizeof(T) == 4) {
      _mm256_storeu_ps(out + j, _mm256_maskz_mov_ps(kept, _mm256_set1_ps(keep_scale)));
    } else {
      _mm512_storeu_pd(out + j, _mm512_maskz_mov_pd(kept, _mm512_set1_pd(keep_scale)));
    }
  }
#endif
  for (; j < n; ++j) {
    out[j] = dropout_draw(row_key, first + j * step) >= drop_below ? keep_scale : T(0);
  }
}

// scores[0, visible) scaled, padding set to -inf, scores[visible, n) set to -inf; returns the
// maximum (NaN when a score is NaN).
template <typename T>
T masked_scaled_max(T* scores, int64_t n, int64_t visible, T scale, const T* padded) {
  using Vec = Vectorized<T>;
  constexpr int64_t width = Vec::size();
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const Vec vscale(scale), vneg_inf(neg_inf), vzero(T(0));
  Vec vmax(neg_inf);
  int64_t j = 0;
  for (; j + width <= visible; j += width) {
    Vec s = Vec::loadu(scores + j) * vscale;
    if (padded != nullptr) s = Vec::blendv(s, vneg_inf, Vec::loadu(padded + j) != vzero);
    s.store(scores + j);
    vmax = at::vec::maximum(vmax, s);
  }
  T max = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vmax);
  for (; j < visible; ++j) {
    T s = scores[j] * scale;
    if (padded != nullptr && padded[j] != T(0)) s = neg_inf;
    scores[j] = s;
    max = (std::isnan(s) || std::isnan(max)) ? std::numeric_limits<T>::quiet_NaN()
                                             : (s > max ? s : max);
  }
  for (int64_t t = visible; t < n; ++t) scores[t] = neg_inf;
  return max;
}

template <typename T>
void multiply_by_keep(T* weights, int64_t visible, const T* keep) {
  using Vec = Vectorized<T>;
  constexpr int64_t width = Vec::size();
  int64_t j = 0;
  for (; j + width <= visible; j += width) {
    (Vec::loadu(weights + j) * Vec::loadu(keep + j)).store(weights + j);
  }
  for (; j < visible; ++j) weights[j] *= keep[j];
}

// scores[j] = exp(scores[j] - max) for j < n, times the keep factor of key j for j < visible;
// returns the sum of the exponentials before the keep factors. The AVX-512 build draws the mask
// inside this pass; the others (and the AVX-512 build's last partial vector) fill `keep` first.
template <typename T>
T exp_and_drop(T* scores, int64_t n, int64_t visible, T max, const DropoutRow<T>* dropout,
               T* keep) {
  using Vec = Vectorized<T>;
  constexpr int64_t width = Vec::size();
  const Vec vmax(max);
  Vec vsum(T(0));
  int64_t j = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if (dropout != nullptr) {
    KeptLanes lanes(dropout->row_key, dropout->drop_below, dropout->first, dropout->step);
    const __m512 keep_scale_ps = _mm512_set1_ps(static_cast<float>(dropout->keep_scale));
    const __m512d keep_scale_pd = _mm512_set1_pd(static_cast<double>(dropout->keep_scale));
    for (; j + width <= visible; j += width) {
      const Vec e = (Vec::loadu(scores + j) - vmax).exp();
      vsum = vsum + e;
      if constexpr (sizeof(T) == 4) {
        const auto low = static_cast<unsigned>(lanes.next());
        const auto high = static_cast<unsigned>(lanes.next());
        const auto kept = static_cast<__mmask16>(low | (high << 8));
        _mm512_storeu_ps(scores + j, _mm512_maskz_mul_ps(kept, e, keep_scale_ps));
      } else {
        _mm512_storeu_pd(scores + j, _mm512_maskz_mul_pd(lanes.next(), e, keep_scale_pd));
      }
    }
  }
#endif
  const int64_t dropped_so_far = j;
  for (; j + width <= n; j += width) {
    const Vec e = (Vec::loadu(scores + j) - vmax).exp();
    vsum = vsum + e;
    e.store(scores + j);
  }
  T sum = at::vec::vec_reduce_all<T>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (; j < n; ++j) {
    scores[j] = std::exp(scores[j] - max);
    sum += scores[j];
  }
  if (dropout != nullptr && dropped_so_far < visible) {
    keep_factors(dropout->row_key, dropout->drop_below, dropout->keep_scale,
                 dropout->first + dropped_so_far * dropout->step, dropout->step,
                 visible - dropped_so_far, keep);
    multiply_by_keep(scores + dropped_so_far, visible - dropped_so_far, keep);
  }
  return sum;
}

template <typename T>
RowSoftmax<T> softmax_row(T* scores, int64_t n, int64_t visible, T scale, const T* padded,
                          const DropoutRow<T>* dropout, T* keep) {
  const T max = masked_scaled_max(scores, n, visible, scale, padded);
  if (!std::isfinite(max)) {
    // Rare, and scalar: ATen's logsumexp is then the maximum itself (NaN, +inf, or -inf when
    // every score is -inf), and its weights exp(s - lse) are NaN or 0.
    for (int64_t t = 0; t < n; ++t) scores[t] = std::exp(scores[t] - max);
    if (dropout != nullptr) {
      keep_factors(dropout->row_key, dropout->drop_below, dropout->keep_scale, dropout->first,
                   dropout->step, visible, keep);
      multiply_by_keep(scores, visible, keep);
    }
    return {max, T(1)};
  }
  const T sum = exp_and_drop(scores, n, visible, max, dropout, keep);
  return {max + std::log(sum), T(1) / sum};
}

template <typename T>
void weights_row(T* scores, int64_t n, int64_t visible, T scale, const T* padded, T lse) {
  using Vec = Vectorized<T>;
  constexpr int64_t width = Vec::size();
  masked_scaled_max(scores, n, visible, scale, padded);
  const Vec vlse(lse);
  int64_t j = 0;
  for (; j + width <= n; j += width) (Vec::loadu(scores + j) - vlse).exp().store(scores + j);
  for (; j < n; ++j) scores[j] = std::exp(scores[j] - lse);
}

template <typename T>
const RowKernels<T>& table() {
  static const RowKernels<T> kernels{&keep_factors<T>, &softmax_row<T>, &weights_row<T>};
  return kernels;
}

}  // namespace CPU_CAPABILITY

template <>
const RowKernels<float>& ROW_KERNELS_TABLE<float>() {
  return CPU_CAPABILITY::table<float>();
}
template <>
const RowKernels<double>& ROW_KERNELS_TABLE<double>() {
  return CPU_CAPABILITY::table<double>();
}

}  // namespace dilated_attention
