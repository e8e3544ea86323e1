#include "kernels/kv_cache_attention_kernel.h"

#include <ATen/OpMathType.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "kernels/block_attention.h"
#include "kernels/device_kernels.h"
#include "kernels/key_padding.h"
#include "kernels/lse_merge.h"

namespace dilated_attention {
namespace {

// One segment of one group, seen from the query window: the group's dilated positions in the
// segment are key rows first_key + j * step for j < keys, and the query rows among them are the
// last `queries` of those (subset indices keys - queries .. keys - 1), the first at q's row
// first_query. The group's rate is the segment's (capped at its length, as the varlen and
// LongNet kernels cap a truncated tail's).
struct SegmentPart {
  HeadGroup group;
  int64_t first_key = 0;
  int64_t keys = 0;
  int64_t queries = 0;
  int64_t first_query = 0;

  int64_t step() const { return group.dilation_rate; }
  int64_t prefix() const { return keys - queries; }  // keys every query row of the part sees
};

// The sequence of one batch row seen from the query window: key rows [start, start + length),
// query rows at positions window_first .. length - 1 (counted from start), q's row 0 being key
// row first_query_row.
struct SequenceWindow {
  int64_t start = 0;
  int64_t length = 0;
  int64_t window_first = 0;
  int64_t first_query_row = 0;
};

// The segments of `group` holding query rows: only those overlapping the window, so the work
// does not depend on the cache's length.
std::vector<SegmentPart> parts_in_window(const HeadGroup& group, const SequenceWindow& window) {
  std::vector<SegmentPart> parts;
  const int64_t s = group.segment_length;
  for (int64_t begin = window.window_first / s * s; begin < window.length; begin += s) {
    SegmentPart part;
    part.group = group;
    part.group.segment_length = std::min(s, window.length - begin);
    part.group.dilation_rate = std::min(group.dilation_rate, part.group.segment_length);
    part.keys = part.group.subset_length();
    if (part.keys == 0) continue;  // the offset does not fit in a truncated segment
    const int64_t first_position = begin + group.offset;
    const int64_t before_window = window.window_first - first_position;
    const int64_t first_query_index =
        before_window <= 0 ? 0 : (before_window + part.step() - 1) / part.step();
    if (first_query_index >= part.keys) continue;
    part.first_key = window.start + first_position;
    part.queries = part.keys - first_query_index;
    part.first_query = part.first_key + first_query_index * part.step() - window.first_query_row;
    parts.push_back(part);
  }
  return parts;
}

// Rows first, first + step, ... (count of them) of x [B', N, ...] along dim 1: a view.
at::Tensor strided_rows(const at::Tensor& x, int64_t first, int64_t count, int64_t step) {
  return x.slice(1, first, first + (count - 1) * step + 1, step);
}

// Those rows of heads [first_head, first_head + num_heads) of x [B', N, H, ...], as the
// [B', h, count, ...] view the attention kernels take.
at::Tensor strided_head_rows(const at::Tensor& x, int64_t first, int64_t count, int64_t step,
                             const HeadGroup& heads) {
  return strided_rows(x, first, count, step)
      .narrow(2, heads.first_head, heads.num_heads)
      .transpose(1, 2);
}

struct Accumulators {
  at::Tensor out;   // [B', Nq, H, D], accumulation dtype
  at::Tensor lse;   // [B', Nq, H]
  at::Tensor seen;  // [B', Nq, H] bool: saw some unpadded key; undefined where not tracked
};

// Attention of one part's query rows over its keys, merged into their places. A query row sees
// the part's keys up to itself: the `prefix` keys before the first query row, seen by every
// query row, and a causal square block over the rest.
void attend_part(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& padding, const SegmentPart& part, const AttentionConfig& config,
                 bool first, Accumulators& acc) {
  const auto& group = part.group;
  const auto kv_group = key_value_group(group, config.heads_per_key_value);
  const auto mask = padding.defined()
                        ? strided_rows(padding, part.first_key, part.keys, part.step()).contiguous()
                        : at::Tensor();
  // ATen's CPU attention kernel reads a last dimension of stride 1 only, and gives its output
  // the query's strides: the part's few rows are copied where the caller's layout has another
  // head-dim stride (keys) or may overlap (queries; a view of it is cheap to copy), never the
  // whole cache.
  auto keys_of = [&](const at::Tensor& x) {
    auto rows =
        without_non_finite_padding(strided_rows(x, part.first_key, part.keys, part.step()), mask)
            .narrow(2, kv_group.first_head, kv_group.num_heads);
    if (rows.stride(-1) != 1) rows = rows.contiguous();
    return rows.transpose(1, 2);
  };
  const auto q_view = strided_rows(q, part.first_query, part.queries, part.step())
                          .narrow(2, group.first_head, group.num_heads)
                          .contiguous()
                          .transpose(1, 2);
  const auto k_view = keys_of(k), v_view = keys_of(v);
  const auto out_places =
      strided_head_rows(acc.out, part.first_query, part.queries, part.step(), group);
  const auto lse_places =
      strided_head_rows(acc.lse, part.first_query, part.queries, part.step(), group);

  BlockOptions options;
  options.scale = config.scale;
  bool merged_before = !first;
  auto attend = [&](int64_t first_key, int64_t keys, bool is_causal) {
    options.is_causal = is_causal;
    options.key_padding = mask.defined() ? mask.narrow(1, first_key, keys) : mask;
    auto [o, l] = block_attention_forward(q_view, k_view.narrow(2, first_key, keys),
                                          v_view.narrow(2, first_key, keys), options,
                                          KeyCoverage::kPieceOfRow);
    merge_into_places(out_places, lse_places, o, l, !merged_before);
    merged_before = true;
  };
  const int64_t prefix = part.prefix();
  if (part.queries == 1) {
    attend(0, part.keys, /*is_causal=*/false);  // the last key is the query's own
  } else {
    if (prefix > 0) attend(0, prefix, /*is_causal=*/false);
    attend(prefix, part.queries, /*is_causal=*/true);
  }

  if (!acc.seen.defined()) return;
  auto seen = strided_head_rows(acc.seen, part.first_query, part.queries, part.step(), group);
  if (!mask.defined()) {
    seen.fill_(true);
    return;
  }
  BlockOptions whole_segment;
  whole_segment.is_causal = true;
  whole_segment.key_padding = mask;
  const auto none = rows_without_keys(whole_segment, part.keys).narrow(1, prefix, part.queries);
  seen.logical_or_(none.logical_not().unsqueeze(1));
}

}  // namespace

at::Tensor kv_cache_attention_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& key_padding_mask,
                                     const std::vector<int64_t>& starts,
                                     const ConfigForLength& config_for_length) {
  const auto accumulation = q.options().dtype(at::toOpMathType(q.scalar_type()));
  const int64_t batch = q.size(0), queries = q.size(1), heads = q.size(2);
  const int64_t cached = k.size(1);
  Accumulators acc{
      at::zeros(q.sizes(), accumulation),
      at::full({batch, queries, heads}, -std::numeric_limits<double>::infinity(), accumulation),
      at::Tensor()};
  if (q.numel() == 0) return acc.out.to(q.scalar_type());
  // Merged rows that saw nothing above -inf become NaN (a softmax over nothing), rows without
  // keys and uncovered ones stay 0: as longnet_attention_forward_kernel marks them.
  const bool marks_unseen = kernels_for(q.device().type()).checks_non_finite_on_host;
  if (marks_unseen) acc.seen = at::zeros(acc.lse.sizes(), acc.lse.options().dtype(at::kBool));

  // Consecutive batch rows whose sequences start at the same key row share every segment: one
  // batched call per part for all of them (all rows, for a batch without left padding).
  for (int64_t first_row = 0, end_row = 0; first_row < batch; first_row = end_row) {
    end_row = first_row + 1;
    while (end_row < batch && starts[end_row] == starts[first_row]) ++end_row;
    SequenceWindow window;
    window.start = starts[first_row];
    window.length = cached - window.start;
    window.first_query_row = cached - queries;
    window.window_first = std::max<int64_t>(0, window.first_query_row - window.start);
    if (window.length <= 0) continue;  // an empty sequence: every row 0

    auto run = [&, rows = end_row - first_row](const at::Tensor& x) {
      return x.defined() ? x.narrow(0, first_row, rows) : x;
    };
    const auto config = config_for_length(window.length);
    Accumulators run_acc{run(acc.out), run(acc.lse), run(acc.seen)};
    const bool head_split = config.combination == Combination::kHeadSplit;
    const int64_t first_branch = config.groups.empty() ? 0 : config.groups.front().index;
    for (const auto& group : config.groups) {
      for (const auto& part : parts_in_window(group, window)) {
        attend_part(run(q), run(k), run(v), run(key_padding_mask), part, config,
                    head_split || group.index == first_branch, run_acc);
      }
    }
    if (config.output_scale != 1.0) run_acc.out.mul_(config.output_scale);
  }
  if (marks_unseen) {
    std::tie(acc.out, acc.lse) = with_unseen_rows_as_nan(acc.out, acc.lse, acc.seen.logical_not());
  }
  return acc.out.to(q.scalar_type());
}

}  // namespace dilated_attention
