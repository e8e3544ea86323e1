#include "kernels/block_attention.h"

#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "kernels/causal_pieces.h"
#include "kernels/device_kernels.h"
#include "kernels/lse_merge.h"

namespace dilated_attention {
namespace {

// With scale 0 every key a query may see weighs the same. ATen's attention kernels apply the
// scale after the causal mask, so 0 * -inf gives NaN rows; zero queries at scale 1 give those
// equal weights exactly (every score 0), and the gradients of q and k are 0 (every score is
// 0 * q.k whatever q and k are). A scale below float32's smallest value is 0 in kernels that
// compute in float32 (every input dtype but float64).
bool is_zero_scale(const at::Tensor& q, const BlockOptions& options) {
  return options.scale == 0.0 ||
         (q.scalar_type() != at::kDouble && static_cast<float>(options.scale) == 0.0f);
}

BlockOptions at_unit_scale(const BlockOptions& options) {
  BlockOptions unit = options;
  unit.scale = 1.0;
  return unit;
}

// A negative scale: ATen's CPU flash kernel reduces the row maximum before scaling, so with a
// negative scale the causal mask's -inf becomes +inf and every row is NaN. scale * q.k equals
// |scale| * (-q).k, so the kernels get the negated queries and a positive scale (and the
// gradient of q is the negated gradient of -q).
bool is_negative_scale(const BlockOptions& options) { return options.scale < 0.0; }

BlockOptions at_positive_scale(const BlockOptions& options) {
  BlockOptions positive = options;
  positive.scale = -options.scale;
  return positive;
}

// A query row holding NaN or +-inf has only NaN (or infinite) scores, so its attention is NaN,
// as the float64 reference gives. ATen's CPU flash kernel returns 0 for such a row when the
// block has few keys (under 16 in float32, bf16 and half, under 8 in float64, on AVX2); longer
// blocks propagate the NaN. Marking costs a pass over q and out (a fifth of the attention's time
// at N = 8192 if done for every block), so only blocks of fewer than kShortKeyBlock keys (with
// room for wider vectors), and scale 0 (whose zero queries lose the NaN), take it. No host sync.
// The log-sum-exp is marked too, so merges with other key blocks stay NaN.
constexpr int64_t kShortKeyBlock = 64;

std::tuple<at::Tensor, at::Tensor> with_rows_marked(const at::Tensor& bad_rows, at::Tensor out,
                                                    at::Tensor lse) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  out.masked_fill_(bad_rows.unsqueeze(-1), nan);
  lse.masked_fill_(bad_rows, nan);
  return {std::move(out), std::move(lse)};
}

// Such rows give 0, with log-sum-exp -inf (nothing to merge), whatever the kernel returned.
std::tuple<at::Tensor, at::Tensor> with_rows_without_keys_zeroed(const at::Tensor& no_keys,
                                                                 at::Tensor out, at::Tensor lse) {
  if (!no_keys.defined()) return {std::move(out), std::move(lse)};
  out.masked_fill_(no_keys.unsqueeze(1).unsqueeze(-1), 0.0);
  lse.masked_fill_(no_keys.unsqueeze(1), -std::numeric_limits<double>::infinity());
  return {std::move(out), std::move(lse)};
}

at::Tensor non_finite_query_rows(const at::Tensor& q) {
  return at::isfinite(q).logical_not_().any(-1);
}

// What the scores of a block whose keys hold non-finite values say about its rows. ATen's CPU
// kernel returns 0 (and log-sum-exp 0) for a row whose visible scores are all NaN in short
// blocks (a causal row 0 seeing one NaN key), and for one whose visible scores are all -inf in
// any block, so such blocks compute their scores once more, explicitly: short blocks, and every
// piece of a row (where a log-sum-exp of 0 would be merged as a real block). The float64
// reference makes a row NaN when one visible score is NaN or +inf, and when every visible score
// of the whole row is -inf (softmax over nothing).
struct ScoreVerdict {
  at::Tensor nan_rows;    // [B', h, Lq]: some visible score NaN or +inf
  at::Tensor empty_rows;  // [B', h, Lq]: every visible score -inf
};

// Rows are judged in chunks, so the scores held at once stay near kJudgedScores values.
constexpr int64_t kJudgedScores = int64_t{1} << 22;

// Scores of query rows [B', h, n, D] against keys^T [B', h_kv, D, Lk], where h / h_kv query
// heads share each key head: the sharing heads become a broadcast dimension, no copy of keys.
at::Tensor shared_key_scores(const at::Tensor& q, const at::Tensor& keys_t) {
  const int64_t heads = q.size(1), key_heads = keys_t.size(1);
  if (heads == key_heads) return at::matmul(q, keys_t);
  const auto grouped = q.unflatten(1, {key_heads, heads / key_heads});
  return at::matmul(grouped, keys_t.unsqueeze(2)).flatten(1, 2);
}

ScoreVerdict judge_scores(const at::Tensor& q, const at::Tensor& k, const BlockOptions& options) {
  const auto accumulate = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto keys = k.to(accumulate).transpose(-1, -2);
  const int64_t rows = q.size(2), per_row = std::max<int64_t>(1, q.size(0) * q.size(1) * k.size(2));
  const int64_t chunk = std::max<int64_t>(1, kJudgedScores / per_row);
  std::vector<at::Tensor> nan_rows, empty_rows;
  for (int64_t first = 0; first < rows; first += chunk) {
    const int64_t n = std::min(chunk, rows - first);
    auto scores = shared_key_scores(q.narrow(2, first, n).to(accumulate), keys).mul_(options.scale);
    if (options.key_padding.defined()) {  // [B', Lk] -> [B', 1, 1, Lk]
      scores.masked_fill_(options.key_padding.unsqueeze(1).unsqueeze(1),
                          -std::numeric_limits<double>::infinity());
    }
    if (options.is_causal) {  // square block: row first + i sees keys 0 .. first + i
      const auto hidden = at::ones({n, k.size(2)}, q.options().dtype(at::kBool)).triu_(first + 1);
      scores.masked_fill_(hidden, -std::numeric_limits<double>::infinity());
    }
    nan_rows.push_back(scores.isnan().logical_or_(scores.isposinf()).any(-1));
    empty_rows.push_back(scores.isneginf().all(-1));
  }
  return {at::cat(nan_rows, 2), at::cat(empty_rows, 2)};
}

std::tuple<at::Tensor, at::Tensor> attend_with_checks(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v,
                                                      const BlockOptions& options,
                                                      KeyCoverage coverage);

// A row that sees no key (all padding) gives 0 even where its query is NaN: it attends to
// nothing. Rows that see keys whose scores are all -inf are judged in attend_with_checks.
std::tuple<at::Tensor, at::Tensor> attend(const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const BlockOptions& options,
                                          KeyCoverage coverage) {
  auto [out, lse] = attend_with_checks(q, k, v, options, coverage);
  return with_rows_without_keys_zeroed(rows_without_keys(options, q.size(2)), std::move(out),
                                       std::move(lse));
}

std::tuple<at::Tensor, at::Tensor> attend_with_checks(const at::Tensor& q, const at::Tensor& k,
                                                      const at::Tensor& v,
                                                      const BlockOptions& options,
                                                      KeyCoverage coverage) {
  const auto& kernels = kernels_for(q.device().type());
  const bool zero_scale = is_zero_scale(q, options);
  auto [out, lse] = zero_scale ? kernels.forward(at::zeros_like(q), k, v, at_unit_scale(options))
                    : is_negative_scale(options)
                        ? kernels.forward(q.neg(), k, v, at_positive_scale(options))
                        : kernels.forward(q, k, v, options);
  const bool short_block = zero_scale || k.size(2) < kShortKeyBlock;
  const bool judge = (short_block || coverage == KeyCoverage::kPieceOfRow) &&
                     options.may_hold_non_finite && may_hold_non_finite({&k});
  // A caller that checked its whole inputs finite (may_hold_non_finite false) has nothing to mark.
  if ((!short_block && !judge) || !options.may_hold_non_finite) {
    return {std::move(out), std::move(lse)};
  }
  auto nan_rows = non_finite_query_rows(q);
  if (judge) {
    const auto verdict = judge_scores(q, k, options);
    if (coverage == KeyCoverage::kWholeRow) {
      nan_rows.logical_or_(verdict.empty_rows);
    } else {
      // Contributes nothing to the merge; the merged row is judged once all pieces are in.
      out.masked_fill_(verdict.empty_rows.unsqueeze(-1), 0.0);
      lse.masked_fill_(verdict.empty_rows, -std::numeric_limits<double>::infinity());
    }
    nan_rows.logical_or_(verdict.nan_rows);
  }
  return with_rows_marked(nan_rows, std::move(out), std::move(lse));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attend_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options) {
  const auto& kernels = kernels_for(q.device().type());
  if (is_zero_scale(q, options)) {
    const auto grads =
        kernels.backward(grad_out, at::zeros_like(q), k, v, out, lse, at_unit_scale(options));
    return {at::zeros_like(q), at::zeros_like(k), std::get<2>(grads)};
  }
  if (is_negative_scale(options)) {
    auto [dq, dk, dv] =
        kernels.backward(grad_out, q.neg(), k, v, out, lse, at_positive_scale(options));
    return {dq.neg_(), std::move(dk), std::move(dv)};
  }
  return kernels.backward(grad_out, q, k, v, out, lse, options);
}

// The pieces of a causal block cut at `cuts` (kernels/causal_pieces.h): query rows [a, b) see
// keys [0, a) unmasked and keys [a, b) causally. `where` moves with the rows, so the dropout mask
// is the block's.
struct CausalPiece {
  int64_t first, rows;
  bool is_diagonal;
};

std::vector<CausalPiece> pieces_of(const std::vector<int64_t>& cuts) {
  std::vector<CausalPiece> pieces;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    pieces.push_back({cuts[i], cuts[i + 1] - cuts[i], true});
    if (cuts[i] > 0) {
      pieces.push_back({cuts[i], cuts[i + 1] - cuts[i], false});
    }
  }
  return pieces;
}

