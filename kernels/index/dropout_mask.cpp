#include "kernels/index/dropout_mask.h"

#include <cmath>

namespace dilated_attention {
namespace {

// splitmix64's finaliser: a bijective mix with full avalanche, so consecutive counters give
// independent-looking 64-bit draws.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;

}  // namespace

DropoutMask::DropoutMask(uint64_t seed, double dropout_p) : seed_(seed), dropout_p_(dropout_p) {
  if (dropout_p >= 1.0) {
    drop_below_ = UINT64_MAX;
    keep_scale_ = 0.0;
  } else {
    // p * 2^64, computed in long double so small p keep their precision.
    drop_below_ = static_cast<uint64_t>(std::ldexp(static_cast<long double>(dropout_p), 64));
    keep_scale_ = 1.0 / (1.0 - dropout_p);
  }
}

uint64_t DropoutMask::row_key(int64_t batch, int64_t head, int64_t query_position) const {
  uint64_t key = mix64(seed_ + kGolden);
  key = mix64(key ^ (static_cast<uint64_t>(batch) + kGolden));
  key = mix64(key ^ (static_cast<uint64_t>(head) + kGolden));
  return mix64(key ^ (static_cast<uint64_t>(query_position) + kGolden));
}

bool DropoutMask::keeps(uint64_t row_key, int64_t key_position) const {
  if (keep_scale_ == 0.0) return false;
  return mix64(row_key ^ (static_cast<uint64_t>(key_position) * kGolden)) >= drop_below_;
}

uint64_t branch_dropout_seed(uint64_t seed, int64_t branch) {
  return mix64(seed ^ mix64(static_cast<uint64_t>(branch) + kGolden));
}

}  // namespace dilated_attention
