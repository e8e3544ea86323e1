#include "kernels/group_attention.h"

#include <algorithm>

#include "kernels/block_attention.h"

namespace dilated_attention {
namespace {

template <typename Call>
bool each_is_the_kernel_alone(const std::vector<Call>& calls) {
  return std::all_of(calls.begin(), calls.end(), [](const Call& call) {
    return block_attention_is_the_kernel_alone(call.q, call.k, call.options);
  });
}

}  // namespace

void attend_groups_into(const std::vector<GroupForwardInto>& calls, double out_scale) {
  if (calls.empty()) return;
  const auto& kernels = kernels_for(calls.front().q.device().type());
  if (kernels.forward_groups_into != nullptr && each_is_the_kernel_alone(calls) &&
      kernels.forward_groups_into(calls, out_scale)) {
    return;
  }
  for (const auto& call : calls) {
    auto [out, lse] = block_attention_forward(call.q, call.k, call.v, call.options);
    call.out.copy_(out.mul_(out_scale));
    call.lse.copy_(lse);
  }
}

void attend_groups_backward_into(const std::vector<GroupBackwardInto>& calls, double out_scale,
                                 bool accumulate_key_values) {
  if (calls.empty()) return;
  const auto& kernels = kernels_for(calls.front().q.device().type());
  if (kernels.backward_groups_into != nullptr && each_is_the_kernel_alone(calls) &&
      kernels.backward_groups_into(calls, out_scale, accumulate_key_values)) {
    return;
  }
  // Each call is differentiated as if its loss were <grad_out, O> with its unscaled output
  // O = out / out_scale: every gradient then carries 1 / out_scale, removed when written back.
  for (const auto& call : calls) {
    auto [gq, gk, gv] = block_attention_backward(call.grad_out, call.q, call.k, call.v,
                                                 call.out.div(out_scale), call.lse, call.options);
    call.grad_q.copy_(gq.mul_(out_scale));
    if (accumulate_key_values) {
      call.grad_k.add_(gk.mul_(out_scale));
      call.grad_v.add_(gv.mul_(out_scale));
    } else {
      call.grad_k.copy_(gk.mul_(out_scale));
      call.grad_v.copy_(gv.mul_(out_scale));
    }
  }
}

}  // namespace dilated_attention