BlockOptions options_of(const CausalPiece& piece, const BlockOptions& block) {
  BlockOptions options = block;
  options.is_causal = piece.is_diagonal;
  options.where.query_first += piece.first * block.where.step;
  if (piece.is_diagonal) {
    options.where.key_first += piece.first * block.where.step;
  }
  if (block.key_padding.defined()) {  // the piece's key rows
    options.key_padding = piece.is_diagonal ? block.key_padding.narrow(1, piece.first, piece.rows)
                                            : block.key_padding.narrow(1, 0, piece.first);
  }
  return options;
}

at::Tensor query_rows(const at::Tensor& x, const CausalPiece& piece) {
  return x.narrow(2, piece.first, piece.rows);
}

at::Tensor key_rows(const at::Tensor& x, const CausalPiece& piece) {
  return piece.is_diagonal ? x.narrow(2, piece.first, piece.rows) : x.narrow(2, 0, piece.first);
}

std::tuple<at::Tensor, at::Tensor> attend_causal_in_pieces(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options,
                                                           const std::vector<int64_t>& cuts) {
  at::Tensor out, lse;
  std::vector<LseAccumulator> merged(cuts.size());
  for (const auto& piece : pieces_of(cuts)) {
    auto [o, l] = attend(query_rows(q, piece), key_rows(k, piece), key_rows(v, piece),
                         options_of(piece, options), KeyCoverage::kPieceOfRow);
    if (!out.defined()) {
      out = at::empty(q.sizes(), q.options());
      lse = at::empty(q.sizes().slice(0, 3), l.options());
    }
    merged[static_cast<size_t>(std::lower_bound(cuts.begin(), cuts.end(), piece.first) -
                               cuts.begin())]
        .add(o, l);
  }
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    const CausalPiece rows{cuts[i], cuts[i + 1] - cuts[i], true};
    query_rows(out, rows).copy_(merged[i].out());
    query_rows(lse, rows).copy_(merged[i].lse());
  }
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attend_causal_backward_in_pieces(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const BlockOptions& options,
    const std::vector<int64_t>& cuts) {
  // Half types sum their pieces' gradients in float32.
  const auto accumulate = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto grad_q = at::zeros(q.sizes(), q.options().dtype(accumulate));
  auto grad_k = at::zeros(k.sizes(), k.options().dtype(accumulate));
  auto grad_v = at::zeros(v.sizes(), v.options().dtype(accumulate));
  for (const auto& piece : pieces_of(cuts)) {
    const auto [dq, dk, dv] = attend_backward(
        query_rows(grad_out, piece), query_rows(q, piece), key_rows(k, piece), key_rows(v, piece),
        query_rows(out, piece), query_rows(lse, piece), options_of(piece, options));
    query_rows(grad_q, piece).add_(dq);
    key_rows(grad_k, piece).add_(dk);
    key_rows(grad_v, piece).add_(dv);
  }
  return {grad_q.to(q.scalar_type()), grad_k.to(k.scalar_type()), grad_v.to(v.scalar_type())};
}

}  // namespace

