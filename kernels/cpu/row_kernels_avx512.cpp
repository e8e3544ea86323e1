// The AVX-512 build of the row loops. CMake compiles this file with -mavx512f -mavx512bw
// -mavx512vl -mavx512dq -mfma and CPU_CAPABILITY=AVX512, CPU_CAPABILITY_AVX512 (as ATen's AVX-512
// kernels are built); row_kernels.cpp calls it only where the CPU has those features.
#define ROW_KERNELS_TABLE row_kernels_avx512
#define FLASH_ROWS_TABLE flash_row_kernels_avx512
#include "kernels/cpu/flash_rows_impl.h"
#include "kernels/cpu/row_kernels_impl.h"

namespace dilated_attention {
bool row_kernels_x86_compiled() { return true; }
}  // namespace dilated_attention
