// Padded keys are excluded from every softmax, but the kernels exclude them with a -inf score
// and a zero weight, and NaN + -inf is NaN, 0 * NaN is NaN: a NaN or +-inf in a padded key or
// value row would reach rows that never see it. Padding commonly holds garbage (torch.empty
// buffers), so such rows are zeroed first. Their gradients are 0 either way (their weights are).
#pragma once

#include <ATen/core/Tensor.h>

namespace dilated_attention {

// x [B, n, h, D] (key or value) with the rows where key_padding_mask [B, n] is True zeroed, when
// the device checks non-finite values on the host (DeviceKernels::checks_non_finite_on_host)
// and x holds one; x itself, no copy, otherwise (and without a mask).
at::Tensor without_non_finite_padding(const at::Tensor& x, const at::Tensor& key_padding_mask);

// Zeroes the rows of a key or value gradient grad [B, n, h, D] where key_padding_mask [B, n] is
// True: a padded key is in no softmax, so its gradient is 0, but the kernels compute it as a sum
// of zero weights times row terms, and 0 * NaN is NaN where a row that sees it is NaN.
void zero_padded_rows_(at::Tensor& grad, const at::Tensor& key_padding_mask);

}  // namespace dilated_attention
