#include "ops/validate_multihead.h"

#include <c10/util/Exception.h>

namespace dilated_attention {

void check_multihead_input(const at::Tensor& x, const char* name, const c10::SymInt& embed_dim,
                           int64_t num_heads) {
  TORCH_CHECK_VALUE(x.dim() == 3, name, " expected 3D tensor [B, N, E], got ", x.dim(), "D");
  TORCH_CHECK_VALUE(num_heads > 0, "num_heads must be positive, got ", num_heads);
  TORCH_CHECK_VALUE(embed_dim % num_heads == 0, "embed_dim (", embed_dim,
                    ") must be divisible by num_heads (", num_heads, ")");
  TORCH_CHECK_VALUE(x.sym_size(2) == embed_dim, name, " expected embedding size ", embed_dim,
                    ", got ", x.sym_size(2));
}

}  // namespace dilated_attention
