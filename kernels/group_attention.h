// Many head groups' (or packed sequences' parts') attention written into views of one result:
// in one call where the device writes every group into place (DeviceKernels::ForwardGroupsInto,
// BackwardGroupsInto), otherwise group by group through block_attention.h with a copy of each.
// The dilated and varlen kernels share this rule, so both take the one-call path on the same
// terms.
#pragma once

#include <vector>

#include "kernels/device_kernels.h"

namespace dilated_attention {

// Each call's output times out_scale into call.out, its log-sum-exp into call.lse.
void attend_groups_into(const std::vector<GroupForwardInto>& calls, double out_scale);

// Each call's gradients times out_scale into its grad_q, grad_k and grad_v views (grad_k and
// grad_v added to where accumulate_key_values: calls may share key/value rows); call.out is
// out_scale times the call's output, as the forward wrote it.
void attend_groups_backward_into(const std::vector<GroupBackwardInto>& calls, double out_scale,
                                 bool accumulate_key_values);

}  // namespace dilated_attention
