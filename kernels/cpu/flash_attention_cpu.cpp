#include "kernels/cpu/flash_attention_cpu.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <cpuid.h>
#endif

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
// a padded key's row and the rows past the end zero, so no NaN behind a zero weight is read),
// in the products' dtype.
template <typename T>
struct PackedKeysValues {
  std::vector<ProductType<T>> keys, values;
  std::vector<bool> fully_padded;  // per key block
  int64_t first_unpadded = 0;      // the first key that is not padding, key_len if none

  void pack(const Strided4d<T>& k, const Strided4d<T>& v, int64_t b, int64_t head, int64_t key_len,
            int64_t head_dim, const float* padded) {
    pack_key_blocks<T>(k, b, head, key_len, head_dim, nullptr, &keys, nullptr);
    pack_key_blocks<T>(v, b, head, key_len, head_dim, padded, nullptr, &values);
    fully_padded = fully_padded_key_blocks(padded, key_len);
    first_unpadded = padded == nullptr ? 0 : std::find(padded, padded + key_len, 0.0f) - padded;
  }
};

// One thread's buffers for a query block against one key block; `queries` holds the block's
// widened queries where the products' dtype is not the input's (float16).
template <typename T>
struct QueryBlockScratch {
  std::vector<float> scores, acc, keep;
  std::vector<ProductType<T>> weights, queries;
  std::vector<OnlineSoftmaxRow> rows;
  explicit QueryBlockScratch(int64_t head_dim)
      : scores(kQueryBlock * kKeyBlock),
        acc(static_cast<size_t>(kQueryBlock * head_dim)),
        keep(kKeyBlock),
        weights(kQueryBlock * kKeyBlock),
        queries(std::is_same_v<T, ProductType<T>> ? 0
                                                  : static_cast<size_t>(kQueryBlock * head_dim)),
        rows(kQueryBlock) {}
};

// Where a call's rows go: out[b, h, i, :] (unit stride along D) and lse[b, h, i].
template <typename T>
struct Destination {
  T* out;
  int64_t out_s0, out_s1, out_s2;
  float* lse;
  int64_t lse_s0, lse_s1, lse_s2;
  float out_scale;  // the output is written times this
};

// One forward call of a multi-group run, with its share of the run's work items: a unit is one
// (view batch, key head), whose keys and values are packed once per thread and serve every
// query block of the heads that share them; units split into `chunks` runs of (head, query
// block) tasks only when there are too few of them to keep every thread busy.
template <typename T>
struct ForwardCall {
  CallShape shape;
  Strided4d<T> queries, keys, values;
  Destination<T> to;
  const float* padding_flags;  // [B', Lk], 1.0 at padded keys, or null
  const BlockOptions* options;
  int64_t share, query_blocks, tasks_per_unit, chunks, tasks_per_chunk;

  int64_t items() const { return shape.units() * chunks; }
};

// Output rows of query block [first, first + rows) of (b, h): an online softmax over the key
// blocks the block sees (all of them, or up to the diagonal when causal) but fully padded ones.
// Rows that see no key at all give 0 and log-sum-exp -inf.
template <typename T>
void attend_query_block(const ForwardCall<T>& call, int64_t b, int64_t h,
                        const PackedKeysValues<T>& packed, const float* padded,
                        const SliceDropout& dropout, int64_t first, int64_t rows,
                        QueryBlockScratch<T>& scratch) {
  using P = ProductType<T>;
  const auto& kernels = flash_row_kernels<P>();
  const int64_t D = call.shape.head_dim, key_len = call.shape.key_len;
  const bool is_causal = call.options->is_causal;
  const float scale = static_cast<float>(call.options->scale);
  const P* query = nullptr;
  int64_t query_ld = D;
  if constexpr (std::is_same_v<T, P>) {
    query = call.queries.at(b, h, first);
    query_ld = call.queries.s2;
  } else {
    pack_rows<T, P>(call.queries, b, h, first, rows, D, nullptr, scratch.queries.data());
    query = scratch.queries.data();
  }
  std::fill(scratch.acc.begin(), scratch.acc.begin() + rows * D, 0.0f);
  std::fill(scratch.rows.begin(), scratch.rows.begin() + rows,
            OnlineSoftmaxRow{-std::numeric_limits<float>::infinity(), 0.0f});
  const int64_t seen_keys = is_causal ? std::min(key_len, first + rows) : key_len;
  for (int64_t key_first = 0; key_first < seen_keys; key_first += kKeyBlock) {
    if (packed.fully_padded[static_cast<size_t>(key_first / kKeyBlock)]) continue;
    const int64_t n = std::min(kKeyBlock, key_len - key_first);
    const int64_t n_packed = kVnni<P> ? (n + 1) / 2 * 2 : n;
    const int64_t block_offset = (key_first / kKeyBlock) * kKeyBlock * D;
    at::native::cpublas::brgemm(rows, n, D, query_ld, kKeyBlock, kKeyBlock, false, query,
                                packed.keys.data() + block_offset, scratch.scores.data(), kVnni<P>);
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
                                packed.values.data() + block_offset, scratch.acc.data(), kVnni<P>);
  }
  const auto& finish_row = flash_row_kernels<T>().finish_row;
  const auto& to = call.to;
  for (int64_t i = 0; i < rows; ++i) {
    T* out = to.out + b * to.out_s0 + h * to.out_s1 + (first + i) * to.out_s2;
    float& lse = to.lse[b * to.lse_s0 + h * to.lse_s1 + (first + i) * to.lse_s2];
    const bool sees_no_key =
        is_causal ? first + i < packed.first_unpadded : packed.first_unpadded == key_len;
    if (sees_no_key) {
      std::fill(out, out + D, T(0));
      lse = -std::numeric_limits<float>::infinity();
    } else {
      lse = finish_row(scratch.acc.data() + i * D, D, scratch.rows[i], to.out_scale, out);
    }
  }
}

