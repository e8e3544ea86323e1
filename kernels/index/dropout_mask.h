// Counter-based dropout mask for attention weights. Whether the weight between query position
// i and key position j of (batch b, head h) survives is a pure function of
// (seed, b, h, i, j) in global sequence coordinates, so:
//   - backward regenerates exactly the forward's mask without storing it, and
//   - the mask does not depend on tiling, threading, or how the sequence is split across ranks.
#pragma once

#include <cstdint>

namespace dilated_attention {

// splitmix64's finaliser: a bijective mix with full avalanche, so consecutive counters give
// independent-looking 64-bit draws. In the header because the CPU's vectorised mask
// (kernels/cpu/row_kernels_impl.h) must compute exactly these draws, lane by lane.
inline uint64_t dropout_mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// The odd constant the hash adds to (and multiplies key positions by).
constexpr uint64_t kDropoutGolden = 0x9e3779b97f4a7c15ULL;

// The 64-bit draw of the weight (row_key's query, key_position); below drop_below() it is dropped.
inline uint64_t dropout_draw(uint64_t row_key, int64_t key_position) {
  return dropout_mix64(row_key ^ (static_cast<uint64_t>(key_position) * kDropoutGolden));
}

class DropoutMask {
 public:
  DropoutMask(uint64_t seed, double dropout_p);

  // Hash of (seed, batch, head, query position); combine with a key position via keeps().
  uint64_t row_key(int64_t batch, int64_t head, int64_t query_position) const;
  // True when the weight (row_key's query, key_position) is kept.
  bool keeps(uint64_t row_key, int64_t key_position) const;
  // Factor applied to kept weights: 1 / (1 - p), and 0 when p == 1 (nothing is kept).
  double keep_scale() const { return keep_scale_; }
  double dropout_p() const { return dropout_p_; }
  // A draw (dropout_draw) below this is dropped; UINT64_MAX when p >= 1, where keeps() is false
  // for every draw.
  uint64_t drop_below() const { return drop_below_; }

 private:
  uint64_t seed_;
  double dropout_p_;
  uint64_t drop_below_;  // a uniform 64-bit draw below this threshold is dropped
  double keep_scale_;
};

// The seed of branch `branch` of a LongNet call (kernels/longnet_attention_kernel.h): each branch
// drops its own weights, independently of the others, from the call's one seed.
uint64_t branch_dropout_seed(uint64_t seed, int64_t branch);

}  // namespace dilated_attention
