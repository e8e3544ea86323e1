// The per-row loops of the CPU's dropout attention kernel (kernels/cpu/dropout_attention_cpu.cpp):
// the dropout mask's keep factors and the softmax of one row of scores, fused into single passes.
// Each is compiled twice, for AVX-512 and for any x86-64 / other CPU (row_kernels_impl.h), and
// the table of the CPU this runs on is picked once (row_kernels.cpp).
#pragma once

#include <cstdint>

namespace dilated_attention {

// The dropout mask of one query row (kernels/index/dropout_mask.h): its row_key, the threshold
// below which a draw is dropped, 1 / (1 - p), and the key positions first, first + step, ...
template <typename T>
struct DropoutRow {
  uint64_t row_key;
  uint64_t drop_below;
  T keep_scale;
  int64_t first;
  int64_t step;
};

// What a row's softmax leaves besides its weights: the log-sum-exp, and the factor that
// normalises the weights (1 / the sum of their exponentials), applied to the row's output once
// it is a D-vector instead of to every weight.
template <typename T>
struct RowSoftmax {
  T lse;
  T inverse_sum;
};

template <typename T>  // float or double: the accumulation dtype
struct RowKernels {
  // out[j] = keep_scale where the weight (row_key's query, key position first + j * step) is
  // kept by the mask (kernels/index/dropout_mask.h: draw >= drop_below), else 0, for j < n.
  void (*keep_factors)(uint64_t row_key, uint64_t drop_below, T keep_scale, int64_t first,
                       int64_t step, int64_t n, T* out) = nullptr;
  // One row of raw scores q.k over n keys, of which keys [0, visible) may be seen (the rest are
  // above the causal diagonal) and padded[j] != 0 marks padding (padded may be null). In place:
  // scores become exp(scale * q.k - max), times the keep factor of the mask for j < visible
  // (dropout may be null; `keep` is scratch of n values). The softmax weights are these times
  // inverse_sum. As ATen's logsumexp and exp do: a NaN score makes the row NaN; a maximum of
  // +-inf gives log-sum-exp +-inf, NaN (or 0) weights and inverse_sum 1.
  RowSoftmax<T> (*softmax_row)(T* scores, int64_t n, int64_t visible, T scale, const T* padded,
                               const DropoutRow<T>* dropout, T* keep) = nullptr;
  // One row of raw scores, as above, made exp(scale * q.k - lse) in place (0 where hidden or
  // padded): backward's weights, normalised by the forward's log-sum-exp.
  void (*weights_row)(T* scores, int64_t n, int64_t visible, T scale, const T* padded,
                      T lse) = nullptr;
};

// The table for the CPU this process runs on: AVX-512 (F, BW, VL, DQ), else AVX2 (with FMA,
// F16C), else the portable build; DILATED_ATTENTION_CPU_CAPABILITY=avx2 or =default caps the
// choice (so the tests run every build on one machine). Picked once per process.
template <typename T>
const RowKernels<T>& row_kernels();

// "avx512", "avx2" or "default": which table row_kernels() returns.
const char* row_kernels_capability();

// The tables of each build. The x86 ones may only be called where the CPU has their features;
// where the compiler cannot build them (row_kernels_x86_compiled() false) they are the portable
// one.
template <typename T>
const RowKernels<T>& row_kernels_default();
template <typename T>
const RowKernels<T>& row_kernels_avx2();
template <typename T>
const RowKernels<T>& row_kernels_avx512();
bool row_kernels_x86_compiled();

}  // namespace dilated_attention