// Every call's forward in one parallel region: threads take work items of any call as they
// finish one, so no thread waits at the end of a group for the others.
template <typename T>
void fused_forward(const std::vector<ForwardCall<T>>& calls) {
  std::vector<int64_t> first_item{0};  // calls[c]'s items are [first_item[c], first_item[c + 1])
  for (const auto& call : calls) first_item.push_back(first_item.back() + call.items());
  parallel_over_items(first_item.back(), [&](const auto& take) {
    PackedKeysValues<T> packed;
    QueryBlockScratch<T> scratch(calls.front().shape.head_dim);
    int64_t packed_call = -1, packed_unit = -1;
    for (int64_t item = take(); item >= 0; item = take()) {
      const auto c = static_cast<int64_t>(
          std::upper_bound(first_item.begin(), first_item.end(), item) - first_item.begin() - 1);
      const auto& call = calls[static_cast<size_t>(c)];
      const int64_t local = item - first_item[static_cast<size_t>(c)];
      const int64_t unit = local / call.chunks, chunk = local % call.chunks;
      const int64_t b = unit / call.shape.key_heads, key_head = unit % call.shape.key_heads;
      const float* padded =
          call.padding_flags == nullptr ? nullptr : call.padding_flags + b * call.shape.key_len;
      const int64_t task_end = std::min(call.tasks_per_unit, (chunk + 1) * call.tasks_per_chunk);
      for (int64_t task = chunk * call.tasks_per_chunk; task < task_end; ++task) {
        if (c != packed_call || unit != packed_unit) {
          packed.pack(call.keys, call.values, b, key_head, call.shape.key_len, call.shape.head_dim,
                      padded);
          packed_call = c;
          packed_unit = unit;
        }
        const int64_t h = key_head * call.share + task / call.query_blocks;
        const int64_t first = (task % call.query_blocks) * kQueryBlock;
        const SliceDropout dropout{call.options->uses_dropout() ? call.options->dropout : nullptr,
                                   slice_coordinates(call.options->where, b, h)};
        attend_query_block<T>(call, b, h, packed, padded, dropout, first,
                              std::min(kQueryBlock, call.shape.query_len - first), scratch);
      }
    }
    at::native::cpublas::brgemm_release(kVnni<ProductType<T>>);
  });
}

// The tensors a call reads, kept alive while the run lasts: the queries with readable rows
// (flash_attention_cpu.h) and the padding as float flags.
struct CallInputs {
  at::Tensor queries, padding_flags;
};

CallInputs call_inputs(const at::Tensor& q, const BlockOptions& options) {
  return {with_readable_rows(q), padding_flags(options)};
}

