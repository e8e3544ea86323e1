// Checks of the multi-head wrappers' inputs: x is [B, N, E] with E = embed_dim and E divisible
// by num_heads.
#pragma once

#include <ATen/core/Tensor.h>

namespace dilated_attention {

void check_multihead_input(const at::Tensor& x, const char* name, const c10::SymInt& embed_dim,
                           int64_t num_heads);

}  // namespace dilated_attention
