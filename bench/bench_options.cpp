#include "bench/bench_options.h"

#include <cstdlib>
#include <iostream>
#include <sstream>
#include <stdexcept>

namespace bench {
namespace {

constexpr const char* kUsage = R"(usage: dilated_attention_bench [flags]
  --batch B            batch size (1)
  --seq N              sequence length (16384)
  --heads H            number of heads (8)
  --head-dim D         head dimension (64)
  --segments a,b,c     segment lengths, one per head group (2048,4096,8192)
  --rates a,b,c        dilation rates, one per head group (1,2,4)
  --dtype T            float32 | float64 | bfloat16 | float16 (float32)
  --causal 0|1         causal masking inside each dilated segment (0)
  --threads T          intra-op threads (2)
  --warmup W           untimed runs before timing (1)
  --repeats R          timed runs; the median is reported (5)
  --seed S             RNG seed for the random inputs (0)
  --json PATH          output file (bench/results/dilated_attention.json)
  --skip-dense         do not run the dense SDPA baseline at all
  --dense-backward     also time dense forward+backward (slow; off by default)
  --skip-dense-backward  do not time dense forward+backward (the default)
)";

[[noreturn]] void fail(const std::string& message) {
  std::cerr << "error: " << message << "\n\n" << kUsage;
  std::exit(2);
}

int64_t to_int(const std::string& flag, const std::string& text) {
  try {
    size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used != text.size()) throw std::invalid_argument(text);
    return value;
  } catch (const std::exception&) {
    fail(flag + " expects an integer, got '" + text + "'");
  }
}

std::vector<int64_t> to_list(const std::string& flag, const std::string& text) {
  std::vector<int64_t> values;
  std::stringstream stream(text);
  std::string item;
  while (std::getline(stream, item, ',')) values.push_back(to_int(flag, item));
  if (values.empty()) fail(flag + " expects a comma-separated list");
  return values;
}

void validate(const Options& o) {
  if (o.batch < 1 || o.seq < 1 || o.heads < 1 || o.head_dim < 1) fail("sizes must be positive");
  if (o.segments.size() != o.rates.size()) fail("--segments and --rates differ in length");
  if (static_cast<int64_t>(o.segments.size()) > o.heads) fail("more head groups than heads");
  for (size_t g = 0; g < o.segments.size(); ++g) {
    if (o.segments[g] < 1 || o.rates[g] < 1) fail("segments and rates must be positive");
  }
  if (o.threads < 1 || o.warmup < 0 || o.repeats < 1) fail("bad --threads/--warmup/--repeats");
}

}  // namespace

Options parse_options(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::string value;
    bool has_value = false;
    // Accept both "--flag value" and "--flag=value".
    if (const auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    auto next = [&]() -> std::string {
      if (has_value) return value;
      if (i + 1 >= argc) fail(flag + " needs a value");
      return argv[++i];
    };
    if (flag == "--help" || flag == "-h") {
      std::cout << kUsage;
      std::exit(0);
    } else if (flag == "--batch")
      o.batch = to_int(flag, next());
    else if (flag == "--seq")
      o.seq = to_int(flag, next());
    else if (flag == "--heads")
      o.heads = to_int(flag, next());
    else if (flag == "--head-dim")
      o.head_dim = to_int(flag, next());
    else if (flag == "--segments")
      o.segments = to_list(flag, next());
    else if (flag == "--rates")
      o.rates = to_list(flag, next());
    else if (flag == "--dtype")
      o.dtype = next();
    else if (flag == "--causal")
      o.causal = to_int(flag, next()) != 0;
    else if (flag == "--threads")
      o.threads = static_cast<int>(to_int(flag, next()));
    else if (flag == "--warmup")
      o.warmup = static_cast<int>(to_int(flag, next()));
    else if (flag == "--repeats")
      o.repeats = static_cast<int>(to_int(flag, next()));
    else if (flag == "--seed")
      o.seed = static_cast<uint64_t>(to_int(flag, next()));
    else if (flag == "--json")
      o.json_path = next();
    else if (flag == "--skip-dense")
      o.skip_dense = true;
    else if (flag == "--dense-backward")
      o.dense_backward = has_value ? to_int(flag, value) != 0 : true;
    else if (flag == "--skip-dense-backward")
      o.dense_backward = false;
    else
      fail("unknown flag " + flag);
  }
  validate(o);
  return o;
}

}  // namespace bench
