// Benchmark: the dilated_attention op against (a) a per-group gather + SDPA + scatter
// composition of stock ATen ops and (b) dense SDPA over the whole sequence, forward and
// forward+backward, on CPU. Writes a JSON record and prints a table.
#include <ATen/ATen.h>
#include <dilated_attention/ops.h>
#include <torch/torch.h>

#include <functional>
#include <iostream>
#include <optional>

#include "bench/baselines.h"
#include "bench/bench_options.h"
#include "bench/report.h"
#include "bench/timing.h"
#include "kernels/index/dilation_plan.h"

namespace {

using bench::Measurement;
using bench::Options;

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32") return at::kFloat;
  if (name == "float64") return at::kDouble;
  if (name == "bfloat16") return at::kBFloat16;
  if (name == "float16") return at::kHalf;
  throw std::invalid_argument("unsupported --dtype " + name);
}

// The ceiling the effective GFLOP/s are compared against: a measured fp32 GEMM rate on
// this machine and thread count (not a datasheet number).
bench::Timing measure_gemm_peak(int64_t n, double* gflops) {
  const at::Tensor a = at::randn({n, n}, at::kFloat);
  const at::Tensor b = at::randn({n, n}, at::kFloat);
  at::Tensor c = at::empty({n, n}, at::kFloat);
  bench::Timing t = bench::time_median([&] { at::mm_out(c, a, b); }, /*warmup=*/1, /*repeats=*/3);
  *gflops = 2.0 * static_cast<double>(n) * n * n / t.median / 1e9;
  return t;
}

struct Inputs {
  at::Tensor q, k, v, grad;
};

// Fresh random inputs per configuration; zeros would hide indexing and scaling bugs.
Inputs make_inputs(const Options& o, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(dtype);
  const std::vector<int64_t> shape{o.batch, o.seq, o.heads, o.head_dim};
  return {at::randn(shape, opts), at::randn(shape, opts), at::randn(shape, opts),
          at::randn(shape, opts)};
}

using AttentionFn =
    std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>;

// Leaf copies with requires_grad; gradients are dropped before each run so every repeat
// does the same work (no accumulation into existing .grad).
struct GradLeaves {
  at::Tensor q, k, v;
  explicit GradLeaves(const Inputs& in)
      : q(in.q.detach().requires_grad_(true)),
        k(in.k.detach().requires_grad_(true)),
        v(in.v.detach().requires_grad_(true)) {}
  void run(const AttentionFn& fn, const at::Tensor& grad) {
    for (auto* leaf : {&q, &k, &v}) leaf->mutable_grad().reset();
    fn(q, k, v).backward(grad);
  }
};

// One pass of every method, their repeats interleaved (bench::time_interleaved).
std::vector<bench::Timing> time_pass(bool forward_only, const std::vector<AttentionFn>& fns,
                                     const Inputs& in, const Options& o) {
  std::vector<std::function<void()>> runs;
  std::vector<GradLeaves> leaves;
  leaves.reserve(fns.size());
  for (const auto& fn : fns) {
    if (forward_only) {
      runs.emplace_back([&] {
        c10::InferenceMode no_autograd;  // forward-only cost, no graph recording
        fn(in.q, in.k, in.v);
      });
    } else {
      auto& own = leaves.emplace_back(in);
      runs.emplace_back([&] { own.run(fn, in.grad); });
    }
  }
  return bench::time_interleaved(runs, o.warmup, o.repeats);
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Ours against baseline (a) on the same inputs: outputs and all three input gradients.
nlohmann::json check_agreement(const AttentionFn& ours, const AttentionFn& baseline,
                               const Inputs& in) {
  GradLeaves a(in), b(in);
  a.run(ours, in.grad);
  b.run(baseline, in.grad);
  at::Tensor out_a, out_b;
  {
    c10::InferenceMode no_autograd;
    out_a = ours(in.q, in.k, in.v);
    out_b = baseline(in.q, in.k, in.v);
  }
  return {{"reference", "gather_sdpa"},
          {"output_max_abs_diff", max_abs_diff(out_a, out_b)},
          {"grad_q_max_abs_diff", max_abs_diff(a.q.grad(), b.q.grad())},
          {"grad_k_max_abs_diff", max_abs_diff(a.k.grad(), b.k.grad())},
          {"grad_v_max_abs_diff", max_abs_diff(a.v.grad(), b.v.grad())},
          {"output_max_abs", out_b.abs().max().item<double>()}};
}

}  // namespace

