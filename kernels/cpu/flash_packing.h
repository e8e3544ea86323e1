// What the CPU's fused attention kernels (flash_attention_cpu.cpp, its backward) share: block
// sizes, strided reads of [B', h, L, D] views, and the packing of operands into the layouts
// oneDNN's brgemm microkernel reads.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/block_options.h"
#include "kernels/cpu/flash_rows.h"
#include "kernels/cpu/row_kernels.h"
#include "kernels/cpu/slice_coordinates.h"
#include "kernels/index/dropout_mask.h"

namespace dilated_attention {
namespace flash {

// A query block's scores are kQueryBlock x kKeyBlock floats (32 KiB): with the block's weights,
// output rows and key/value blocks they stay in L1/L2 while both products run. On the README's
// bench config (AMD EPYC Zen 4) query blocks of 32, 64 and 128 rows and key blocks of 128, 256
// and 512 keys were all within 10% of each other; the microkernel alone runs 64 x 128 x 64
// products at about 200 GFLOP/s per core there.
constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 128;

// The dtype the products read: float32 and bfloat16 as they are (bf16 dot products into fp32),
// float16 widened to float32 as it is packed. Measured on an Emerald Rapids VM (AVX512-FP16,
// no AMX-FP16), oneDNN's f16 microkernel ran 64 x 128 x 64 products at 95-99 GFLOP/s against
// fp32's 83-104: no gain to pay a float16 rounding of the weights and of dS for, while the
// widened products are exact.
template <typename T>
using ProductType = std::conditional_t<std::is_same_v<T, c10::Half>, float, T>;

// bf16 products read their B operand as VNNI pairs: element (k, n) of a K x N block with leading
// dimension ld sits at (k / 2) * 2 * ld + 2 * n + k % 2, and K must be even.
template <typename T>
constexpr bool kVnni = std::is_same_v<T, c10::BFloat16>;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
int64_t b_index(int64_t k, int64_t n, int64_t ld) {
  if constexpr (kVnni<T>) {
    return (k / 2) * 2 * ld + 2 * n + (k % 2);
  } else {
    return k * ld + n;
  }
}

// The sizes of one attention call: q [B', h, Lq, D], k and v [B', h_kv, Lk, D].
struct CallShape {
  int64_t batch, heads, key_heads, query_len, key_len, head_dim;
  static CallShape of(const at::Tensor& q, const at::Tensor& k) {
    return {q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  }
  int64_t units() const { return batch * key_heads; }  // (view batch, key head) pairs
};

// A call's key padding as float flags [B', Lk], 1.0 at padded keys; undefined without one.
inline at::Tensor padding_flags(const BlockOptions& options) {
  return options.key_padding.defined() ? options.key_padding.to(at::kFloat).contiguous()
                                       : at::Tensor();
}

// A strided 4-d tensor's element (i0, i1, i2, i3) from its data pointer and strides.
template <typename T>
struct Strided4d {
  const T* data;
  int64_t s0, s1, s2, s3;
  explicit Strided4d(const at::Tensor& x)
      : data(x.const_data_ptr<T>()),
        s0(x.stride(0)),
        s1(x.stride(1)),
        s2(x.stride(2)),
        s3(x.stride(3)) {}
  const T* at(int64_t i0, int64_t i1, int64_t i2) const {
    return data + i0 * s0 + i1 * s1 + i2 * s2;
  }
};

// Rows [first, first + n) of x[b, head] as a B operand with N = D: row-major (kKeyBlock x D),
// bf16 with each pair of rows interleaved (VNNI); rows flagged in `zeroed` (indexed by
// first + j; may be null) and rows [n, even n) are zero; float16 widened to float32.
template <typename T, typename P = ProductType<T>>
void pack_rows(const Strided4d<T>& x, int64_t b, int64_t head, int64_t first, int64_t n,
               int64_t head_dim, const float* zeroed, P* block) {
  constexpr int64_t per_pair = kVnni<P> ? 2 : 1;
  const int64_t rows = ceil_div(n, per_pair) * per_pair;
  const auto kept = [&](int64_t j) {
    return j < n && (zeroed == nullptr || zeroed[first + j] == 0.0f);
  };
  for (int64_t j0 = 0; j0 < rows; j0 += per_pair) {
    P* out = block + j0 * head_dim;
    if constexpr (kVnni<P> && std::endian::native == std::endian::little) {
      if (x.s3 == 1 && kept(j0) && kept(j0 + 1)) {
        // Two contiguous rows into 32-bit words, row j0 in the low half: a loop the compiler
        // vectorises (element by element it took 5% of a bf16 forward).
        const auto* even = reinterpret_cast<const uint16_t*>(x.at(b, head, first + j0));
        const auto* odd = reinterpret_cast<const uint16_t*>(x.at(b, head, first + j0 + 1));
        auto* words = reinterpret_cast<uint32_t*>(out);
        for (int64_t d = 0; d < head_dim; ++d) {
          words[d] = static_cast<uint32_t>(even[d]) | (static_cast<uint32_t>(odd[d]) << 16);
        }
        continue;
      }
    } else if constexpr (!kVnni<P> && std::is_same_v<T, P>) {
      if (x.s3 == 1 && kept(j0)) {
        std::copy_n(x.at(b, head, first + j0), head_dim, out);
        continue;
      }
    } else if constexpr (!kVnni<P>) {  // float16 rows into float32
      if (x.s3 == 1 && kept(j0)) {
        flash_row_kernels<T>().to_float(x.at(b, head, first + j0), head_dim, out);
        continue;
      }
    }
    for (int64_t half = 0; half < per_pair; ++half) {
      const int64_t j = j0 + half;
      const bool zero = !kept(j);
      const T* row = zero ? nullptr : x.at(b, head, first + j);
      for (int64_t d = 0; d < head_dim; ++d) {
        out[d * per_pair + half] = zero ? P(0) : P(row[d * x.s3]);
      }
    }
  }
}

// Rows [first, first + n) of x[b, head], transposed, as a B operand with K = D: D x ld
// (ld >= n); bf16 moves (d, d + 1) pairs as one 32-bit word: the VNNI layout of X^T is the word
// transpose of X. float16 is widened row by row first.
template <typename T, typename P = ProductType<T>>
void pack_transposed(const Strided4d<T>& x, int64_t b, int64_t head, int64_t first, int64_t n,
                     int64_t head_dim, int64_t ld, P* block) {
  if constexpr (!std::is_same_v<T, P>) {
    std::vector<P> rows(static_cast<size_t>(n * head_dim));
    pack_rows<T, P>(x, b, head, first, n, head_dim, nullptr, rows.data());
    flash_row_kernels<P>().transpose(rows.data(), head_dim, block, ld, n, head_dim);
  } else {
    constexpr int64_t per_word = kVnni<T> ? 2 : 1;
    if (x.s3 == 1 && x.s2 % per_word == 0) {
      flash_row_kernels<float>().transpose(reinterpret_cast<const float*>(x.at(b, head, first)),
                                           x.s2 / per_word, reinterpret_cast<float*>(block), ld, n,
                                           head_dim / per_word);
      return;
    }
    for (int64_t j = 0; j < n; ++j) {
      const T* row = x.at(b, head, first + j);
      for (int64_t d = 0; d < head_dim; ++d) block[b_index<T>(d, j, ld)] = row[d * x.s3];
    }
  }
}

// All key rows of x[b, head], block by block (kKeyBlock rows each): into `transposed` as
// pack_transposed blocks (D x kKeyBlock) and/or into `rows` as pack_rows blocks (zeroing the
// rows flagged in `zeroed`); either output may be null.
template <typename T>
void pack_key_blocks(const Strided4d<T>& x, int64_t b, int64_t head, int64_t key_len,
                     int64_t head_dim, const float* zeroed, std::vector<ProductType<T>>* transposed,
                     std::vector<ProductType<T>>* rows) {
  using P = ProductType<T>;
  const int64_t block_size = kKeyBlock * head_dim;
  const auto size = static_cast<size_t>(ceil_div(key_len, kKeyBlock) * block_size);
  if (transposed != nullptr) transposed->resize(size);
  if (rows != nullptr) rows->resize(size);
  for (int64_t first = 0; first < key_len; first += kKeyBlock) {
    const int64_t n = std::min(kKeyBlock, key_len - first), offset = first * head_dim;
    if (transposed != nullptr) {
      pack_transposed<T, P>(x, b, head, first, n, head_dim, kKeyBlock, transposed->data() + offset);
    }
    if (rows != nullptr) {
      pack_rows<T, P>(x, b, head, first, n, head_dim, zeroed, rows->data() + offset);
    }
  }
}

// Per key block of kKeyBlock keys: whether every key in it is padded (`padded`, indexed by key,
// may be null: none is). Such a block adds nothing to any row (its weights are exact zeros and
// its value rows zero), so both kernels skip its products.
inline std::vector<bool> fully_padded_key_blocks(const float* padded, int64_t key_len) {
  std::vector<bool> fully_padded(static_cast<size_t>(ceil_div(key_len, kKeyBlock)), false);
  if (padded == nullptr) return fully_padded;
  for (int64_t first = 0; first < key_len; first += kKeyBlock) {
    const float* end = padded + std::min(key_len, first + kKeyBlock);
    fully_padded[static_cast<size_t>(first / kKeyBlock)] =
        std::all_of(padded + first, end, [](float flag) { return flag != 0.0f; });
  }
  return fully_padded;
}

// Runs thread_body(take) once on each of at::parallel_for's threads; take() hands out items
// 0, 1, ..., count - 1, each to the thread that asks first, then -1. Items differ in cost
// (fully padded key blocks are skipped, causal rows see fewer keys), and a static split left
// one thread with every unpadded view of a right-padded batch while the other idled.
template <typename ThreadBody>
void parallel_over_items(int64_t count, const ThreadBody& thread_body) {
  std::atomic<int64_t> next{0};
  const auto take = [&next, count]() -> int64_t {
    const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
    return item < count ? item : -1;
  };
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { thread_body(take); });
}

// The dropout mask of one (view batch, head) slice, or none.
struct SliceDropout {
  const DropoutMask* mask;  // null: no dropout
  SliceCoordinates at;

  // The keep factors of query row `row` for keys [key_first, key_first + n) of the slice.
  void keep_factors(int64_t row, int64_t key_first, int64_t n, float* keep) const {
    row_kernels<float>().keep_factors(mask->row_key(at.batch, at.head, at.query_position(row)),
                                      mask->drop_below(), static_cast<float>(mask->keep_scale()),
                                      at.key_position(key_first), at.step, n, keep);
  }
};

}  // namespace flash
}  // namespace dilated_attention
