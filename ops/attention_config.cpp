#include "ops/attention_config.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <mutex>

namespace dilated_attention {

AttentionConfig make_attention_config(int64_t num_heads, int64_t num_key_value_heads,
                                      int64_t head_dim, const AttentionArgs& args,
                                      uint64_t dropout_seed) {
  AttentionConfig config;
  // 0 heads (empty tensors) share nothing.
  config.heads_per_key_value = num_key_value_heads > 0 ? num_heads / num_key_value_heads : 1;
  config.groups = split_at_shared_key_values(
      make_head_groups(num_heads, args.segment_lengths, args.dilation_rates),
      config.heads_per_key_value);
  config.scale = args.scale.value_or(1.0 / std::sqrt(static_cast<double>(head_dim)));
  config.output_scale = 1.0 / static_cast<double>(args.segment_lengths.size());
  config.is_causal = args.is_causal;
  config.dropout_p = args.dropout_p;
  config.dropout_seed = dropout_seed;
  return config;
}

AttentionConfig make_longnet_config(int64_t num_heads, int64_t num_key_value_heads,
                                    int64_t head_dim, int64_t seq_len, const AttentionArgs& args,
                                    uint64_t dropout_seed) {
  auto config = make_attention_config(num_heads, num_key_value_heads, head_dim, args, dropout_seed);
  config.groups = split_at_shared_key_values(
      make_longnet_groups(num_heads, seq_len, args.segment_lengths, args.dilation_rates),
      config.heads_per_key_value);
  config.output_scale = 1.0;
  config.combination = Combination::kLogSumExp;
  return config;
}

uint64_t draw_dropout_seed(const AttentionArgs& args) {
  if (!args.uses_dropout()) return 0;
  auto* generator = at::get_generator_or_default<at::CPUGeneratorImpl>(
      std::nullopt, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(generator->mutex_);
  return generator->random64();
}

at::Tensor pack_rng_state(uint64_t seed, const AttentionArgs& args,
                          const at::TensorOptions& options) {
  if (!args.uses_dropout()) {
    return at::zeros({kRngStateSize}, options.dtype(at::kLong));
  }
  auto rng_state = at::empty({kRngStateSize}, at::TensorOptions().dtype(at::kLong));
  rng_state.data_ptr<int64_t>()[0] = static_cast<int64_t>(seed);
  rng_state.data_ptr<int64_t>()[1] = 0;  // offset, reserved for counter-based GPU generators
  // On the inputs' device, so real and fake (Meta) results agree on where it lives.
  return rng_state.to(options.device());
}

uint64_t unpack_dropout_seed(const at::Tensor& rng_state, const AttentionArgs& args) {
  if (!args.uses_dropout()) return 0;
  return static_cast<uint64_t>(rng_state.cpu()[0].item<int64_t>());
}

}  // namespace dilated_attention
