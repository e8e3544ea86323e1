#include "bench/baselines.h"

namespace bench {

std::vector<GroupGather> make_gather_plan(int64_t sequence_length,
                                          const std::vector<dilated_attention::HeadGroup>& groups) {
  std::vector<GroupGather> plan;
  plan.reserve(groups.size());
  for (const auto& group : groups) {
    GroupGather entry;
    entry.group = group;
    entry.num_segments = group.num_segments(sequence_length);
    entry.subset_length = group.subset_length();
    std::vector<int64_t> all;
    all.reserve(static_cast<size_t>(entry.num_segments * entry.subset_length));
    for (int64_t s = 0; s < entry.num_segments; ++s) {
      const auto positions = dilated_attention::segment_positions(group, s);
      all.insert(all.end(), positions.begin(), positions.end());
    }
    entry.positions = at::tensor(all, at::kLong);
    plan.push_back(std::move(entry));
  }
  return plan;
}

at::Tensor gather_sdpa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::vector<GroupGather>& plan, bool is_causal,
                                 std::optional<double> scale) {
  const int64_t batch = q.size(0), seq = q.size(1), dim = q.size(3);
  std::vector<at::Tensor> group_outputs;
  group_outputs.reserve(plan.size());
  for (const auto& entry : plan) {
    const int64_t h0 = entry.group.first_head, hg = entry.group.num_heads;
    const int64_t segments = entry.num_segments, length = entry.subset_length;
    // Gather [B, S*L, h_g, D] -> [B*S, L, h_g, D] -> [B*S, h_g, L, D] for SDPA.
    auto gather = [&](const at::Tensor& x) {
      return x.narrow(2, h0, hg)
          .index_select(1, entry.positions)
          .view({batch * segments, length, hg, dim})
          .transpose(1, 2);
    };
    at::Tensor zeros = at::zeros({batch, seq, hg, dim}, q.options());
    if (segments == 0 || length == 0) {  // nothing covered: the group contributes zeros
      group_outputs.push_back(zeros);
      continue;
    }
    at::Tensor attended = at::scaled_dot_product_attention(
        gather(q), gather(k), gather(v), /*attn_mask=*/{}, /*dropout_p=*/0.0, is_causal, scale);
    attended = attended.transpose(1, 2).reshape({batch, segments * length, hg, dim});
    // Out-of-place index_copy so autograd routes the gradient back to `attended` only.
    group_outputs.push_back(zeros.index_copy(1, entry.positions, attended));
  }
  return at::cat(group_outputs, 2).div_(static_cast<double>(plan.size()));
}

at::Tensor dense_sdpa_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                bool is_causal, std::optional<double> scale) {
  auto heads_first = [](const at::Tensor& x) { return x.transpose(1, 2); };
  at::Tensor out = at::scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v),
                                                    {}, 0.0, is_causal, scale);
  return out.transpose(1, 2);
}

}  // namespace bench
