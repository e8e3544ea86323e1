// The per-row loops of the CPU's fused attention forward (kernels/cpu/flash_attention_cpu.cpp):
// one query row's online softmax over one key block, and the row's final normalisation. Compiled
// once per CPU capability beside the dropout kernel's row loops (row_kernels.h), picked the same
// way.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace dilated_attention {

// A query row's running state over the key blocks seen so far: the maximum scaled score and the
// sum of exp(score - max). Starts at {-inf, 0}; a NaN maximum marks a row whose result is NaN
// (some visible score NaN or +inf).
struct OnlineSoftmaxRow {
  float max;
  float sum;
};

// W: the dtype the weights are multiplied in (float or c10::BFloat16), or the dtype results are
// written in (float, c10::BFloat16, c10::Half: finish_row, store_scaled, to_float).
template <typename W>
struct FlashRowKernels {
  // Raw scores q.k of one row against a block of n keys (scale > 0: kernels/block_attention.cpp
  // negates the queries of a negative scale and zeroes those of a zero one), of which keys [0,
  // visible) may be seen (the rest lie above the causal diagonal) and padded[j] != 0 marks padding
  // (padded may be null). Overwrites scores; writes weights[j] = exp(scale * q.k - max) for the
  // seen keys, 0 for the others and for j in [n, weights_len) (the even padding a VNNI block
  // needs), with max the row's new running maximum; scales acc_row (head_dim values, the row's
  // output so far) by exp(old max - new max) and updates `row`. With dropout, `keep` (else
  // null) holds the block's keep factors (0 where dropped, 1 / (1 - p) where kept): the weights
  // are multiplied by them, the sum is not (dropout acts on the normalised weights).
  void (*online_block)(float* scores, int64_t n, int64_t visible, float scale, const float* padded,
                       const float* keep, OnlineSoftmaxRow& row, W* weights, int64_t weights_len,
                       float* acc_row, int64_t head_dim) = nullptr;
  // out[d] = acc_row[d] * (out_scale / row.sum) in the output dtype (out_scale: the 1/G of a
  // group written into place, one rounding), and the row's log-sum-exp, NaN rows NaN. A row that
  // saw no finite score (row.max -inf) is NaN too: softmax over nothing, or over scores that are
  // all -inf; the caller zeroes rows that see no key at all.
  float (*finish_row)(const float* acc_row, int64_t head_dim, const OnlineSoftmaxRow& row,
                      float out_scale, W* out) = nullptr;
  // Backward, one query row against a block of n keys (visible and padded as above): from the
  // raw scores q.k, the row's forward log-sum-exp and delta = rowsum(dO * O), and dP = dO . v
  // of each key, writes the weights the output used, P * keep (P = exp(scale * q.k - lse)), and
  // dS = scale * P * (dP * keep - delta), both 0 exactly at hidden and padded keys whatever
  // their scores (no NaN behind a mask) and for j in [n, len). keep may be null (no dropout).
  // lse +inf (a row without keys): all 0; lse NaN: the row's values NaN.
  void (*backward_row)(const float* scores, const float* grad_weights, int64_t n, int64_t visible,
                       float scale, const float* padded, const float* keep, float lse, float delta,
                       W* weights, W* grad_scores, int64_t len) = nullptr;
  // dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols, bit patterns kept (the
  // float table also moves pairs of bf16 as one 32-bit word: flash_packing.h's key packs).
  void (*transpose)(const W* src, int64_t ld_src, W* dst, int64_t ld_dst, int64_t rows,
                    int64_t cols) = nullptr;
  // dst[j] = src[j] * factor in W, for j < n: gradient rows out of their float accumulators.
  void (*store_scaled)(const float* src, float factor, int64_t n, W* dst) = nullptr;
  // dst[j] = float(src[j]), for j < n: float16 rows widened for float32 products.
  void (*to_float)(const W* src, int64_t n, float* dst) = nullptr;
};

// The tables for the CPU this process runs on, picked as row_kernels() picks its own.
template <typename W>
const FlashRowKernels<W>& flash_row_kernels();

template <typename W>
const FlashRowKernels<W>& flash_row_kernels_default();
template <typename W>
const FlashRowKernels<W>& flash_row_kernels_avx2();
template <typename W>
const FlashRowKernels<W>& flash_row_kernels_avx512();

}  // namespace dilated_attention
