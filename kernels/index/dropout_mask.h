// Counter-based dropout mask for attention weights. Whether the weight between query position
// i and key position j of (batch b, head h) survives is a pure function of
// (seed, b, h, i, j) in global sequence coordinates, so:
//   - backward regenerates exactly the forward's mask without storing it, and
//   - the mask does not depend on tiling, threading, or how the sequence is split across ranks.
#pragma once

#include <cstdint>

namespace dilated_attention {

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
