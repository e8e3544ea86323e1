#include "bench/report.h"

#include <torch/version.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace bench {
namespace {

std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(" \t", colon + 1));
    }
  }
  return "unknown";
}

// Other work on the machine skews the timings; recording the load makes that visible.
std::string load_average() {
  std::ifstream loadavg("/proc/loadavg");
  std::string one, five, fifteen;
  loadavg >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::ostringstream out;
  out << std::put_time(&tm, "%Y-%m-%dT%H:%M:%SZ");
  return out.str();
}

const Measurement* find(const std::vector<Measurement>& all, const std::string& method,
                        const std::string& pass) {
  for (const auto& m : all) {
    if (m.method == method && m.pass == pass) return &m;
  }
  return nullptr;
}

// time(other) / time(ours) for the same pass, or a negative number when not measured.
double speedup_of_ours(const std::vector<Measurement>& all, const std::string& other,
                       const std::string& pass) {
  const Measurement* ours = find(all, "ours", pass);
  const Measurement* base = find(all, other, pass);
  if (!ours || !base || ours->timing.median <= 0.0) return -1.0;
  return base->timing.median / ours->timing.median;
}

}  // namespace

Throughput throughput(const Measurement& m, double tokens, double peak_gflops) {
  Throughput t;
  if (m.timing.median <= 0.0) return t;
  t.tokens_per_s = tokens / m.timing.median;
  t.gflops = m.counted_flops / m.timing.median / 1e9;
  t.fraction_of_peak = peak_gflops > 0.0 ? t.gflops / peak_gflops : 0.0;
  return t;
}

nlohmann::json machine_info(int threads) {
  return {{"threads", threads},
          {"torch_version", TORCH_VERSION},
          {"cpu_model", cpu_model()},
          {"logical_cpus", std::thread::hardware_concurrency()},
          {"load_average_1_5_15min", load_average()},
          {"date_utc", utc_now()}};
}

nlohmann::json measurement_json(const Measurement& m, double tokens, double peak_gflops,
                                const std::vector<Measurement>& all) {
  const Throughput t = throughput(m, tokens, peak_gflops);
  nlohmann::json entry = {{"method", m.method},
                          {"pass", m.pass},
                          {"median_s", m.timing.median},
                          {"times_s", m.timing.seconds},
                          {"tokens_per_s", t.tokens_per_s},
                          {"counted_flops", m.counted_flops},
                          {"effective_gflops", t.gflops},
                          {"fraction_of_measured_peak", t.fraction_of_peak}};
  if (m.method == "ours") {
    for (const std::string other : {"gather_sdpa", "dense_sdpa"}) {
      const double s = speedup_of_ours(all, other, m.pass);
      entry["speedup_over_" + other] = s > 0.0 ? nlohmann::json(s) : nlohmann::json(nullptr);
    }
  }
  return entry;
}

void print_table(const std::vector<Measurement>& all, double tokens, double peak_gflops) {
  std::cout << "\n"
            << std::left << std::setw(13) << "method" << std::setw(18) << "pass" << std::right
            << std::setw(11) << "median_s" << std::setw(13) << "tokens/s" << std::setw(10)
            << "GFLOP/s" << std::setw(9) << "%peak" << std::setw(14) << "ours_speedup"
            << "\n";
  for (const auto& m : all) {
    const Throughput t = throughput(m, tokens, peak_gflops);
    // Speedup of ours over this row's method for the same pass (1.00 on ours' own row).
    const Measurement* ours = find(all, "ours", m.pass);
    std::ostringstream speedup;
    if (ours && ours->timing.median > 0.0) {
      speedup << std::fixed << std::setprecision(2) << m.timing.median / ours->timing.median << "x";
    } else {
      speedup << "-";
    }
    std::cout << std::left << std::setw(13) << m.method << std::setw(18) << m.pass << std::right
              << std::fixed << std::setw(11) << std::setprecision(4) << m.timing.median
              << std::setw(13) << std::setprecision(0) << t.tokens_per_s << std::setw(10)
              << std::setprecision(1) << t.gflops << std::setw(8) << std::setprecision(1)
              << 100.0 * t.fraction_of_peak << "%" << std::setw(14) << speedup.str() << "\n";
  }
  std::cout << "GFLOP/s counts the dilated work for every method (dense included); %peak is of "
               "the measured fp32 GEMM peak "
            << std::setprecision(1) << peak_gflops << " GFLOP/s.\n";
}

void write_json(const nlohmann::json& doc, const std::string& path) {
  const std::filesystem::path file(path);
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  std::ofstream out(file);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << doc.dump(2) << "\n";
}

}  // namespace bench
