// The sharded engine (ops/sharded_attention.h) on the in-process communicator: every exchange
// kind, P = 2, 3, 4, must reproduce the single-device kernel on the full float64 tensors, and the
// segment ring must send nothing when all segments are local. Plus LseAccumulator on its own.

// torch/torch.h first: c10 defines its own CHECK macro, and Catch2's must be the one that wins.
#include <torch/torch.h>

#include <exception>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "catch_compat.h"
#include "comm/communicator.h"
#include "kernels/dilated_attention_kernel.h"
#include "kernels/lse_merge.h"
#include "ops/attention_config.h"
#include "ops/sharded_attention.h"

using namespace dilated_attention;

namespace {

constexpr int64_t kBatch = 2, kHeadDim = 8;
constexpr double kTolerance = 1e-10;

struct Case {
  std::string name;
  int world_size;
  int64_t seq_len;
  std::vector<int64_t> segments, rates;
  bool all_local;  // every segment lies inside one shard
};

// Layouts covering the interesting plan shapes (see test_ring_plan.cpp for the index math).
const std::vector<Case>& cases() {
  static const std::vector<Case> all{
      {"local", 2, 32, {4, 8}, {1, 2}, true},
      {"local", 3, 48, {8, 16}, {1, 2}, true},
      {"local", 4, 64, {8, 16}, {1, 2}, true},
      {"spanning", 2, 32, {8, 16, 32}, {1, 2, 4}, false},
      {"spanning", 3, 48, {16, 48}, {1, 3}, false},
      {"spanning", 4, 32, {8, 16, 32}, {1, 2, 4}, false},
      {"misaligned s=16 shard=24", 2, 48, {16}, {1}, false},
      {"misaligned s=12 shard=16", 3, 48, {12, 24}, {1, 2}, false},
      {"misaligned s=16,32 shard=24", 4, 96, {16, 32}, {1, 2}, false},
      {"dilation r=2 crossing boundaries", 4, 20, {4, 4}, {2, 2}, false},
      {"dilation r=3 crossing boundaries", 4, 24, {8, 8, 8}, {1, 2, 3}, false},
  };
  return all;
}

struct Inputs {
  torch::Tensor q, k, v, grad_out;
};

Inputs make_inputs(const Case& c, int64_t heads,
                   torch::TensorOptions options = torch::TensorOptions(torch::kFloat64)) {
  torch::manual_seed(7);
  auto make = [&] { return torch::randn({kBatch, c.seq_len, heads, kHeadDim}, options); };
  return {make(), make(), make(), make()};
}

// What one rank computed, collected on its thread and checked on the main thread (Catch2
// assertions are not thread-safe).
struct RankResult {
  torch::Tensor out, lse, grad_q, grad_k, grad_v;
  int64_t forward_bytes = 0, backward_bytes = 0;
};

std::vector<RankResult> run_sharded(const Case& c, const ShardedAttentionConfig& config,
                                    const Inputs& in) {
  const int p = c.world_size;
  const int64_t n = c.seq_len / p;
  auto world = comm::make_in_process_world(p);
  std::vector<RankResult> results(p);
  std::vector<std::exception_ptr> errors(p);
  std::vector<std::thread> threads;
  for (int r = 0; r < p; ++r) {
    threads.emplace_back([&, r] {
      try {
        auto& comm = *world[r];
        auto shard = [&](const torch::Tensor& x) { return x.narrow(1, r * n, n); };
        auto& res = results[r];
        comm.reset_bytes_sent();
        std::tie(res.out, res.lse) =
            sharded_attention_forward(comm, shard(in.q), shard(in.k), shard(in.v), {}, config);
        res.forward_bytes = comm.bytes_sent();
        comm.reset_bytes_sent();
        std::tie(res.grad_q, res.grad_k, res.grad_v) =
            sharded_attention_backward(comm, shard(in.grad_out), shard(in.q), shard(in.k),
                                       shard(in.v), {}, res.out, res.lse, config);
        res.backward_bytes = comm.bytes_sent();
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return results;
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

const char* kind_name(ExchangeKind kind) {
  switch (kind) {
    case ExchangeKind::kSegmentRing:
      return "segment ring";
    case ExchangeKind::kFullRing:
      return "full ring";
    case ExchangeKind::kAllGather:
      return "all_gather";
  }
  return "?";
}

ShardedAttentionConfig config_for(const Case& c, int64_t heads, bool causal, ExchangeKind kind) {
  const AttentionArgs args{c.segments, c.rates, 0.0, causal, std::nullopt};
  return {make_attention_config(heads, heads, kHeadDim, args, /*dropout_seed=*/0),
          ShardLayout{c.seq_len, c.world_size}, kind};
}

}  // namespace

namespace {

// Every exchange kind, causal and not, against the single-device kernel on the same device.
void check_sharded_against_single_device(torch::TensorOptions options, double tolerance) {
  for (const auto& c : cases()) {
    const int64_t heads = static_cast<int64_t>(c.segments.size()) + 1;  // uneven head groups
    const auto in = make_inputs(c, heads, options);
    const int64_t n = c.seq_len / c.world_size;
    for (bool causal : {false, true}) {
      const auto reference = config_for(c, heads, causal, ExchangeKind::kSegmentRing).attention;
      auto [out, lse] = dilated_attention_forward_kernel(in.q, in.k, in.v, {}, reference);
      auto [gq, gk, gv] =
          dilated_attention_backward_kernel(in.grad_out, in.q, in.k, in.v, {}, out, lse, reference);
      for (auto kind :
           {ExchangeKind::kSegmentRing, ExchangeKind::kFullRing, ExchangeKind::kAllGather}) {
        INFO(c.name << ", P=" << c.world_size << ", causal=" << causal << ", " << kind_name(kind));
        const auto results = run_sharded(c, config_for(c, heads, causal, kind), in);
        for (int r = 0; r < c.world_size; ++r) {
          INFO("rank " << r);
          auto rows = [&](const torch::Tensor& x) { return x.narrow(1, r * n, n); };
          CHECK(max_diff(results[r].out, rows(out)) < tolerance);
          CHECK(max_diff(results[r].lse, rows(lse)) < tolerance);
          CHECK(max_diff(results[r].grad_q, rows(gq)) < tolerance);
          CHECK(max_diff(results[r].grad_k, rows(gk)) < tolerance);
          CHECK(max_diff(results[r].grad_v, rows(gv)) < tolerance);
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("sharded forward and backward match the single-device kernel", "[sharded]") {
  check_sharded_against_single_device(torch::TensorOptions(torch::kFloat64), kTolerance);
}

// Ranks are threads on one GPU: the sharded engine, its transfers and the fused LSE-merge kernel
// (kernels/cuda/lse_merge_cuda.cu) against the single-device CUDA kernel. bench/gpu_check.sh
// runs it; without a GPU it says so and checks nothing.
TEST_CASE("sharded forward and backward on CUDA match the single-device kernel",
          "[sharded][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA GPU on this machine: the CUDA sharded case did not run");
    return;
  }
  check_sharded_against_single_device(torch::TensorOptions(torch::kFloat32).device(torch::kCUDA),
                                      2e-3);
}

TEST_CASE("segment ring sends nothing for local segments and less than the full ring",
          "[sharded]") {
  for (const auto& c : cases()) {
    const int64_t heads = static_cast<int64_t>(c.segments.size()) + 1;
    const auto in = make_inputs(c, heads);
    // Bytes of one rank's K or V shard; the full ring forwards both P - 1 times.
    const int64_t shard_bytes = kBatch * (c.seq_len / c.world_size) * heads * kHeadDim * 8;
    const int64_t full_ring_forward = 2 * (c.world_size - 1) * shard_bytes;
    for (bool causal : {false, true}) {
      INFO(c.name << ", P=" << c.world_size << ", causal=" << causal);
      const auto segment =
          run_sharded(c, config_for(c, heads, causal, ExchangeKind::kSegmentRing), in);
      const auto full = run_sharded(c, config_for(c, heads, causal, ExchangeKind::kFullRing), in);
      int64_t segment_total = 0, full_total = 0;
      for (int r = 0; r < c.world_size; ++r) {
        INFO("rank " << r);
        CHECK(full[r].forward_bytes == full_ring_forward);
        if (c.all_local) {
          CHECK(segment[r].forward_bytes == 0);
          CHECK(segment[r].backward_bytes == 0);
          CHECK(full[r].backward_bytes == full_ring_forward);  // no gradients to return
        }
        CHECK(segment[r].forward_bytes <= full[r].forward_bytes);
        CHECK(segment[r].backward_bytes <= full[r].backward_bytes);
        segment_total += segment[r].forward_bytes + segment[r].backward_bytes;
        full_total += full[r].forward_bytes + full[r].backward_bytes;
      }
      CHECK(segment_total < full_total);
      if (!c.all_local) CHECK(segment_total > 0);
    }
  }
}

namespace {

// Plain attention of q over k, v: (out [..., L, D], lse [..., L]).
std::pair<torch::Tensor, torch::Tensor> attend(const torch::Tensor& q, const torch::Tensor& k,
                                               const torch::Tensor& v) {
  const auto scores =
      torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(-1)));
  return {torch::matmul(torch::softmax(scores, -1), v), torch::logsumexp(scores, -1)};
}

}  // namespace

TEST_CASE("LseAccumulator: two key halves merge into attention over all keys", "[lse]") {
  torch::manual_seed(3);
  const auto q = torch::randn({2, 3, 5, 4}, torch::kFloat64);
  const auto k = torch::randn({2, 3, 6, 4}, torch::kFloat64);
  const auto v = torch::randn({2, 3, 6, 4}, torch::kFloat64);
  auto [out, lse] = attend(q, k, v);
  auto [out_a, lse_a] = attend(q, k.narrow(2, 0, 2), v.narrow(2, 0, 2));
  auto [out_b, lse_b] = attend(q, k.narrow(2, 2, 4), v.narrow(2, 2, 4));
  for (bool a_first : {true, false}) {
    LseAccumulator acc;
    CHECK(acc.empty());
    acc.add(a_first ? out_a : out_b, a_first ? lse_a : lse_b);
    acc.add(a_first ? out_b : out_a, a_first ? lse_b : lse_a);
    CHECK(max_diff(acc.out(), out) < 1e-12);
    CHECK(max_diff(acc.lse(), lse) < 1e-12);
  }

  // A fully masked block (lse = -inf, output NaN) contributes nothing, first or last.
  const auto masked_out = torch::full_like(out_a, std::numeric_limits<double>::quiet_NaN());
  const auto masked_lse = torch::full_like(lse_a, -std::numeric_limits<double>::infinity());
  for (bool masked_first : {true, false}) {
    LseAccumulator acc;
    acc.add(masked_first ? masked_out : out_a, masked_first ? masked_lse : lse_a);
    acc.add(masked_first ? out_a : masked_out, masked_first ? lse_a : masked_lse);
    CHECK_FALSE(acc.out().isnan().any().item<bool>());
    CHECK(max_diff(acc.out(), out_a) < 1e-12);
    CHECK(max_diff(acc.lse(), lse_a) < 1e-12);
  }

  // Only some rows masked: those rows keep the other block, the rest merge normally.
  auto partial_out = out_b.clone(), partial_lse = lse_b.clone();
  partial_out.narrow(2, 1, 2).fill_(std::numeric_limits<double>::quiet_NaN());
  partial_lse.narrow(2, 1, 2).fill_(-std::numeric_limits<double>::infinity());
  LseAccumulator partial;
  partial.add(out_a, lse_a);
  partial.add(partial_out, partial_lse);
  CHECK_FALSE(partial.out().isnan().any().item<bool>());
  CHECK(max_diff(partial.out().narrow(2, 1, 2), out_a.narrow(2, 1, 2)) < 1e-12);
  CHECK(max_diff(partial.out().narrow(2, 0, 1), out.narrow(2, 0, 1)) < 1e-12);
  CHECK(max_diff(partial.out().narrow(2, 3, 2), out.narrow(2, 3, 2)) < 1e-12);

  // Both blocks masked: zeros and -inf, still no NaN.
  LseAccumulator none;
  none.add(masked_out, masked_lse);
  none.add(masked_out, masked_lse);
  CHECK_FALSE(none.out().isnan().any().item<bool>());
  CHECK(none.out().abs().max().item<double>() == 0.0);
  CHECK(none.lse().isneginf().all().item<bool>());
}