at::Tensor rows_without_keys(const BlockOptions& options, int64_t query_rows) {
  const auto& padding = options.key_padding;
  if (!padding.defined()) return {};
  if (options.is_causal) {  // square: row i sees keys 0..i
    return padding.to(at::kInt).cumprod(-1).to(at::kBool);
  }
  return padding.all(-1, /*keepdim=*/true).expand({padding.size(0), query_rows});
}

bool takes_non_finite_handling(const at::Tensor& q, const BlockOptions& options, int64_t keys) {
  return options.is_causal || keys < kShortKeyBlock || is_zero_scale(q, options);
}

bool block_attention_is_the_kernel_alone(const at::Tensor& q, const at::Tensor& k,
                                         const BlockOptions& options) {
  if (is_zero_scale(q, options) || is_negative_scale(options)) return false;
  // attend_with_checks marks nothing where the caller checked its inputs finite or the block is
  // neither causal (cut into pieces) nor short (judged).
  return !options.may_hold_non_finite || !takes_non_finite_handling(q, options, k.size(2));
}

std::tuple<at::Tensor, at::Tensor> with_unseen_rows_as_nan(at::Tensor out, at::Tensor lse,
                                                           const at::Tensor& rows_without_keys) {
  if (!kernels_for(lse.device().type()).checks_non_finite_on_host || lse.numel() == 0) {
    return {std::move(out), std::move(lse)};
  }
  auto unseen = lse.isneginf();
  if (rows_without_keys.defined()) {  // [B', Lq] or [B', 1, Lq]: 0 by definition, not NaN
    unseen.logical_and_(
        (rows_without_keys.dim() == 2 ? rows_without_keys.unsqueeze(1) : rows_without_keys)
            .logical_not());
  }
  if (!unseen.any().item<bool>()) {
    return {std::move(out), std::move(lse)};
  }
  return with_rows_marked(unseen, std::move(out), std::move(lse));
}

