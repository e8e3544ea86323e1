// The row loops of the CPU's dropout attention (kernels/cpu/row_kernels.h), every build this CPU
// runs, against scalar references: the keep factors bit for bit against DropoutMask::keeps, the
// softmax against a double-precision one, with padding, causal limits, lengths that are not a
// multiple of any vector width, and NaN / +-inf rows.
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "catch_compat.h"
#include "cpu_features.h"
#include "kernels/cpu/row_kernels.h"
#include "kernels/index/dropout_mask.h"

namespace {

using dilated_attention::DropoutMask;
using dilated_attention::DropoutRow;
using dilated_attention::RowKernels;

// (name, table) of every build this CPU can run.
template <typename T>
std::vector<std::pair<std::string, const RowKernels<T>*>> builds() {
  std::vector<std::pair<std::string, const RowKernels<T>*>> all{
      {"default", &dilated_attention::row_kernels_default<T>()}};
  if (dilated_attention::row_kernels_x86_compiled() && cpu_has_avx2()) {
    all.emplace_back("avx2", &dilated_attention::row_kernels_avx2<T>());
  }
  if (dilated_attention::row_kernels_x86_compiled() && cpu_has_avx512()) {
    all.emplace_back("avx512", &dilated_attention::row_kernels_avx512<T>());
  }
  return all;
}

template <typename T>
void check_keep_factors() {
  for (const auto& [name, kernels] : builds<T>()) {
    for (const double p : {0.0, 0.1, 0.5, 1.0}) {
      const DropoutMask mask(11, p);
      for (const int64_t n : {0, 1, 7, 8, 9, 16, 17, 33, 70}) {
        for (const int64_t step : {1, 3}) {
          const uint64_t row = mask.row_key(1, 2, n);
          std::vector<T> out(static_cast<size_t>(n), T(-1));
          kernels->keep_factors(row, mask.drop_below(), static_cast<T>(mask.keep_scale()), 5, step,
                                n, out.data());
          for (int64_t j = 0; j < n; ++j) {
            INFO(name << " p=" << p << " n=" << n << " step=" << step << " j=" << j);
            const T expected =
                mask.keeps(row, 5 + j * step) ? static_cast<T>(mask.keep_scale()) : T(0);
            REQUIRE(out[static_cast<size_t>(j)] == expected);
          }
        }
      }
    }
  }
}

// The softmax of scale * s over the visible, unpadded keys, times the keep factors, in double.
struct NaiveRow {
  double lse;
  std::vector<double> weights;
};

template <typename T>
NaiveRow naive_softmax(const std::vector<T>& s, int64_t visible, double scale,
                       const std::vector<T>& padded, const DropoutMask& mask, uint64_t row,
                       int64_t first, int64_t step) {
  const size_t n = s.size();
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < visible; ++j) {
    if (padded[static_cast<size_t>(j)] == T(0))
      max = std::max(max, scale * s[static_cast<size_t>(j)]);
  }
  double sum = 0;
  for (int64_t j = 0; j < visible; ++j) {
    if (padded[static_cast<size_t>(j)] == T(0))
      sum += std::exp(scale * s[static_cast<size_t>(j)] - max);
  }
  NaiveRow result{max + std::log(sum), std::vector<double>(n, 0.0)};
  for (int64_t j = 0; j < visible; ++j) {
    if (padded[static_cast<size_t>(j)] != T(0)) continue;
    const double keep = mask.keeps(row, first + j * step) ? mask.keep_scale() : 0.0;
    result.weights[static_cast<size_t>(j)] =
        std::exp(scale * s[static_cast<size_t>(j)] - result.lse) * keep;
  }
  return result;
}

