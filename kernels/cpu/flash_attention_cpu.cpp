#include "kernels/cpu/flash_attention_cpu.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/flash_packing.h"
#include "kernels/cpu/flash_rows.h"

namespace dilated_attention {
namespace {

using namespace flash;

// The keys and values of one (view batch, key head), block by block, as the products' B
// operands: block b of keys is K[b]^T (D x kKeyBlock), block b of values is V[b] (kKeyBlock x D,
// a padded key's row and the rows past the end zero, so no NaN behind a zero weight is read).
template <typename T>
struct PackedKeysValues {
  std::vector<T> keys, values;
  std::vector<bool> fully_padded;  // per key block

  void pack(const Strided4d<T>& k, const Strided4d<T>& v, int64_t b, int64_t head, int64_t key_len,
            int64_t head_dim, const float* padded) {
    pack_key_blocks<T>(k, b, head, key_len, head_dim, nullptr, &keys, nullptr);
    pack_key_blocks<T>(v, b, head, key_len, head_dim, padded, nullptr, &values);
    fully_padded = fully_padded_key_blocks(padded, key_len);
  }
};

// One thread's buffers for a query block against one key block.
template <typename T>
struct QueryBlockScratch {
  std::vector<float> scores, acc, keep;
  std::vector<T> weights;
  std::vector<OnlineSoftmaxRow> rows;
  explicit QueryBlockScratch(int64_t head_dim)
      : scores(kQueryBlock * kKeyBlock),
        acc(static_cast<size_t>(kQueryBlock * head_dim)),
        keep(kKeyBlock),
        weights(kQueryBlock * kKeyBlock),
        rows(kQueryBlock) {}
};

struct Shapes {
  int64_t batch, heads, key_heads, query_len, key_len, head_dim;
};

// Output rows of query block [first, first + rows) of (b, h): an online softmax over the key
// blocks the block sees (all of them, or up to the diagonal when causal) but fully padded ones.
template <typename T>
void attend_query_block(const Shapes& shape, const T* query, int64_t query_row_stride,
                        const PackedKeysValues<T>& packed, const float* padded, bool is_causal,
                        float scale, const SliceDropout& dropout, int64_t first, int64_t rows,
                        QueryBlockScratch<T>& scratch, T* out, int64_t out_row_stride, float* lse) {
  const auto& kernels = flash_row_kernels<T>();
  const int64_t D = shape.head_dim, key_len = shape.key_len;
  std::fill(scratch.acc.begin(), scratch.acc.begin() + rows * D, 0.0f);
  std::fill(scratch.rows.begin(), scratch.rows.begin() + rows,
            OnlineSoftmaxRow{-std::numeric_limits<float>::infinity(), 0.0f});
  const int64_t seen_keys = is_causal ? std::min(key_len, first + rows) : key_len;
  for (int64_t key_first = 0; key_first < seen_keys; key_first += kKeyBlock) {
    if (packed.fully_padded[static_cast<size_t>(key_first / kKeyBlock)]) continue;
    const int64_t n = std::min(kKeyBlock, key_len - key_first);
    const int64_t n_packed = kVnni<T> ? (n + 1) / 2 * 2 : n;
    const int64_t block_offset = (key_first / kKeyBlock) * kKeyBlock * D;
    at::native::cpublas::brgemm(rows, n, D, query_row_stride, kKeyBlock, kKeyBlock, false, query,
                                packed.keys.data() + block_offset, scratch.scores.data(), kVnni<T>);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t visible = is_causal ? std::clamp<int64_t>(first + i + 1 - key_first, 0, n) : n;
      float* keep = nullptr;
      if (dropout.mask != nullptr) {
        keep = scratch.keep.data();
        dropout.keep_factors(first + i, key_first, n, keep);
      }
      kernels.online_block(scratch.scores.data() + i * kKeyBlock, n, visible, scale,
                           padded == nullptr ? nullptr : padded + key_first, keep, scratch.rows[i],
                           scratch.weights.data() + i * kKeyBlock, n_packed,
                           scratch.acc.data() + i * D, D);
    }
    at::native::cpublas::brgemm(rows, D, n_packed, kKeyBlock, D, D, true, scratch.weights.data(),
                                packed.values.data() + block_offset, scratch.acc.data(), kVnni<T>);
  }
  for (int64_t i = 0; i < rows; ++i) {
    lse[i] = kernels.finish_row(scratch.acc.data() + i * D, D, scratch.rows[i],
                                out + i * out_row_stride);
  }
}

template <typename T>
void fused_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& padding_flags, const BlockOptions& options, at::Tensor& out,
                   at::Tensor& lse) {
  const Shapes shape{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  const int64_t share = shape.heads / shape.key_heads;
  const int64_t query_blocks = ceil_div(shape.query_len, kQueryBlock);
  // A unit is one (view batch, key head): its keys and values are packed once per thread and
  // serve every query block of the heads that share them. Units split into chunks of query
  // blocks only when there are too few of them to keep every thread busy.
  const int64_t units = shape.batch * shape.key_heads;
  const int64_t tasks_per_unit = share * query_blocks;
  const int64_t chunks =
      std::clamp<int64_t>(ceil_div(4 * at::get_num_threads(), units), 1, tasks_per_unit);
  const int64_t tasks_per_chunk = ceil_div(tasks_per_unit, chunks);
  const Strided4d<T> keys(k), values(v), queries(q);
  // out is [B', Lq, h, D] in memory, viewed as [B', h, Lq, D] (as ATen's kernel returns it).
  T* out_data = out.data_ptr<T>();
  float* lse_data = lse.data_ptr<float>();
  const float* flags = padding_flags.defined() ? padding_flags.const_data_ptr<float>() : nullptr;
  const float scale = static_cast<float>(options.scale);
  parallel_over_items(units * chunks, [&](const auto& take) {
    PackedKeysValues<T> packed;
    QueryBlockScratch<T> scratch(shape.head_dim);
    int64_t packed_unit = -1;
    for (int64_t item = take(); item >= 0; item = take()) {
      const int64_t unit = item / chunks, chunk = item % chunks;
      const int64_t b = unit / shape.key_heads, key_head = unit % shape.key_heads;
      const float* padded = flags == nullptr ? nullptr : flags + b * shape.key_len;
      const int64_t task_end = std::min(tasks_per_unit, (chunk + 1) * tasks_per_chunk);
      for (int64_t task = chunk * tasks_per_chunk; task < task_end; ++task) {
        if (unit != packed_unit) {
          packed.pack(keys, values, b, key_head, shape.key_len, shape.head_dim, padded);
          packed_unit = unit;
        }
        const int64_t h = key_head * share + task / query_blocks;
        const int64_t first = (task % query_blocks) * kQueryBlock;
        const int64_t rows = std::min(kQueryBlock, shape.query_len - first);
        const int64_t out_row_stride = shape.heads * shape.head_dim;
        const SliceDropout dropout{options.uses_dropout() ? options.dropout : nullptr,
                                   slice_coordinates(options.where, b, h)};
        attend_query_block<T>(
            shape, queries.at(b, h, first), queries.s2, packed, padded, options.is_causal, scale,
            dropout, first, rows, scratch,
            out_data + (b * shape.query_len + first) * out_row_stride + h * shape.head_dim,
            out_row_stride, lse_data + (b * shape.heads + h) * shape.query_len + first);
      }
    }
    at::native::cpublas::brgemm_release(kVnni<T>);
  });
}

// Whether oneDNN's bf16 microkernel runs in this process: it needs AVX-512 (oneDNN's
// avx512_core, which emulates the bf16 dot products where AVX512-BF16 is missing), oneDNN
// enabled (torch.backends.mkldnn), and an ISA cap (ONEDNN_MAX_CPU_ISA) that allows it. Asked
// once, by running it on a 1 x 1 x 2 product.
bool bf16_microkernel_runs() {
  static const bool runs = [] {
    try {
      const c10::BFloat16 a[2] = {c10::BFloat16(1.0f), c10::BFloat16(2.0f)};
      const c10::BFloat16 b[2] = {c10::BFloat16(3.0f), c10::BFloat16(4.0f)};
      float c = 0.0f;
      at::native::cpublas::brgemm(1, 1, 2, 2, 1, 1, false, a, b, &c, true);
      at::native::cpublas::brgemm_release(true);
      return c == 11.0f;
    } catch (const c10::Error&) {
      return false;
    }
  }();
  return runs && at::globalContext().userEnabledMkldnn();
}

// The CPUs this kernel was measured faster on (AMD Zen 4): AVX-512 (for bfloat16 with
// AVX512-BF16) and no AMX. On AMX CPUs ATen's kernel runs its bf16 products on the tiles
// (about 330 GFLOP/s at D = 64 on two Sapphire Rapids cores, more than this kernel's dot
// products reach), and nothing was measured on AVX2-only CPUs: ATen's kernel stays there.
bool measured_faster_here(at::ScalarType dtype) {
#if defined(__GNUC__) && defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  const bool bf16 = dtype != at::kBFloat16 || __builtin_cpu_supports("avx512bf16");
  return avx512 && bf16 && !__builtin_cpu_supports("amx-bf16");
#else
  (void)dtype;
  return false;
#endif
}

enum class Choice { kMeasured, kAten, kFused };

Choice forced_choice() {
  static const Choice choice = [] {
    const char* env = std::getenv("DILATED_ATTENTION_CPU_ATTENTION");
    if (env == nullptr) return Choice::kMeasured;
    if (std::strcmp(env, "aten") == 0) return Choice::kAten;
    if (std::strcmp(env, "fused") == 0) return Choice::kFused;
    return Choice::kMeasured;
  }();
  return choice;
}

}  // namespace