std::tuple<at::Tensor, at::Tensor> block_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                           const at::Tensor& v,
                                                           const BlockOptions& options,
                                                           KeyCoverage coverage) {
  if (options.is_causal && options.may_hold_non_finite) {
    const auto cuts = causal_cut_points({&q}, {&k, &v});
    if (!cuts.empty()) {
      // A causal block is all its rows see (its pieces are merged inside); within a ring it
      // is one block of several, and the ring finishes the merged rows.
      auto [out, lse] = attend_causal_in_pieces(q, k, v, options, cuts);
      return coverage == KeyCoverage::kWholeRow
                 ? with_unseen_rows_as_nan(out, lse, rows_without_keys(options, q.size(2)))
                 : std::make_tuple(out, lse);
    }
  }
  return attend(q, k, v, options, coverage);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> block_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse_in, const BlockOptions& options) {
  // A row that saw no key has log-sum-exp -inf; +inf makes every recomputed weight of it
  // exp(s - inf) = 0 (and no NaN from -inf - -inf), so its gradients are 0. With padding such a
  // row is the only source of -inf (rows judged NaN carry NaN).
  const auto lse =
      options.key_padding.defined()
          ? lse_in.masked_fill(lse_in.isneginf(), std::numeric_limits<double>::infinity())
          : lse_in;
  auto grads = [&] {
    if (options.is_causal && options.may_hold_non_finite) {
      const auto cuts = causal_cut_points({&grad_out, &q, &out}, {&k, &v});
      if (!cuts.empty()) {
        return attend_causal_backward_in_pieces(grad_out, q, k, v, out, lse, options, cuts);
      }
    }
    return attend_backward(grad_out, q, k, v, out, lse, options);
  }();
  if (options.key_padding.defined()) {
    // exp(s - inf) is NaN, not 0, where the row's query is NaN or inf: a row that sees no key
    // gets 0 all the same (the padded keys it reaches are zeroed by the callers).
    std::get<0>(grads).masked_fill_(lse_in.isneginf().unsqueeze(-1), 0.0);
  }
  return grads;
}

}  // namespace dilated_attention
