// The portable build of the row loops: at::vec's generic vectors, for every CPU.
#define ROW_KERNELS_TABLE row_kernels_default
#define FLASH_ROWS_TABLE flash_row_kernels_default
#include "kernels/cpu/flash_rows_impl.h"
#include "kernels/cpu/row_kernels_impl.h"

#if DILATED_ATTENTION_NO_X86_TABLES
// A compiler without x86 vector flags builds no AVX2 / AVX-512 table; row_kernels() then never
// asks for them.
namespace dilated_attention {
bool row_kernels_x86_compiled() { return false; }
template <>
const RowKernels<float>& row_kernels_avx512<float>() {
  return row_kernels_default<float>();
}
template <>
const RowKernels<double>& row_kernels_avx512<double>() {
  return row_kernels_default<double>();
}
template <>
const RowKernels<float>& row_kernels_avx2<float>() {
  return row_kernels_default<float>();
}
template <>
const RowKernels<double>& row_kernels_avx2<double>() {
  return row_kernels_default<double>();
}
template <>
const FlashRowKernels<float>& flash_row_kernels_avx512<float>() {
  return flash_row_kernels_default<float>();
}
template <>
const FlashRowKernels<c10::BFloat16>& flash_row_kernels_avx512<c10::BFloat16>() {
  return flash_row_kernels_default<c10::BFloat16>();
}
template <>
const FlashRowKernels<c10::Half>& flash_row_kernels_avx512<c10::Half>() {
  return flash_row_kernels_default<c10::Half>();
}
template <>
const FlashRowKernels<float>& flash_row_kernels_avx2<float>() {
  return flash_row_kernels_default<float>();
}
template <>
const FlashRowKernels<c10::BFloat16>& flash_row_kernels_avx2<c10::BFloat16>() {
  return flash_row_kernels_default<c10::BFloat16>();
}
template <>
const FlashRowKernels<c10::Half>& flash_row_kernels_avx2<c10::Half>() {
  return flash_row_kernels_default<c10::Half>();
}
}  // namespace dilated_attention
#endif
