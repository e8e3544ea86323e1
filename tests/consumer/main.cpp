// Calls the public C++ API and the op through the dispatcher, checks the result against plain
// attention over each segment (one group, rate 1: dilated attention is block-diagonal attention),
// and checks that bad input raises c10::ValueError. Exit status 0 only when all of it holds.
#include <ATen/ATen.h>
#include <dilated_attention/ops.h>

#include <iostream>

int main() {
  const auto q = at::randn({2, 32, 4, 8}, at::kDouble);
  const auto k = at::randn({2, 32, 4, 8}, at::kDouble);
  const auto v = at::randn({2, 32, 4, 8}, at::kDouble);
  const auto out = dilated_attention::dilated_attention(q, k, v, {16}, {1});

  // [B, N, H, D] -> [B, N/s, H, s, D] segments, plain softmax attention inside each.
  auto segments = [](const at::Tensor& x) { return x.unflatten(1, {2, 16}).transpose(2, 3); };
  const auto weights =
      at::softmax(at::matmul(segments(q), segments(k).transpose(-1, -2)) / std::sqrt(8.0), -1);
  const auto expected = at::matmul(weights, segments(v)).transpose(2, 3).flatten(1, 2);
  const double error = (out - expected).abs().max().item<double>();

  const auto ring =
      dilated_attention::ring_dilated_attention_hybrid_optimized_v2(q, k, v, {16}, {1});
  const double ring_error = (ring - out).abs().max().item<double>();

  // One branch whose segment covers the sequence at rate 1 is plain attention over it.
  const auto longnet = dilated_attention::longnet_attention(q, k, v, {64}, {1});
  const auto full_weights = at::softmax(
      at::matmul(q.transpose(1, 2), k.transpose(1, 2).transpose(-1, -2)) / std::sqrt(8.0), -1);
  const auto full = at::matmul(full_weights, v.transpose(1, 2)).transpose(1, 2);
  const double longnet_error = (longnet - full).abs().max().item<double>();

  // Decoding the last 3 positions with the cache: the last rows of the causal core op (N = 32,
  // a multiple of the segment, so the core op and the KV-cache op see the same segments).
  const auto causal = dilated_attention::dilated_attention(q, k, v, {16}, {1}, 0.0, true);
  const auto decoded =
      dilated_attention::dilated_attention_with_kv_cache(q.narrow(1, 29, 3), k, v, {16}, {1});
  const double decode_error = (decoded - causal.narrow(1, 29, 3)).abs().max().item<double>();

  bool raised = false;
  try {
    dilated_attention::dilated_attention(q, k, v, {}, {});
  } catch (const c10::ValueError& e) {
    raised = std::string(e.what_without_backtrace()).find("segment_lengths cannot be empty") !=
             std::string::npos;
  }
  std::cout << "consumer: max error vs segment attention " << error << ", ring vs core "
            << ring_error << ", longnet vs full attention " << longnet_error
            << ", KV-cache decoding vs causal " << decode_error
            << ", ValueError on empty segment_lengths: " << (raised ? "yes" : "no") << "\n";
  return error < 1e-12 && ring_error < 1e-12 && longnet_error < 1e-12 && decode_error < 1e-12 &&
                 raised
             ? 0
             : 1;
}
