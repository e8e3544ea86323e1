// Index math of sequence-parallel dilated attention (kernels/ring_plan.h): hand-worked layouts,
// then a brute-force property check over random small configurations that compares the plan
// with an enumeration of segment_positions (which knows nothing about shards).
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "catch_compat.h"
#include "kernels/index/dilation_plan.h"
#include "kernels/index/ring_plan.h"

using namespace dilated_attention;

namespace {

bool same(const RowRange& a, int64_t first, int64_t count) {
  return a.count == count && (count == 0 || a.first == first);
}

// (group index, segment, first row, row count) of each block, for whole-vector comparison.
using BlockTuple = std::tuple<int64_t, int64_t, int64_t, int64_t>;
std::vector<BlockTuple> as_tuples(const std::vector<BlockRef>& blocks) {
  std::vector<BlockTuple> out;
  for (const auto& b : blocks)
    out.emplace_back(b.group_index, b.segment, b.rows.first, b.rows.count);
  return out;
}

std::vector<int64_t> edge_segments(const GroupShardWork& work) {
  std::vector<int64_t> segments;
  for (const auto& e : work.edge_segments) segments.push_back(e.segment);
  return segments;
}

}  // namespace

TEST_CASE("segments inside every shard need no edges and no blocks", "[ring_plan]") {
  // N = 32, P = 2: shards of 16, segments 4 and 8 tile them exactly.
  const auto groups = make_head_groups(4, {4, 8}, {1, 2});
  const ShardLayout layout{32, 2};
  for (int rank = 0; rank < 2; ++rank) {
    const auto plan = plan_shard_work(groups, layout, rank);
    REQUIRE(plan.size() == 2);
    CHECK(plan[0].first_inner_segment == 4 * rank);
    CHECK(plan[0].num_inner_segments == 4);
    CHECK(plan[1].first_inner_segment == 2 * rank);
    CHECK(plan[1].num_inner_segments == 2);
    CHECK(plan[0].edge_segments.empty());
    CHECK(plan[1].edge_segments.empty());
    for (bool causal : {false, true})
      CHECK(blocks_needed(groups, layout, rank, 1 - rank, causal).empty());
  }
  CHECK(payload_elements({}, groups, 2, 8) == 0);
}

TEST_CASE("a segment as long as the sequence is split evenly over the ranks", "[ring_plan]") {
  const auto groups = make_head_groups(2, {16}, {1});
  for (int p : {2, 4}) {
    const ShardLayout layout{16, p};
    const int64_t n = 16 / p;
    const auto rows = rows_by_rank(groups[0], 0, layout);
    REQUIRE(rows.size() == static_cast<size_t>(p));
    for (int r = 0; r < p; ++r) CHECK(same(rows[r], r * n, n));
    for (int r = 0; r < p; ++r) {
      const auto plan = plan_shard_work(groups, layout, r);
      CHECK(plan[0].num_inner_segments == 0);
      REQUIRE(edge_segments(plan[0]) == std::vector<int64_t>{0});
      CHECK(same(plan[0].edge_segments[0].rows_of_rank[r], r * n, n));
      for (int sender = 0; sender < p; ++sender) {
        const auto blocks = blocks_needed(groups, layout, r, sender, false);
        if (sender == r) {
          CHECK(blocks.empty());
          continue;
        }
        CHECK(as_tuples(blocks) == std::vector<BlockTuple>{{0, 0, sender * n, n}});
        // B = 3, two heads, D = 5.
        CHECK(payload_elements(blocks, groups, 3, 5) == 3 * n * 2 * 5);
      }
    }
  }
}

