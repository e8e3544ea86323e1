// What one batched attention call over [B', h, L, D] views needs besides q, k, v: masking,
// scale, the dropout mask and where the view's rows sit in the whole sequence.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/index/dropout_mask.h"

namespace dilated_attention {

// Where the rows of a [B', h, L, D] attention view sit in the full sequence, so the dropout
// mask uses global coordinates. View batch b' is batch first_batch + b' / views_per_batch; its
// row i of the query (key) side is at position (b' % views_per_batch) * view_stride +
// query_first (key_first) + i * step; view head h is global head first_head + h.
struct ViewCoordinates {
  int64_t first_batch = 0;
  int64_t views_per_batch = 1;
  int64_t view_stride = 0;
  int64_t first_head = 0;
  int64_t query_first = 0;
  int64_t key_first = 0;
  int64_t step = 1;
};

struct BlockOptions {
  // Causal blocks are square and diagonal: query row i sees key rows 0..i.
  bool is_causal = false;
  double scale = 1.0;
  const DropoutMask* dropout = nullptr;  // null or p == 0: no dropout
  ViewCoordinates where;                 // global coordinates of the rows, for the mask
  // False when the caller has checked that no input holds NaN or +-inf, so causal blocks skip
  // their own check (kernels/causal_pieces.h).
  bool may_hold_non_finite = true;
  // [B', Lk] bool, True where the key is padding (excluded from every softmax); undefined when
  // the call has no key_padding_mask. Rows left without a visible key give 0 (log-sum-exp -inf).
  at::Tensor key_padding;

  bool uses_dropout() const { return dropout != nullptr && dropout->dropout_p() > 0.0; }
};

}  // namespace dilated_attention
