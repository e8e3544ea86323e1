// The CPU's measured arithmetic peaks, the ceilings the attention benchmarks are read against:
//   fp32 FMA        AVX-512 (else AVX2) fused multiply-adds on independent registers
//   bf16 dot        AVX512-BF16 vdpbf16ps (pairs of bf16 products summed into fp32), where the
//                   CPU has it
//   bf16 AMX        AMX-BF16 tdpbf16ps on tiles (a 16x32 by 32x16 bf16 product into 16x16 fp32),
//                   where the CPU has it and Linux grants the tile state
// each on one thread and on --threads threads at once (std::thread, one loop per thread). No
// memory traffic: these are what the cores can issue, not what a kernel reaches.
//
//   build/bench/peaks_bench [--threads 2] [--json bench/results/peaks.json]
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int64_t kIterations = 200'000'000 / 16;

// Lane 0 of the accumulators' sum: enough to keep the loop's results alive.
__attribute__((target("avx512f"))) float first_lane_sum(const __m512* acc) {
  __m512 sum = acc[0];
  for (int k = 1; k < 12; ++k) sum = _mm512_add_ps(sum, acc[k]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  return lanes[0];
}

// 12 independent accumulators cover the FMA latency (4 cycles) on two ports.
__attribute__((target("avx512f,fma"))) float fma512_loop(int64_t iterations) {
  __m512 acc[12];
  for (auto& a : acc) a = _mm512_set1_ps(1.0f);
  const __m512 x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
    for (auto& a : acc) a = _mm512_fmadd_ps(a, x, y);
  }
  return first_lane_sum(acc);
}
constexpr double kFma512Flops = 12.0 * 16 * 2;  // per iteration

__attribute__((target("avx2,fma"))) float fma256_loop(int64_t iterations) {
  __m256 acc[12];
  for (auto& a : acc) a = _mm256_set1_ps(1.0f);
  const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iterations; ++i) {
    for (auto& a : acc) a = _mm256_fmadd_ps(a, x, y);
  }
  float out[8];
  __m256 sum = acc[0];
  for (int k = 1; k < 12; ++k) sum = _mm256_add_ps(sum, acc[k]);
  _mm256_storeu_ps(out, sum);
  return out[0];
}
constexpr double kFma256Flops = 12.0 * 8 * 2;

// vdpbf16ps: 16 lanes, each adding two bf16 products: 64 FLOP per instruction.
__attribute__((target("avx512f,avx512bf16"))) float dpbf16_loop(int64_t iterations) {
  __m512 acc[12];
  for (auto& a : acc) a = _mm512_setzero_ps();
  const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3f), _mm512_set1_ps(1e-3f));
  for (int64_t i = 0; i < iterations; ++i) {
    for (auto& a : acc) a = _mm512_dpbf16_ps(a, x, y);
  }
  return first_lane_sum(acc);
}
constexpr double kDpbf16Flops = 12.0 * 16 * 4;

// AMX: tiles 0-3 accumulate (16 x 16 fp32 each), tile 4 is A (16 rows of 32 bf16) and tile 5 is
// B (16 rows of 16 bf16 pairs), loaded once. Four independent accumulators cover tdpbf16ps's
// latency. Each thread configures its own tiles.
struct TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-bf16"))) float amx_bf16_loop(int64_t iterations) {
  TileConfig config;
  for (int t = 0; t < 6; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = 16;
  }
  _tile_loadconfig(&config);
  alignas(64) uint16_t operand[16 * 32];
  for (auto& x : operand) x = 0x3a83;  // bf16 1e-3
  alignas(64) float result[16 * 16] = {};
  _tile_loadd(0, result, 64);
  _tile_loadd(1, result, 64);
  _tile_loadd(2, result, 64);
  _tile_loadd(3, result, 64);
  _tile_loadd(4, operand, 64);
  _tile_loadd(5, operand, 64);
  // Iterations of the other loops are 12 instructions; a quarter of them here, so that one
  // iteration count suits both (tdpbf16ps is 16 times vdpbf16ps's work at 16 cycles each).
  for (int64_t i = 0; i < iterations / 4; ++i) {
    _tile_dpbf16ps(0, 4, 5);
    _tile_dpbf16ps(1, 4, 5);
    _tile_dpbf16ps(2, 4, 5);
    _tile_dpbf16ps(3, 4, 5);
  }
  _tile_stored(0, result, 64);
  _tile_release();
  return result[0];
}
constexpr double kAmxBf16Flops = 4.0 * 16 * 16 * 32 * 2 / 4;  // per iteration (a quarter's)