// The calls of a run with their work split: chunks per unit from the units of all calls.
template <typename T>
std::vector<ForwardCall<T>> planned_calls(const std::vector<GroupForwardInto>& groups,
                                          const std::vector<CallInputs>& inputs, float out_scale) {
  int64_t all_units = 0;
  for (const auto& group : groups) all_units += group.q.size(0) * group.k.size(1);
  std::vector<ForwardCall<T>> calls;
  for (size_t i = 0; i < groups.size(); ++i) {
    const auto& group = groups[i];
    const at::Tensor& q = inputs[i].queries;
    const auto& flags = inputs[i].padding_flags;
    const Destination<T> to{
        group.out.data_ptr<T>(), group.out.stride(0),         group.out.stride(1),
        group.out.stride(2),     group.lse.data_ptr<float>(), group.lse.stride(0),
        group.lse.stride(1),     group.lse.stride(2),         out_scale};
    ForwardCall<T> call{CallShape::of(q, group.k),
                        Strided4d<T>(q),
                        Strided4d<T>(group.k),
                        Strided4d<T>(group.v),
                        to,
                        flags.defined() ? flags.const_data_ptr<float>() : nullptr,
                        &group.options,
                        /*share=*/q.size(1) / group.k.size(1),
                        /*query_blocks=*/ceil_div(q.size(2), kQueryBlock),
                        0,
                        0,
                        0};
    call.tasks_per_unit = call.share * call.query_blocks;
    call.chunks =
        std::clamp<int64_t>(ceil_div(4 * at::get_num_threads(), all_units), 1, call.tasks_per_unit);
    call.tasks_per_chunk = ceil_div(call.tasks_per_unit, call.chunks);
    calls.push_back(call);
  }
  return calls;
}

// Runs the groups that have rows to compute; the others' rows are 0 with log-sum-exp -inf.
void run_into(const std::vector<GroupForwardInto>& groups, double out_scale) {
  std::vector<GroupForwardInto> with_work;
  for (const auto& group : groups) {
    if (group.out.numel() == 0) continue;
    if (group.k.size(2) == 0) {  // no key to see
      group.out.zero_();
      group.lse.fill_(-std::numeric_limits<double>::infinity());
      continue;
    }
    with_work.push_back(group);
  }
  if (with_work.empty()) return;
  std::vector<CallInputs> inputs;
  for (const auto& group : with_work) inputs.push_back(call_inputs(group.q, group.options));
  const auto scale = static_cast<float>(out_scale);
  switch (with_work.front().q.scalar_type()) {
    case at::kBFloat16:
      fused_forward(planned_calls<c10::BFloat16>(with_work, inputs, scale));
      break;
    case at::kHalf:
      fused_forward(planned_calls<c10::Half>(with_work, inputs, scale));
      break;
    default:
      fused_forward(planned_calls<float>(with_work, inputs, scale));
  }
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

#if defined(__GNUC__) && defined(__x86_64__)
// AMX-FP16: CPUID.(EAX=7, ECX=1):EAX bit 21 (GCC 12's __builtin_cpu_supports does not know it).
// Asked once: CPUID traps to the hypervisor in a VM, and dispatch asks per group.
bool has_amx_fp16() {
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) != 0 && ((eax >> 21) & 1u) != 0;
  }();
  return has;
}
#endif

// Where this kernel was measured faster than ATen's CPU flash kernel, on the README's bench
// config (docs/benchmarks, the notes of issue 14): AVX-512, and for bfloat16 AVX512-BF16.
// - AMD Zen 4 (no AMX): both passes, both dtypes (bf16 forward about 2.1x, float32 1.3x).
// - Intel Emerald Rapids (AMX, 2 vCPU): the same but the bf16 forward, where ATen's kernel, its
//   products on the tiles too, took 0.13-0.15 s against this kernel's 0.15-0.19 s; our bf16
//   backward took about 0.47 s against ATen's 0.68 s, our float32 forward 0.315 s against
//   0.344 s (backward equal within the machine's noise). With dropout, which ATen's kernel
//   lacks, the alternative is our dropout kernel: 0.418 s for the bf16 forward at p = 0.1.
// - float16 (widened to float32 products, flash_packing.h), Emerald Rapids, both passes: forward
//   0.241 s against ATen's 0.276 s, forward+backward 0.809 s against 1.169 s (ATen's float16
//   kernel widens too, through MKL's hgemm copies into sgemm).
//   Taken on Zen 4 too, unmeasured there: its products are the float32 kernel's, which beat
//   ATen's there. Not on CPUs with AMX-FP16 (Granite Rapids), where ATen's float16 kernel may
//   put its products on f16 tiles and nothing was measured: ATen's stays there.
// Nothing was measured on AVX2-only CPUs: ATen's kernel stays there.
bool measured_faster_here(at::ScalarType dtype, FusedPass pass, bool dropout) {
#if defined(__GNUC__) && defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (dtype == at::kHalf) return avx512 && !has_amx_fp16();
  if (dtype != at::kBFloat16) return avx512;
  const bool amx_forward =
      pass == FusedPass::kForward && !dropout && __builtin_cpu_supports("amx-bf16");
  return avx512 && __builtin_cpu_supports("avx512bf16") && !amx_forward;
#else
  (void)dtype;
  (void)pass;
  (void)dropout;
  return false;
#endif
}

