#include "kernels/key_padding.h"

#include "kernels/causal_pieces.h"

namespace dilated_attention {

at::Tensor without_non_finite_padding(const at::Tensor& x, const at::Tensor& key_padding_mask) {
  if (!key_padding_mask.defined() || x.numel() == 0 || !may_hold_non_finite({&x})) return x;
  return x.masked_fill(key_padding_mask.unsqueeze(-1).unsqueeze(-1), 0.0);
}

void zero_padded_rows_(at::Tensor& grad, const at::Tensor& key_padding_mask) {
  if (!key_padding_mask.defined() || grad.numel() == 0) return;
  grad.masked_fill_(key_padding_mask.unsqueeze(-1).unsqueeze(-1), 0.0);
}

}  // namespace dilated_attention