TEST_CASE("dilated spanning segment: rows follow the positions o + j*r", "[ring_plan]") {
  // Group 1: s = 16, r = 2, offset 1 -> positions 1, 3, ..., 15; P = 4, shards of 4.
  const auto groups = make_head_groups(4, {8, 16}, {1, 2});
  const ShardLayout layout{16, 4};
  const auto rows = rows_by_rank(groups[1], 0, layout);
  for (int r = 0; r < 4; ++r) CHECK(same(rows[r], 2 * r, 2));
  // Group 0: s = 8 covers ranks 0-1 and 2-3.
  CHECK(same(dilated_rows_in(groups[0], 1, 8, 12), 0, 4));
  CHECK(same(dilated_rows_in(groups[0], 1, 12, 16), 4, 4));
  CHECK(dilated_rows_in(groups[0], 1, 0, 8).empty());
  CHECK(as_tuples(blocks_needed(groups, layout, 2, 3, false)) ==
        std::vector<BlockTuple>{{0, 1, 4, 4}, {1, 0, 6, 2}});
  CHECK(as_tuples(blocks_needed(groups, layout, 0, 3, false)) ==
        std::vector<BlockTuple>{{1, 0, 6, 2}});
  // 2 heads per group, B = 1, D = 4: (4 * 2 + 2 * 2) * 4.
  CHECK(payload_elements(blocks_needed(groups, layout, 2, 3, false), groups, 1, 4) == 48);
}

TEST_CASE("misaligned segments: s = 16 with shards of 24", "[ring_plan]") {
  const auto groups = make_head_groups(1, {16}, {1});
  const ShardLayout layout{48, 2};
  const auto plan0 = plan_shard_work(groups, layout, 0);
  CHECK(plan0[0].first_inner_segment == 0);
  CHECK(plan0[0].num_inner_segments == 1);
  REQUIRE(edge_segments(plan0[0]) == std::vector<int64_t>{1});
  CHECK(same(plan0[0].edge_segments[0].rows_of_rank[0], 0, 8));
  CHECK(same(plan0[0].edge_segments[0].rows_of_rank[1], 8, 8));
  const auto plan1 = plan_shard_work(groups, layout, 1);
  CHECK(plan1[0].first_inner_segment == 2);
  CHECK(plan1[0].num_inner_segments == 1);
  CHECK(edge_segments(plan1[0]) == std::vector<int64_t>{1});
  CHECK(as_tuples(blocks_needed(groups, layout, 0, 1, false)) ==
        std::vector<BlockTuple>{{0, 1, 8, 8}});
  CHECK(as_tuples(blocks_needed(groups, layout, 1, 0, false)) ==
        std::vector<BlockTuple>{{0, 1, 0, 8}});
  // Causal: only the later rank receives, and only from the earlier one.
  CHECK(blocks_needed(groups, layout, 0, 1, true).empty());
  CHECK(as_tuples(blocks_needed(groups, layout, 1, 0, true)) ==
        std::vector<BlockTuple>{{0, 1, 0, 8}});
}

