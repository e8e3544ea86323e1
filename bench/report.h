// Turning timings into throughput figures, the JSON record and the console table.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/timing.h"

namespace bench {

struct Measurement {
  std::string method;  // "ours", "gather_sdpa", "dense_sdpa"
  std::string pass;    // "forward" or "forward_backward"
  Timing timing;
  double counted_flops = 0.0;  // dilated work of this pass (same count for every method)
};

struct Throughput {
  double tokens_per_s = 0.0;
  double gflops = 0.0;            // counted_flops / median time
  double fraction_of_peak = 0.0;  // gflops / measured GEMM peak
};

Throughput throughput(const Measurement& m, double tokens, double peak_gflops);

// Threads, torch version, CPU model and UTC date of this run.
nlohmann::json machine_info(int threads);

// One "results" entry; the speedups are time(other) / time(ours) for the same pass, so
// > 1 means ours is faster. Null where the other method was not measured.
nlohmann::json measurement_json(const Measurement& m, double tokens, double peak_gflops,
                                const std::vector<Measurement>& all);

// Aligned summary table, one row per measurement.
void print_table(const std::vector<Measurement>& all, double tokens, double peak_gflops);

// Writes `doc` to `path`, creating parent directories.
void write_json(const nlohmann::json& doc, const std::string& path);

}  // namespace bench