at::Tensor with_readable_rows(const at::Tensor& x) {
  return (x.stride(3) == 1 && x.stride(2) >= x.size(3)) ? x : x.contiguous();
}

bool fused_forward_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options) {
  const Choice choice = forced_choice();
  if (choice == Choice::kAten) return false;
  if (options.is_causal && q.size(2) != k.size(2)) return false;  // causal blocks are square
  const auto dtype = q.scalar_type();
  if (dtype == at::kBFloat16 && (q.size(3) % 2 != 0 || !bf16_microkernel_runs())) return false;
  if (dtype != at::kBFloat16 && dtype != at::kFloat) return false;
  return choice == Choice::kFused || measured_faster_here(dtype);
}

std::tuple<at::Tensor, at::Tensor> fused_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat,
              "fused_attention_forward: expected bfloat16 or float32, got ", dtype);
  const int64_t batch = q.size(0), heads = q.size(1), query_len = q.size(2), D = q.size(3);
  auto out = at::empty({batch, query_len, heads, D}, q.options()).permute({0, 2, 1, 3});
  auto lse = at::empty({batch, heads, query_len}, q.options().dtype(at::kFloat));
  if (out.numel() == 0 || k.size(2) == 0) {  // no rows, or no key to see: 0, log-sum-exp -inf
    return {out.zero_(), lse.fill_(-std::numeric_limits<float>::infinity())};
  }
  const auto query = with_readable_rows(q);
  const auto flags = options.key_padding.defined() ? options.key_padding.to(at::kFloat).contiguous()
                                                   : at::Tensor();
  if (dtype == at::kBFloat16) {
    fused_forward<c10::BFloat16>(query, k, v, flags, options, out, lse);
  } else {
    fused_forward<float>(query, k, v, flags, options, out, lse);
  }
  return {out, lse};
}

}  // namespace dilated_attention