// AMX-BF16 on the CPU (CPUID.7.0:EDX bits 22 and 24), the OS saving the tile state (XCR0 bits
// 17-18), and Linux granting this process the tile data (ARCH_REQ_XCOMP_PERM).
bool amx_bf16_usable() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  if (((edx >> 22) & 1U) == 0 || ((edx >> 24) & 1U) == 0) return false;
  if (!__get_cpuid_count(1, 0, &eax, &ebx, &ecx, &edx) || ((ecx >> 27) & 1U) == 0) return false;
  unsigned xcr0_low = 0, xcr0_high = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
  if (((xcr0_low >> 17) & 3U) != 3U) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

// GFLOP/s of `loop` on `threads` threads at once (the slowest thread's time).
double gflops(float (*loop)(int64_t), double flops_per_iteration, int threads) {
  loop(kIterations / 20);  // warm up the clocks
  std::vector<std::thread> workers;
  std::vector<double> seconds(static_cast<size_t>(threads));
  volatile float sink = 0;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      const auto start = std::chrono::steady_clock::now();
      const float r = loop(kIterations);
      seconds[static_cast<size_t>(t)] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (r == 12345.0f) sink = r;
    });
  }
  for (auto& w : workers) w.join();
  double slowest = 0;
  for (double s : seconds) slowest = std::max(slowest, s);
  return flops_per_iteration * static_cast<double>(kIterations) * threads / slowest / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2;
  std::string json_path = "bench/results/peaks.json";
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = std::stoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: peaks_bench [--threads T] [--json PATH]\n");
      return 2;
    }
  }
  __builtin_cpu_init();
  nlohmann::json out;
  out["threads"] = threads;
  const bool avx512 = __builtin_cpu_supports("avx512f");
  const bool has_bf16 = avx512 && __builtin_cpu_supports("avx512bf16");
  auto* fma = avx512 ? &fma512_loop : &fma256_loop;
  const double fma_flops = avx512 ? kFma512Flops : kFma256Flops;
  out["fp32_fma"] = {{"isa", avx512 ? "avx512f" : "avx2"},
                     {"gflops_1_thread", gflops(fma, fma_flops, 1)},
                     {"gflops_all_threads", gflops(fma, fma_flops, threads)}};
  if (has_bf16) {
    out["bf16_dot"] = {{"isa", "avx512_bf16 vdpbf16ps"},
                       {"gflops_1_thread", gflops(&dpbf16_loop, kDpbf16Flops, 1)},
                       {"gflops_all_threads", gflops(&dpbf16_loop, kDpbf16Flops, threads)}};
  } else {
    out["bf16_dot"] = nullptr;  // this CPU has no AVX512-BF16
  }
  if (amx_bf16_usable()) {
    out["bf16_amx"] = {{"isa", "amx_bf16 tdpbf16ps"},
                       {"gflops_1_thread", gflops(&amx_bf16_loop, kAmxBf16Flops, 1)},
                       {"gflops_all_threads", gflops(&amx_bf16_loop, kAmxBf16Flops, threads)}};
  } else {
    out["bf16_amx"] = nullptr;  // no AMX-BF16 here (or no tile state granted)
  }
  std::printf("%s\n", out.dump(2).c_str());
  std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
