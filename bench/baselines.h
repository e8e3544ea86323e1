// Reference implementations the op is compared against, built only from stock ATen ops so
// autograd handles their backward.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "kernels/index/dilation_plan.h"

namespace bench {

// Gather indices of one head group: every covered position, segment after segment.
struct GroupGather {
  dilated_attention::HeadGroup group;
  at::Tensor positions;  // int64 [num_segments * subset_length]
  int64_t num_segments = 0;
  int64_t subset_length = 0;
};

// Built once per configuration from dilation_plan's segment_positions, outside the timed
// region (the op plans the same index math internally; rebuilding ~N indices per call would
// not change the result noticeably either way).
std::vector<GroupGather> make_gather_plan(int64_t sequence_length,
                                          const std::vector<dilated_attention::HeadGroup>& groups);

// Baseline (a): for each head group gather its dilated positions into a copy, run
// scaled_dot_product_attention on [B * segments, h_g, L, D], scatter into a zero output and
// divide by the number of groups. Input and output are [B, N, H, D].
at::Tensor gather_sdpa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::vector<GroupGather>& plan, bool is_causal,
                                 std::optional<double> scale);

// Baseline (b): dense scaled_dot_product_attention over the whole sequence, [B, N, H, D] in
// and out (transposed to [B, H, N, D] for the call).
at::Tensor dense_sdpa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                bool is_causal, std::optional<double> scale);

}  // namespace bench