// DILATED_ATTENTION_CPU_ATTENTION: unset, the measured choice; aten, fused, or fused-backward
// (ATen's forward, or the dropout kernel's, with our backward: the pairing the measured choice
// makes for bf16 on AMX CPUs, so the tests run it on any machine).
enum class Choice { kMeasured, kAten, kFused, kFusedBackward };

Choice forced_choice() {
  static const Choice choice = [] {
    const char* env = std::getenv("DILATED_ATTENTION_CPU_ATTENTION");
    if (env == nullptr) return Choice::kMeasured;
    if (std::strcmp(env, "aten") == 0) return Choice::kAten;
    if (std::strcmp(env, "fused") == 0) return Choice::kFused;
    if (std::strcmp(env, "fused-backward") == 0) return Choice::kFusedBackward;
    return Choice::kMeasured;
  }();
  return choice;
}

bool chosen(at::ScalarType dtype, FusedPass pass, bool dropout) {
  switch (forced_choice()) {
    case Choice::kAten:
      return false;
    case Choice::kFused:
      return true;
    case Choice::kFusedBackward:
      return pass == FusedPass::kBackward;
    case Choice::kMeasured:
      break;
  }
  return measured_faster_here(dtype, pass, dropout);
}

}  // namespace

at::Tensor with_readable_rows(const at::Tensor& x) {
  return (x.stride(3) == 1 && x.stride(2) >= x.size(3)) ? x : x.contiguous();
}

bool fused_kernel_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options,
                        FusedPass pass) {
  if (options.is_causal && q.size(2) != k.size(2)) return false;  // causal blocks are square
  const auto dtype = q.scalar_type();
  if (dtype == at::kBFloat16 && (q.size(3) % 2 != 0 || !bf16_microkernel_runs())) return false;
  if (dtype != at::kBFloat16 && dtype != at::kFloat && dtype != at::kHalf) return false;
  return chosen(dtype, pass, options.uses_dropout());
}

bool fused_forward_takes(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options) {
  return fused_kernel_takes(q, k, options, FusedPass::kForward);
}

std::tuple<at::Tensor, at::Tensor> fused_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options) {
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kHalf,
              "fused_attention_forward: expected bfloat16, float16 or float32, got ", dtype);
  const int64_t batch = q.size(0), heads = q.size(1), query_len = q.size(2), D = q.size(3);
  // [B', Lq, h, D] in memory, viewed as [B', h, Lq, D] (as ATen's kernel returns it).
  auto out = at::empty({batch, query_len, heads, D}, q.options()).permute({0, 2, 1, 3});
  auto lse = at::empty({batch, heads, query_len}, q.options().dtype(at::kFloat));
  run_into({{q, k, v, options, out, lse}}, 1.0);
  return {out, lse};
}

bool fused_forward_groups_into(const std::vector<GroupForwardInto>& groups, double out_scale) {
  if (groups.empty()) return true;
  const auto dtype = groups.front().q.scalar_type();
  const int64_t head_dim = groups.front().q.size(3);
  // Every operand is read as the first query's dtype with its head dim (the callers' views
  // agree; a mismatch runs group by group, where block_attention checks them).
  const auto same_kind = [&](const at::Tensor& x) {
    return x.scalar_type() == dtype && x.size(3) == head_dim;
  };
  const bool takes = std::all_of(groups.begin(), groups.end(), [&](const auto& group) {
    return same_kind(group.q) && same_kind(group.k) && same_kind(group.v) && same_kind(group.out) &&
           group.out.stride(3) == 1 && group.lse.scalar_type() == at::kFloat &&
           fused_forward_takes(group.q, group.k, group.options);
  });
  if (!takes) return false;
  run_into(groups, out_scale);
  return true;
}

}  // namespace dilated_attention
