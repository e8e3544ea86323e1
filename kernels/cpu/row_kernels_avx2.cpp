// The AVX2 build of the row loops (vectorised exp and max; the mask's 64-bit multiplies stay
// scalar, AVX2 has none). CMake compiles this file with -mavx2 -mfma -mf16c and
// CPU_CAPABILITY=AVX2, CPU_CAPABILITY_AVX2, as ATen builds its AVX2 kernels.
#define ROW_KERNELS_TABLE row_kernels_avx2
#define FLASH_ROWS_TABLE flash_row_kernels_avx2
#include "kernels/cpu/flash_rows_impl.h"
#include "kernels/cpu/row_kernels_impl.h"
