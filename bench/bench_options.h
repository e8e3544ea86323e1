// Command-line options of dilated_attention_bench.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bench {

struct Options {
  int64_t batch = 1;
  int64_t seq = 16384;
  int64_t heads = 8;
  int64_t head_dim = 64;
  std::vector<int64_t> segments{2048, 4096, 8192};
  std::vector<int64_t> rates{1, 2, 4};
  std::string dtype = "float32";
  bool causal = false;
  int threads = 2;
  int warmup = 1;
  int repeats = 5;
  std::string json_path = "bench/results/dilated_attention.json";
  bool skip_dense = false;
  // Dense forward+backward over the whole sequence is by far the slowest measurement
  // (minutes at N=16384 on two cores), so it is opt-in.
  bool dense_backward = false;
  uint64_t seed = 0;
};

// Parses argv; prints usage and exits on --help or on a malformed or unknown flag.
Options parse_options(int argc, char** argv);

}  // namespace bench