TEST_CASE("r = 2: a segment crossing a boundary whose dilated rows do not", "[ring_plan]") {
  // N = 20, P = 4, shards [0,5) [5,10) [10,15) [15,20); s = 4, r = 2.
  // Group 0 (o = 0): segment 3 = [12,16) has positions {12, 14}, both on rank 2.
  // Group 1 (o = 1): segment 1 = [4,8) has positions {5, 7}, both on rank 1.
  const auto groups = make_head_groups(2, {4, 4}, {2, 2});
  REQUIRE(groups[1].offset == 1);
  const ShardLayout layout{20, 4};
  const auto plan0 = plan_shard_work(groups, layout, 0);
  CHECK(edge_segments(plan0[0]) == std::vector<int64_t>{1});  // {4 | 6} spans ranks 0-1
  CHECK(edge_segments(plan0[1]).empty());                     // rank 0 holds only 4 of [4,8)
  CHECK(plan0[1].num_inner_segments == 1);
  const auto plan1 = plan_shard_work(groups, layout, 1);
  CHECK(edge_segments(plan1[1]) == std::vector<int64_t>{1, 2});
  CHECK(same(plan1[1].edge_segments[0].rows_of_rank[1], 0, 2));
  CHECK(plan1[1].edge_segments[0].rows_of_rank[0].empty());
  const auto plan3 = plan_shard_work(groups, layout, 3);
  CHECK(edge_segments(plan3[0]).empty());  // rank 3 holds only 15 of [12,16)
  CHECK(plan3[0].first_inner_segment == 4);
  CHECK(plan3[0].num_inner_segments == 1);
  CHECK(edge_segments(plan3[1]) == std::vector<int64_t>{3});  // {13 | 15}
  // Only segments whose dilated rows lie on both ranks make blocks: group 1 segment 1 (rank 1
  // only) and group 0 segment 3 (rank 2 only) never travel.
  CHECK(as_tuples(blocks_needed(groups, layout, 0, 1, false)) ==
        std::vector<BlockTuple>{{0, 1, 1, 1}});
  CHECK(as_tuples(blocks_needed(groups, layout, 1, 0, false)) ==
        std::vector<BlockTuple>{{0, 1, 0, 1}});
  CHECK(as_tuples(blocks_needed(groups, layout, 2, 3, false)) ==
        std::vector<BlockTuple>{{1, 3, 1, 1}});
  CHECK(as_tuples(blocks_needed(groups, layout, 3, 2, false)) ==
        std::vector<BlockTuple>{{1, 3, 0, 1}});
  CHECK(as_tuples(blocks_needed(groups, layout, 3, 2, true)) ==
        std::vector<BlockTuple>{{1, 3, 0, 1}});
  CHECK(blocks_needed(groups, layout, 2, 3, true).empty());
}

TEST_CASE("r = 3: a segment whose dilated rows stay on one side of the boundary", "[ring_plan]") {
  // N = 24, P = 4, shards of 6; group 2: s = 8, r = 3, o = 2.
  // Segment 0 {2, 5}: rank 0 only (the segment crosses 6). Segment 1 {10, 13}: ranks 1 and 2.
  // Segment 2 {18, 21}: rank 3 only (the segment crosses 18).
  const auto groups = make_head_groups(3, {8, 8, 8}, {1, 2, 3});
  REQUIRE(groups[2].offset == 2);
  const ShardLayout layout{24, 4};
  const auto rows0 = rows_by_rank(groups[2], 0, layout);
  CHECK(same(rows0[0], 0, 2));
  for (int r = 1; r < 4; ++r) CHECK(rows0[r].empty());
  const auto rows1 = rows_by_rank(groups[2], 1, layout);
  CHECK(same(rows1[1], 0, 1));
  CHECK(same(rows1[2], 1, 1));
  CHECK(rows1[0].empty());
  CHECK(rows1[3].empty());
  CHECK(edge_segments(plan_shard_work(groups, layout, 0)[2]) == std::vector<int64_t>{0});
  CHECK(edge_segments(plan_shard_work(groups, layout, 1)[2]) == std::vector<int64_t>{1});
  CHECK(edge_segments(plan_shard_work(groups, layout, 3)[2]) == std::vector<int64_t>{2});
  for (const auto& b : blocks_needed(groups, layout, 1, 0, false)) CHECK(b.group_index != 2);
  for (const auto& b : blocks_needed(groups, layout, 2, 3, false)) CHECK(b.group_index != 2);
  CHECK(as_tuples(blocks_needed(groups, layout, 2, 1, true)) ==
        std::vector<BlockTuple>{{0, 1, 0, 4}, {1, 1, 0, 2}, {2, 1, 0, 1}});
}

TEST_CASE("causal blocks only ever come from earlier ranks", "[ring_plan]") {
  const auto groups = make_head_groups(3, {16, 8, 4}, {1, 2, 1});
  const ShardLayout layout{16, 4};
  for (int receiver = 0; receiver < 4; ++receiver) {
    for (int sender = 0; sender < 4; ++sender) {
      const bool expected = sender < receiver;
      CHECK(!blocks_needed(groups, layout, receiver, sender, true).empty() == expected);
      CHECK(key_block_visible(receiver, sender, true) == (sender <= receiver));
      CHECK(key_block_visible(receiver, sender, false));
    }
  }
}