template <typename T>
void check_softmax_rows(double tolerance) {
  std::mt19937 gen(3);
  std::normal_distribution<double> normal(0.0, 2.0);
  const DropoutMask mask(5, 0.25);
  for (const auto& [name, kernels] : builds<T>()) {
    for (const int64_t n : {1, 5, 16, 31, 64, 100}) {
      for (const bool with_padding : {false, true}) {
        for (const int64_t visible : {n, (n + 1) / 2}) {
          std::vector<T> s(static_cast<size_t>(n)), padded(static_cast<size_t>(n), T(0));
          for (auto& x : s) x = static_cast<T>(normal(gen));
          if (with_padding) {
            for (int64_t j = 1; j < n; j += 3) padded[static_cast<size_t>(j)] = T(1);
          }
          const uint64_t row = mask.row_key(0, 1, n);
          const auto naive = naive_softmax(s, visible, 0.7, padded, mask, row, 2, 3);
          const DropoutRow<T> dropout{row, mask.drop_below(), static_cast<T>(mask.keep_scale()), 2,
                                      3};
          std::vector<T> w = s, keep(static_cast<size_t>(n));
          const auto got =
              kernels->softmax_row(w.data(), n, visible, T(0.7),
                                   with_padding ? padded.data() : nullptr, &dropout, keep.data());
          INFO(name << " n=" << n << " visible=" << visible << " padding=" << with_padding);
          CHECK(std::abs(got.lse - naive.lse) <= tolerance * (1 + std::abs(naive.lse)));
          for (int64_t j = 0; j < n; ++j) {
            CHECK(std::abs(w[static_cast<size_t>(j)] * got.inverse_sum -
                           naive.weights[static_cast<size_t>(j)]) <= tolerance);
          }
          // Backward's weights: exp(scale * s - lse), without the mask.
          std::vector<T> b = s;
          kernels->weights_row(b.data(), n, visible, T(0.7), with_padding ? padded.data() : nullptr,
                               static_cast<T>(naive.lse));
          for (int64_t j = 0; j < n; ++j) {
            const bool seen = j < visible && padded[static_cast<size_t>(j)] == T(0);
            const double expected =
                seen ? std::exp(0.7 * s[static_cast<size_t>(j)] - naive.lse) : 0.0;
            CHECK(std::abs(b[static_cast<size_t>(j)] - expected) <= tolerance);
          }
        }
      }
    }
  }
}

template <typename T>
void check_non_finite_rows() {
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  for (const auto& [name, kernels] : builds<T>()) {
    INFO(name);
    for (const int64_t n : {3, 40}) {
      std::vector<T> keep(static_cast<size_t>(n));
      // A NaN score makes the row NaN, wherever it sits.
      std::vector<T> s(static_cast<size_t>(n), T(1));
      s[static_cast<size_t>(n - 1)] = nan;
      auto got = kernels->softmax_row(s.data(), n, n, T(1), nullptr, nullptr, keep.data());
      CHECK(std::isnan(got.lse));
      CHECK(std::isnan(s[0]));
      // +inf: log-sum-exp +inf, the infinite weight NaN, the others 0.
      s.assign(static_cast<size_t>(n), T(1));
      s[1] = inf;
      got = kernels->softmax_row(s.data(), n, n, T(1), nullptr, nullptr, keep.data());
      CHECK(got.lse == inf);
      CHECK(std::isnan(s[1]));
      CHECK(s[0] == T(0));
      // Every key padded: log-sum-exp -inf (the kernel's caller makes such rows 0).
      s.assign(static_cast<size_t>(n), T(1));
      std::vector<T> padded(static_cast<size_t>(n), T(1));
      got = kernels->softmax_row(s.data(), n, n, T(1), padded.data(), nullptr, keep.data());
      CHECK(got.lse == -inf);
    }
  }
}

}  // namespace

TEST_CASE("every build's keep factors are DropoutMask's, bit for bit", "[row_kernels]") {
  check_keep_factors<float>();
  check_keep_factors<double>();
}

TEST_CASE("every build's row softmax matches a double-precision softmax", "[row_kernels]") {
  check_softmax_rows<float>(2e-6);
  check_softmax_rows<double>(1e-13);
}

TEST_CASE("every build's row softmax keeps NaN and infinite rows as ATen does", "[row_kernels]") {
  check_non_finite_rows<float>();
  check_non_finite_rows<double>();
}

TEST_CASE("the picked row kernels are one of the builds", "[row_kernels]") {
  const std::string picked = dilated_attention::row_kernels_capability();
  CHECK((picked == "default" || picked == "avx2" || picked == "avx512"));
}
