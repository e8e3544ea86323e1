#include "kernels/cpu/row_kernels.h"

#include <cstdlib>
#include <cstring>

#include "kernels/cpu/flash_rows.h"

namespace dilated_attention {
namespace {

bool cpu_has(const char* capability) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (std::strcmp(capability, "avx512") == 0) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  }
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  (void)capability;
  return false;
#endif
}

// The best build this CPU runs, capped by DILATED_ATTENTION_CPU_CAPABILITY (default, avx2).
const char* pick_capability() {
  const char* cap = std::getenv("DILATED_ATTENTION_CPU_CAPABILITY");
  const bool capped_default = cap != nullptr && std::strcmp(cap, "default") == 0;
  const bool capped_avx2 = cap != nullptr && std::strcmp(cap, "avx2") == 0;
  if (!row_kernels_x86_compiled() || capped_default) return "default";
  if (!capped_avx2 && cpu_has("avx512")) return "avx512";
  return cpu_has("avx2") ? "avx2" : "default";
}

const char* capability() {
  static const char* const picked = pick_capability();
  return picked;
}

// The build's table of the picked capability (every table is only function pointers: none runs).
template <typename Table>
const Table& for_capability(const Table& avx512, const Table& avx2, const Table& portable) {
  if (std::strcmp(capability(), "avx512") == 0) return avx512;
  return std::strcmp(capability(), "avx2") == 0 ? avx2 : portable;
}

}  // namespace

template <typename T>
const RowKernels<T>& row_kernels() {
  static const RowKernels<T>& picked =
      for_capability(row_kernels_avx512<T>(), row_kernels_avx2<T>(), row_kernels_default<T>());
  return picked;
}

template const RowKernels<float>& row_kernels<float>();
template const RowKernels<double>& row_kernels<double>();

template <typename W>
const FlashRowKernels<W>& flash_row_kernels() {
  static const FlashRowKernels<W>& picked = for_capability(
      flash_row_kernels_avx512<W>(), flash_row_kernels_avx2<W>(), flash_row_kernels_default<W>());
  return picked;
}

template const FlashRowKernels<float>& flash_row_kernels<float>();
template const FlashRowKernels<c10::BFloat16>& flash_row_kernels<c10::BFloat16>();
template const FlashRowKernels<c10::Half>& flash_row_kernels<c10::Half>();

const char* row_kernels_capability() { return capability(); }

}  // namespace dilated_attention
