// The fused CPU kernel's row loops (kernels/cpu/flash_rows.h), every build this CPU runs, against
// double-precision exponentials: the weights of one online-softmax block and of one backward
// row over scores spanning the exponentials' whole range, masked keys exactly 0.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "catch_compat.h"
#include "cpu_features.h"
#include "kernels/cpu/flash_rows.h"
#include "kernels/cpu/row_kernels.h"

namespace {

using dilated_attention::FlashRowKernels;
using dilated_attention::OnlineSoftmaxRow;

std::vector<std::pair<std::string, const FlashRowKernels<float>*>> builds() {
  std::vector<std::pair<std::string, const FlashRowKernels<float>*>> all{
      {"default", &dilated_attention::flash_row_kernels_default<float>()}};
  if (dilated_attention::row_kernels_x86_compiled() && cpu_has_avx2()) {
    all.emplace_back("avx2", &dilated_attention::flash_row_kernels_avx2<float>());
  }
  if (dilated_attention::row_kernels_x86_compiled() && cpu_has_avx512()) {
    all.emplace_back("avx512", &dilated_attention::flash_row_kernels_avx512<float>());
  }
  return all;
}

// 128 scores from 0 down to -110 (below float's smallest normal exponential), the maximum
// first; every 7th key padded when `padded` is asked for.
constexpr int64_t kKeys = 128;
std::vector<float> spread_scores() {
  std::vector<float> scores(kKeys);
  for (int64_t j = 0; j < kKeys; ++j) scores[j] = -110.0f * static_cast<float>(j) / (kKeys - 1);
  return scores;
}

// exp(t) in float carries the rounding of t itself (|t| ulps of relative error, t down to
// -110 here) besides the exponential's own (at::vec's exp_u20: 20 ulps).
void check_weight(float got, double expected, bool masked) {
  if (masked) {
    CHECK(got == 0.0f);
    return;
  }
  const double exponent = std::abs(std::log(expected));
  const double ulp = std::ldexp(1.0, -23);
  const double smallest_normal = std::numeric_limits<float>::min();
  if (expected < smallest_normal) {  // exp_u20 flushes these to 0; ours keeps subnormals
    CHECK(std::abs(got - expected) <= smallest_normal);
  } else {
    CHECK(std::abs(got - expected) <= (24.0 + exponent) * ulp * expected);
  }
}

}  // namespace

TEST_CASE("every build's online-softmax weights match double exponentials", "[flash_rows]") {
  const float scale = 0.5f;
  for (const auto& [name, kernels] : builds()) {
    for (const bool with_padding : {false, true}) {
      for (const int64_t visible : {kKeys, int64_t{77}}) {
        INFO(name << " padding=" << with_padding << " visible=" << visible);
        auto scores = spread_scores();
        for (auto& s : scores) s /= scale;  // scaled scores span [-110, 0]
        std::vector<float> padded(kKeys, 0.0f);
        for (int64_t j = 3; j < kKeys; j += 7) padded[j] = 1.0f;
        std::vector<float> weights(kKeys + 2, -1.0f), acc(16, 0.0f);
        OnlineSoftmaxRow row{-std::numeric_limits<float>::infinity(), 0.0f};
        const auto raw = scores;
        kernels->online_block(scores.data(), kKeys, visible, scale,
                              with_padding ? padded.data() : nullptr, nullptr, row, weights.data(),
                              kKeys + 2, acc.data(), 16);
        CHECK(row.max == 0.0f);
        double sum = 0.0;
        for (int64_t j = 0; j < kKeys; ++j) {
          const bool masked = j >= visible || (with_padding && padded[j] != 0.0f);
          const double expected = std::exp(static_cast<double>(scale) * raw[j]);
          if (!masked) sum += expected;
          INFO("key " << j);
          check_weight(weights[j], expected, masked);
        }
        CHECK(weights[kKeys] == 0.0f);
        CHECK(weights[kKeys + 1] == 0.0f);
        CHECK(std::abs(row.sum - sum) <= 1e-6 * sum);
      }
    }
  }
}

TEST_CASE("every build's backward weights match double exponentials", "[flash_rows]") {
  const float scale = 1.0f, lse = 2.5f, delta = 0.25f;
  for (const auto& [name, kernels] : builds()) {
    for (const int64_t visible : {kKeys, int64_t{90}}) {
      INFO(name << " visible=" << visible);
      const auto scores = spread_scores();
      std::vector<float> grad_weights(kKeys, 1.0f), weights(kKeys), grad_scores(kKeys);
      kernels->backward_row(scores.data(), grad_weights.data(), kKeys, visible, scale, nullptr,
                            nullptr, lse, delta, weights.data(), grad_scores.data(), kKeys);
      for (int64_t j = 0; j < kKeys; ++j) {
        INFO("key " << j);
        const double p = std::exp(static_cast<double>(scores[j]) - lse);
        check_weight(weights[j], p, j >= visible);
        check_weight(grad_scores[j], p * (1.0 - delta), j >= visible);
      }
    }
  }
}

TEST_CASE("every build's online softmax finds NaN and +inf scores anywhere in a block",
          "[flash_rows]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const auto& [name, kernels] : builds()) {
    for (const int64_t n : {int64_t{16}, int64_t{100}, kKeys}) {
      for (const int64_t at : {int64_t{0}, int64_t{5}, n - 1}) {
        for (const float bad : {nan, inf}) {
          INFO(name << " n=" << n << " at=" << at << " bad=" << bad);
          std::vector<float> scores(static_cast<size_t>(n), 1.0f);
          scores[static_cast<size_t>(at)] = bad;
          std::vector<float> weights(static_cast<size_t>(n)), acc(8, 0.0f);
          OnlineSoftmaxRow row{-inf, 0.0f};
          kernels->online_block(scores.data(), n, n, 1.0f, nullptr, nullptr, row, weights.data(), n,
                                acc.data(), 8);
          CHECK(std::isnan(row.max));
        }
      }
      // Finite scores whose sum overflows float: the maximum is still theirs.
      std::vector<float> big(static_cast<size_t>(n), 3e38f);
      big[static_cast<size_t>(n / 2)] = 3.2e38f;
      std::vector<float> weights(static_cast<size_t>(n)), acc(8, 0.0f);
      OnlineSoftmaxRow row{-inf, 0.0f};
      kernels->online_block(big.data(), n, n, 1.0f, nullptr, nullptr, row, weights.data(), n,
                            acc.data(), 8);
      INFO(name << " n=" << n);
      CHECK(row.max == 3.2e38f);
      CHECK(weights[static_cast<size_t>(n / 2)] == 1.0f);
      CHECK(weights[0] == static_cast<float>(std::exp(3e38 - 3.2e38)));  // 0
    }
  }
}
