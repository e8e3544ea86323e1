// The one TORCH_LIBRARY block of the `dilated_attention` namespace. Each op family defines its
// schemas with TORCH_LIBRARY_FRAGMENT in its own file under ops/; this block owns the namespace.
#include <torch/library.h>

TORCH_LIBRARY(dilated_attention, m) {}
