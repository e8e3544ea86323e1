// The products of our fused CPU forward alone, at its block shapes, through the microkernel it
// calls (at::native::cpublas::brgemm, oneDNN's brgemm ukernel): per key block, the scores
// S = Q K^T (queries x keys x head dim) and then O += P V (queries x head dim x keys), packed B
// operands (VNNI pairs for bf16), fp32 results. Everything stays in L1/L2: this is
// what the microkernel issues at these shapes, the ceiling of the kernel's product time, to be
// read against bench/bench_peaks.cpp's register-only peaks (fp32 FMA, vdpbf16ps, AMX tiles).
//
//   build/bench/brgemm_bench [--threads 2] [--queries 64] [--keys 128] [--head-dim 64]
//                            [--json bench/results/brgemm.json]
#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Shape {
  int64_t queries = 64, keys = 128, head_dim = 64;
  double flops() const { return 2.0 * 2.0 * static_cast<double>(queries * keys * head_dim); }
};

// One thread's scores-then-values pair `pairs` times; returns the seconds it took.
template <typename T>
double product_pairs(const Shape& shape, int64_t pairs) {
  const int64_t M = shape.queries, N = shape.keys, D = shape.head_dim;
  const bool vnni = !std::is_same_v<T, float>;
  // Random-ish finite operands: the products' speed does not depend on their values.
  std::vector<T> queries(static_cast<size_t>(M * D), T(0.01f));
  std::vector<T> keys(static_cast<size_t>(N * D), T(0.02f));    // packed K^T block
  std::vector<T> values(static_cast<size_t>(N * D), T(0.03f));  // packed V block
  std::vector<T> weights(static_cast<size_t>(M * N), T(0.04f));
  std::vector<float> scores(static_cast<size_t>(M * N)), acc(static_cast<size_t>(M * D), 0.0f);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < pairs; ++i) {
    at::native::cpublas::brgemm(M, N, D, D, N, N, false, queries.data(), keys.data(), scores.data(),
                                vnni);
    at::native::cpublas::brgemm(M, D, N, N, D, D, true, weights.data(), values.data(), acc.data(),
                                vnni);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  at::native::cpublas::brgemm_release(vnni);
  if (acc[0] == 12345.0f) std::printf(" ");  // keeps the results alive
  return seconds;
}

// GFLOP/s of the pairs on `threads` threads at once (the slowest thread's time).
template <typename T>
double gflops(const Shape& shape, int threads) {
  const int64_t pairs = std::max<int64_t>(200, static_cast<int64_t>(4e9 / shape.flops()));
  product_pairs<T>(shape, pairs / 10);  // JIT the kernels, warm the clocks
  // std::thread, not at::parallel_for: that is an OpenMP region only where compiled with OpenMP.
  std::vector<double> seconds(static_cast<size_t>(threads), 0.0);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back(
        [&, t] { seconds[static_cast<size_t>(t)] = product_pairs<T>(shape, pairs); });
  }
  for (auto& worker : workers) worker.join();
  const double slowest = *std::max_element(seconds.begin(), seconds.end());
  return shape.flops() * static_cast<double>(pairs) * threads / slowest / 1e9;
}

template <typename T>
nlohmann::json measured(const Shape& shape, int threads) {
  return {{"gflops_1_thread", gflops<T>(shape, 1)},
          {"gflops_all_threads", gflops<T>(shape, threads)}};
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  Shape shape;
  std::string json_path = "bench/results/brgemm.json";
  for (int i = 1; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--threads") == 0 && has_value) {
      threads = std::stoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--queries") == 0 && has_value) {
      shape.queries = std::stoll(argv[++i]);
    } else if (std::strcmp(argv[i], "--keys") == 0 && has_value) {
      shape.keys = std::stoll(argv[++i]);
    } else if (std::strcmp(argv[i], "--head-dim") == 0 && has_value) {
      shape.head_dim = std::stoll(argv[++i]);
    } else if (std::strcmp(argv[i], "--json") == 0 && has_value) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr,
                   "usage: brgemm_bench [--threads T] [--queries M] [--keys N] [--head-dim D] "
                   "[--json PATH]\n");
      return 2;
    }
  }
  if (threads < 1 || shape.queries < 1 || shape.keys < 2 || shape.head_dim < 2 ||
      shape.keys % 2 != 0 || shape.head_dim % 2 != 0) {
    std::fprintf(stderr, "brgemm_bench: expected threads >= 1 and even keys, head dim >= 2\n");
    return 2;
  }
  nlohmann::json out;
  out["threads"] = threads;
  out["shape"] = {{"queries", shape.queries}, {"keys", shape.keys}, {"head_dim", shape.head_dim}};
  out["float32"] = measured<float>(shape, threads);
  // bf16 runs only where the microkernel does (oneDNN built in, the ISA there). float16 is not
  // measured: the fused kernel widens it to float32 as it packs (flash_packing.h).
  out["bfloat16"] = at::native::cpublas::could_pack(at::kBFloat16)
                        ? measured<c10::BFloat16>(shape, threads)
                        : nlohmann::json(nullptr);
  std::printf("%s\n", out.dump(2).c_str());
  std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