TEST_CASE("random layouts: the plan covers every dilated position once, blocks match",
          "[ring_plan]") {
  std::mt19937 rng(1234);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int checked = 0;
  while (checked < 300) {
    const int p = pick(1, 4);
    const int64_t n = pick(1, 12), seq = n * p;
    std::vector<int64_t> divisors;
    for (int64_t d = 1; d <= seq; ++d)
      if (seq % d == 0) divisors.push_back(d);
    const int num_groups = pick(1, 3);
    std::vector<int64_t> segs, rates;
    bool valid = true;
    for (int g = 0; g < num_groups; ++g) {
      segs.push_back(divisors[pick(0, static_cast<int>(divisors.size()) - 1)]);
      rates.push_back(pick(1, 4));
      valid = valid && group_offset(g, rates.back()) < segs.back();  // the ops' validation rule
    }
    if (!valid) continue;
    ++checked;
    const auto groups = make_head_groups(num_groups + pick(0, 2), segs, rates);
    const ShardLayout layout{seq, p};
    const bool causal = pick(0, 1) == 1;
    auto owner = [&](int64_t position) { return static_cast<int>(position / n); };
    INFO("N=" << seq << " P=" << p << " groups=" << num_groups << " causal=" << causal);

    // Coverage: inner segments + own edge rows, over all ranks, = every dilated position once.
    for (const auto& group : groups) {
      std::map<int64_t, int> seen;
      for (int rank = 0; rank < p; ++rank) {
        const auto plan = plan_shard_work(groups, layout, rank);  // kept alive: work refers into it
        const auto& work = plan[group.index];
        for (int64_t t = work.first_inner_segment;
             t < work.first_inner_segment + work.num_inner_segments; ++t) {
          for (auto pos : segment_positions(group, t)) {
            ++seen[pos];
            CHECK(owner(pos) == rank);
          }
        }
        for (const auto& edge : work.edge_segments) {
          const auto& mine = edge.rows_of_rank[rank];
          CHECK(!mine.empty());
          for (int64_t j = mine.first; j < mine.first + mine.count; ++j) {
            const int64_t pos =
                edge.segment * group.segment_length + group.offset + j * group.dilation_rate;
            ++seen[pos];
            CHECK(owner(pos) == rank);
          }
        }
      }
      std::map<int64_t, int> expected;
      for (int64_t t = 0; t < group.num_segments(seq); ++t)
        for (auto pos : segment_positions(group, t)) expected[pos] = 1;
      CHECK(seen == expected);
    }

    // Blocks: exactly the sender-owned dilated rows of segments where the receiver owns rows.
    for (int receiver = 0; receiver < p; ++receiver) {
      for (int sender = 0; sender < p; ++sender) {
        std::vector<BlockTuple> expected;
        int64_t elements = 0;
        if (sender != receiver && !(causal && sender > receiver)) {
          for (const auto& group : groups) {
            for (int64_t t = 0; t < group.num_segments(seq); ++t) {
              const auto pos = segment_positions(group, t);
              std::vector<int64_t> rows;
              bool receiver_has = false;
              for (size_t j = 0; j < pos.size(); ++j) {
                receiver_has = receiver_has || owner(pos[j]) == receiver;
                if (owner(pos[j]) == sender) rows.push_back(static_cast<int64_t>(j));
              }
              if (!receiver_has || rows.empty()) continue;
              CHECK(rows.back() - rows.front() + 1 ==
                    static_cast<int64_t>(rows.size()));  // contiguous
              expected.emplace_back(group.index, t, rows.front(),
                                    static_cast<int64_t>(rows.size()));
              elements += 2 * static_cast<int64_t>(rows.size()) * group.num_heads * 3;
            }
          }
        }
        const auto blocks = blocks_needed(groups, layout, receiver, sender, causal);
        CHECK(as_tuples(blocks) == expected);
        CHECK(payload_elements(blocks, groups, 2, 3) == elements);
      }
    }
  }
}
