// Where causal blocks holding non-finite values are cut (kernels/causal_pieces.h): at every
// position holding one and at the position after it, nowhere when every value is finite.
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "catch_compat.h"
#include "kernels/causal_pieces.h"

namespace {

using dilated_attention::causal_cut_points;
using dilated_attention::holds_non_finite;
using Cuts = std::vector<int64_t>;

// [B', h, L, D] = [2, 3, 10, 4]
at::Tensor block() { return at::randn({2, 3, 10, 4}, at::kFloat); }

}  // namespace

TEST_CASE("finite blocks are not cut", "[causal_pieces]") {
  const auto q = block(), k = block(), v = block();
  CHECK(causal_cut_points({&q}, {&k, &v}).empty());
  CHECK_FALSE(holds_non_finite(q));
  CHECK_FALSE(holds_non_finite(at::empty({0, 3, 0, 4})));
}

TEST_CASE("a block is cut at each non-finite position and after it", "[causal_pieces]") {
  auto q = block(), k = block(), v = block();
  q[1][2][3][0] = std::numeric_limits<float>::quiet_NaN();
  CHECK(causal_cut_points({&q}, {&k, &v}) == Cuts{0, 3, 4, 10});
  v[0][0][0][3] = std::numeric_limits<float>::infinity();   // first row: no cut before it
  k[0][1][9][1] = -std::numeric_limits<float>::infinity();  // last row: no cut after it
  CHECK(causal_cut_points({&q}, {&k, &v}) == Cuts{0, 1, 3, 4, 9, 10});
  k[1][0][4][2] = std::numeric_limits<float>::quiet_NaN();  // next to a cut
  CHECK(causal_cut_points({&q}, {&k, &v}) == Cuts{0, 1, 3, 4, 5, 9, 10});
}

TEST_CASE("a finite block whose sum overflows is only checked closer", "[causal_pieces]") {
  const auto big = at::full({1, 1, 4, 4}, 3e38, at::kFloat);
  CHECK(holds_non_finite(big));  // the cheap check is conservative ...
  CHECK(causal_cut_points({&big}, {&big, &big}) == Cuts{0, 4});  // ... the cuts are exact
}

TEST_CASE("a non-finite value is found in every floating dtype", "[causal_pieces]") {
  for (const auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    auto x = block().to(dtype);
    CHECK_FALSE(holds_non_finite(x));
    CHECK_FALSE(holds_non_finite(x.transpose(1, 2)));
    for (const double bad :
         {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
          -std::numeric_limits<double>::infinity()}) {
      auto y = x.clone();
      y[1][2][7][3] = bad;
      CHECK(holds_non_finite(y));
      CHECK(holds_non_finite(y.transpose(1, 2)));
    }
  }
  // float16 is summed in float: 4 x 65504 does not overflow into a false report.
  CHECK_FALSE(holds_non_finite(at::full({1, 1, 2, 2}, 65504.0, at::kHalf)));
}
