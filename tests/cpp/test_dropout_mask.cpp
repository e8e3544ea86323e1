#include "catch_compat.h"
#include "kernels/index/dropout_mask.h"

using namespace dilated_attention;

namespace {
double kept_fraction(const DropoutMask& mask) {
  int64_t kept = 0, total = 0;
  for (int64_t i = 0; i < 200; ++i) {
    const auto row = mask.row_key(0, 1, i);
    for (int64_t j = 0; j < 500; ++j, ++total) kept += mask.keeps(row, j) ? 1 : 0;
  }
  return static_cast<double>(kept) / static_cast<double>(total);
}
}  // namespace

TEST_CASE("dropout mask keeps about 1 - p of the weights", "[dropout]") {
  CHECK(kept_fraction(DropoutMask(7, 0.0)) == 1.0);
  CHECK(kept_fraction(DropoutMask(7, 1.0)) == 0.0);
  const double fraction = kept_fraction(DropoutMask(7, 0.3));
  CHECK(fraction > 0.69);
  CHECK(fraction < 0.71);
  CHECK(DropoutMask(7, 0.25).keep_scale() == 1.0 / 0.75);
  CHECK(DropoutMask(7, 1.0).keep_scale() == 0.0);
}

TEST_CASE("dropout mask is a pure function of seed and coordinates", "[dropout]") {
  const DropoutMask a(42, 0.5), same(42, 0.5), other(43, 0.5);
  int64_t differences = 0;
  for (int64_t i = 0; i < 64; ++i) {
    for (int64_t j = 0; j < 64; ++j) {
      REQUIRE(a.keeps(a.row_key(1, 2, i), j) == same.keeps(same.row_key(1, 2, i), j));
      differences += a.keeps(a.row_key(1, 2, i), j) != other.keeps(other.row_key(1, 2, i), j);
    }
  }
  CHECK(differences > 1000);  // about half of 4096 for independent masks
}
