#include "reference_attention.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>

namespace reference {

at::Tensor dilated_attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                             const std::vector<int64_t>& segment_lengths,
                             const std::vector<int64_t>& dilation_rates, bool is_causal,
                             std::optional<double> scale) {
  const auto q = q_in.to(torch::kDouble), k = k_in.to(torch::kDouble), v = v_in.to(torch::kDouble);
  const int64_t n = q.size(1), heads = q.size(2), head_dim = q.size(3);
  const auto num_groups = static_cast<int64_t>(segment_lengths.size());
  const double softmax_scale = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(head_dim));
  auto out = torch::zeros_like(q);

  int64_t head = 0;
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t heads_in_group = heads / num_groups + (g < heads % num_groups ? 1 : 0);
    const int64_t s = segment_lengths[g], r = dilation_rates[g], offset = g % r;
    for (int64_t h = head; h < head + heads_in_group; ++h) {
      for (int64_t start = 0; start < n; start += s) {
        std::vector<int64_t> positions;
        for (int64_t p = start + offset; p < start + s; p += r) positions.push_back(p);
        const auto idx = torch::tensor(positions, torch::kLong);
        const auto len = static_cast<int64_t>(positions.size());
        auto mask = torch::zeros({len, len}, torch::kDouble);
        if (is_causal) {
          for (int64_t i = 0; i < len; ++i)
            for (int64_t j = i + 1; j < len; ++j)
              mask[i][j] = -std::numeric_limits<double>::infinity();
        }
        const auto qs = q.select(2, h).index_select(1, idx);  // [B, len, D]
        const auto ks = k.select(2, h).index_select(1, idx);
        const auto vs = v.select(2, h).index_select(1, idx);
        const auto weights =
            torch::softmax(torch::matmul(qs, ks.transpose(1, 2)) * softmax_scale + mask, -1);
        const auto result = torch::matmul(weights, vs) / static_cast<double>(num_groups);
        out.select(2, h).index_copy_(1, idx, result);
      }
    }
    head += heads_in_group;
  }
  return out;
}

}  // namespace reference