int run(int argc, char** argv) {
  const Options o = bench::parse_options(argc, argv);
  at::set_num_threads(o.threads);
  at::manual_seed(o.seed);
  const nlohmann::json machine =
      bench::machine_info(at::get_num_threads());  // load before we add ours
  const at::ScalarType dtype = parse_dtype(o.dtype);
  const std::optional<double> scale;  // default 1/sqrt(D) for every method
  const auto groups = dilated_attention::make_head_groups(o.heads, o.segments, o.rates);
  const auto plan = bench::make_gather_plan(o.seq, groups);

  const double tokens = static_cast<double>(o.batch * o.seq);
  const double fwd_flops =
      dilated_attention::dilated_attention_forward_flops(o.batch, o.seq, o.head_dim, groups);
  const double dense_fwd_flops =
      4.0 * o.batch * o.heads * static_cast<double>(o.seq) * o.seq * o.head_dim;

  std::cout << "dilated attention bench: B=" << o.batch << " N=" << o.seq << " H=" << o.heads
            << " D=" << o.head_dim << " dtype=" << o.dtype << " causal=" << o.causal
            << " threads=" << at::get_num_threads()
            << " load=" << machine["load_average_1_5_15min"].get<std::string>() << "\n";

  double peak_gflops = 0.0;
  const int64_t gemm_n = 4096;
  const bench::Timing peak = measure_gemm_peak(gemm_n, &peak_gflops);
  std::cout << "measured GEMM peak (fp32 mm " << gemm_n << "^3, median of 3): " << peak_gflops
            << " GFLOP/s\n";

  const Inputs in = make_inputs(o, dtype);
  const AttentionFn ours = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    return dilated_attention::dilated_attention(q, k, v, o.segments, o.rates, 0.0, o.causal, scale);
  };
  const AttentionFn gather = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    return bench::gather_sdpa_attention(q, k, v, plan, o.causal, scale);
  };
  const AttentionFn dense = [&](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
    return bench::dense_sdpa_attention(q, k, v, o.causal, scale);
  };

  const nlohmann::json agreement = check_agreement(ours, gather, in);
  std::cout << "agreement with gather+SDPA: " << agreement.dump() << "\n";

  // Every method is credited with the same dilated work so GFLOP/s compare like for like.
  std::vector<Measurement> all;
  auto measure = [&](const std::string& pass, const std::vector<std::string>& methods,
                     const std::vector<AttentionFn>& fns) {
    std::cout << "timing " << pass << " (interleaved) ..." << std::flush;
    const bool fwd = pass == "forward";
    auto timings = time_pass(fwd, fns, in, o);
    for (size_t i = 0; i < methods.size(); ++i) {
      std::cout << " " << methods[i] << " " << timings[i].median << " s";
      all.push_back({methods[i], pass, std::move(timings[i]), fwd ? fwd_flops : 3.5 * fwd_flops});
    }
    std::cout << "\n";
  };
  std::vector<std::string> methods{"ours", "gather_sdpa"};
  std::vector<AttentionFn> fns{ours, gather};
  if (!o.skip_dense) {
    methods.push_back("dense_sdpa");
    fns.push_back(dense);
  }
  measure("forward", methods, fns);
  if (!o.skip_dense && !o.dense_backward) {
    methods.pop_back();
    fns.pop_back();
  }
  measure("forward_backward", methods, fns);

  nlohmann::json doc;
  doc["benchmark"] = "dilated_attention";
  doc["config"] = {{"batch", o.batch},
                   {"seq", o.seq},
                   {"heads", o.heads},
                   {"head_dim", o.head_dim},
                   {"segments", o.segments},
                   {"rates", o.rates},
                   {"dtype", o.dtype},
                   {"causal", o.causal},
                   {"warmup", o.warmup},
                   {"repeats", o.repeats},
                   {"timing", "methods interleaved: each repeat runs every method once, in turn"},
                   {"seed", o.seed},
                   {"skip_dense", o.skip_dense},
                   {"dense_backward", o.dense_backward},
                   {"layout", "[B, N, H, D]"}};
  doc["machine"] = machine;
  doc["flops"] = {{"dilated_forward", fwd_flops},
                  {"dilated_forward_backward", 3.5 * fwd_flops},
                  {"dense_forward", dense_fwd_flops},
                  {"dense_forward_backward", 3.5 * dense_fwd_flops},
                  {"note",
                   "counted_flops/effective_gflops use the dilated counts for every "
                   "method; dense counts ignore causal masking"}};
  doc["measured_peak"] = {{"what", "measured GEMM peak: fp32 at::mm, median of 3"},
                          {"m_n_k", gemm_n},
                          {"median_s", peak.median},
                          {"times_s", peak.seconds},
                          {"gflops", peak_gflops}};
  doc["agreement"] = agreement;
  doc["results"] = nlohmann::json::array();
  for (const auto& m : all)
    doc["results"].push_back(bench::measurement_json(m, tokens, peak_gflops, all));
  bench::write_json(doc, o.json_path);
  std::cout << "wrote " << o.json_path << "\n";

  bench::print_table(all, tokens, peak_gflops);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    // A bad configuration (e.g. N not divisible by a segment length): the op's message, no abort.
    std::cerr << "dilated_attention_bench: " << e.what_without_backtrace() << "\n";
    return 2;
  }
}
