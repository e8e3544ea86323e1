// Global coordinates of one (view batch, view head) slice of a [B', h, L, D] attention view, for
// the dropout mask (kernels/index/dropout_mask.h), which both CPU kernels that drop weights
// draw in global coordinates (dropout_attention_cpu.cpp, flash_attention_cpu.cpp).
#pragma once

#include <cstdint>

#include "kernels/block_options.h"

namespace dilated_attention {

struct SliceCoordinates {
  int64_t batch, head, query_first, key_first, step;
  int64_t query_position(int64_t i) const { return query_first + i * step; }
  int64_t key_position(int64_t j) const { return key_first + j * step; }
};

inline SliceCoordinates slice_coordinates(const ViewCoordinates& where, int64_t view_batch,
                                          int64_t view_head) {
  const int64_t view_start = (view_batch % where.views_per_batch) * where.view_stride;
  return {where.first_batch + view_batch / where.views_per_batch, where.first_head + view_head,
          view_start + where.query_first, view_start + where.key_first, where.step};
}

}  // namespace dilated_attention
