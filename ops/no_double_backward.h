// The attention backward is not itself differentiable: its kernels are ATen's backward kernels
// and our merge, none with a derivative. Under create_graph=True autograd would differentiate
// through pieces of it and return wrong second derivatives, so the backward refuses first.
#pragma once

#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

namespace dilated_attention {

// Call first in an autograd Function's backward; `op` names the op for the message.
inline void check_no_double_backward(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), op,
                              " does not support double backward (create_graph=True): its "
                              "backward is not differentiable");
}

}  // namespace dilated_attention
