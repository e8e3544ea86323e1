#include "kernels/index/dropout_mask.h"

#include <cmath>

namespace dilated_attention {
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
  uint64_t key = dropout_mix64(seed_ + kDropoutGolden);
  key = dropout_mix64(key ^ (static_cast<uint64_t>(batch) + kDropoutGolden));
  key = dropout_mix64(key ^ (static_cast<uint64_t>(head) + kDropoutGolden));
  return dropout_mix64(key ^ (static_cast<uint64_t>(query_position) + kDropoutGolden));
}

bool DropoutMask::keeps(uint64_t row_key, int64_t key_position) const {
  if (keep_scale_ == 0.0) return false;
  return dropout_draw(row_key, key_position) >= drop_below_;
}

uint64_t branch_dropout_seed(uint64_t seed, int64_t branch) {
  return dropout_mix64(seed ^ dropout_mix64(static_cast<uint64_t>(branch) + kDropoutGolden));
}

}  // namespace dilated_attention
