// The non-tensor arguments every attention autograd Function keeps for backward, saved and
// restored in one place (the core op and the distributed ops share them).
#pragma once

#include <torch/autograd.h>

#include <optional>
#include <vector>

namespace dilated_attention {

struct SavedAttentionArgs {
  std::vector<int64_t> segment_lengths;
  std::vector<int64_t> dilation_rates;
  double dropout_p = 0.0;
  bool is_causal = false;
  std::optional<double> scale;

  void save(torch::autograd::AutogradContext* ctx) const {
    ctx->saved_data["segment_lengths"] = segment_lengths;
    ctx->saved_data["dilation_rates"] = dilation_rates;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
  }

  static SavedAttentionArgs load(torch::autograd::AutogradContext* ctx) {
    const auto& scale = ctx->saved_data["scale"];
    return {ctx->saved_data["segment_lengths"].toIntVector(),
            ctx->saved_data["dilation_rates"].toIntVector(),
            ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["is_causal"].toBool(),
            scale.isNone() ? std::nullopt : std::optional<double>(scale.toDouble())};
  }
};

}  // namespace dilated_attention
