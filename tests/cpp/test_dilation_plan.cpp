#include <cstdint>
#include <vector>

#include "catch_compat.h"
#include "kernels/index/dilation_plan.h"

using namespace dilated_attention;

TEST_CASE("extra heads go to the first groups", "[plan]") {
  const auto groups = make_head_groups(8, {2048, 4096, 8192}, {1, 2, 4});
  REQUIRE(groups.size() == 3);
  CHECK(groups[0].num_heads == 3);
  CHECK(groups[1].num_heads == 3);
  CHECK(groups[2].num_heads == 2);
  CHECK(groups[0].first_head == 0);
  CHECK(groups[1].first_head == 3);
  CHECK(groups[2].first_head == 6);

  const auto uneven = make_head_groups(5, {4, 4, 4}, {1, 1, 1});
  CHECK(uneven[0].num_heads == 2);
  CHECK(uneven[1].num_heads == 2);
  CHECK(uneven[2].num_heads == 1);
  CHECK(group_of_head(uneven, 4).index == 2);
  CHECK(group_of_head(uneven, 1).index == 0);
}

TEST_CASE("offset is the group index modulo its rate", "[plan]") {
  const auto groups = make_head_groups(4, {8, 8, 8, 8}, {1, 2, 2, 3});
  CHECK(groups[0].offset == 0);
  CHECK(groups[1].offset == 1);
  CHECK(groups[2].offset == 0);
  CHECK(groups[3].offset == 0);
  CHECK(group_offset(5, 4) == 1);
}

TEST_CASE("segment positions step by the rate from the offset", "[plan]") {
  HeadGroup group;
  group.segment_length = 6;
  group.dilation_rate = 4;
  group.offset = 1;
  CHECK(group.subset_length() == 2);
  CHECK(segment_positions(group, 0) == std::vector<int64_t>{1, 5});
  CHECK(segment_positions(group, 2) == std::vector<int64_t>{13, 17});

  group.offset = 3;
  CHECK(segment_positions(group, 0) == std::vector<int64_t>{3});
  CHECK(dilated_subset_length(8, 1, 0) == 8);
  CHECK(dilated_subset_length(8, 2, 1) == 4);
  CHECK(dilated_subset_length(2, 4, 3) == 0);
}

TEST_CASE("dilation leaves positions uncovered only when some rate exceeds one", "[plan]") {
  CHECK_FALSE(leaves_positions_uncovered(make_head_groups(4, {4, 8}, {1, 1})));
  CHECK(leaves_positions_uncovered(make_head_groups(4, {4, 8}, {1, 2})));
}

TEST_CASE("effective FLOPs count only the dilated work", "[plan]") {
  // 4 * B * h_g * (N / r_g) * (s_g / r_g) * D per group.
  const auto groups = make_head_groups(8, {2048, 4096, 8192}, {1, 2, 4});
  const double expected =
      4.0 * 3 * 16384 * 2048 * 64 + 4.0 * 3 * 8192 * 2048 * 64 + 4.0 * 2 * 4096 * 2048 * 64;
  CHECK(dilated_attention_forward_flops(1, 16384, 64, groups) == expected);
  CHECK(dilated_attention_forward_flops(2, 16384, 64, groups) == 2 * expected);
}

TEST_CASE("rates at or past the segment length step by the segment length", "[plan]") {
  const int64_t huge = int64_t{1} << 62;
  const auto groups = make_head_groups(3, {4, 4, 8}, {huge, 4, 3});
  CHECK(groups[0].dilation_rate == 4);
  CHECK(groups[0].offset == 0);
  CHECK(groups[1].dilation_rate == 4);
  CHECK(groups[1].offset == 1);
  CHECK(groups[2].dilation_rate == 3);
  CHECK(groups[2].offset == 2);
  // One position per segment, the offset, exactly as stepping by `huge` would give.
  CHECK(segment_positions(groups[0], 2) == std::vector<int64_t>{8});
  CHECK(segment_positions(groups[1], 1) == std::vector<int64_t>{5});
  const auto largest = make_head_groups(1, {1}, {INT64_MAX});
  CHECK(largest[0].dilation_rate == 1);
  CHECK(largest[0].subset_length() == 1);
}

TEST_CASE("groups split where shared key/value heads would make the head ratio uneven", "[plan]") {
  // H = 8 in groups of 3, 3, 2; four query heads share each of two key/value heads.
  const auto groups = make_head_groups(8, {8, 16, 32}, {1, 2, 4});
  const auto parts = split_at_shared_key_values(groups, 4);
  // Group 0 (heads 0-2) lies inside key/value head 0; group 1 (3-5) spans heads 0 and 1;
  // group 2 (6-7) lies inside head 1.
  REQUIRE(parts.size() == 4);
  CHECK(parts[0].first_head == 0);
  CHECK(parts[0].num_heads == 3);
  CHECK(parts[1].first_head == 3);
  CHECK(parts[1].num_heads == 1);
  CHECK(parts[2].first_head == 4);
  CHECK(parts[2].num_heads == 2);
  CHECK(parts[3].first_head == 6);
  CHECK(parts[3].num_heads == 2);
  CHECK(parts[1].index == 1);
  CHECK(parts[2].index == 1);
  CHECK(parts[2].segment_length == 16);
  CHECK(parts[2].offset == groups[1].offset);

  const auto keys = key_value_groups(parts, 4);
  CHECK(keys[0].first_head == 0);
  CHECK(keys[0].num_heads == 1);
  CHECK(keys[1].first_head == 0);
  CHECK(keys[2].first_head == 1);
  CHECK(keys[3].first_head == 1);
  CHECK(keys[3].num_heads == 1);
}

TEST_CASE("every query head reads key/value head h / ratio through its part", "[plan]") {
  for (int64_t heads : {1, 2, 3, 4, 6, 8, 12, 16}) {
    for (int64_t share = 1; share <= heads; ++share) {
      if (heads % share != 0) continue;
      for (size_t num_groups = 1; num_groups <= static_cast<size_t>(heads) && num_groups <= 4;
           ++num_groups) {
        const std::vector<int64_t> segments(num_groups, 8), rates(num_groups, 1);
        const auto parts =
            split_at_shared_key_values(make_head_groups(heads, segments, rates), share);
        int64_t next = 0;
        for (const auto& part : parts) {
          const auto keys = key_value_group(part, share);
          const int64_t per_key = part.num_heads / keys.num_heads;
          REQUIRE(per_key * keys.num_heads == part.num_heads);
          for (int64_t i = 0; i < part.num_heads; ++i) {
            CHECK(part.first_head + i == next + i);
            CHECK(keys.first_head + i / per_key == (part.first_head + i) / share);
          }
          next += part.num_heads;
        }
        CHECK(next == heads);
      }
    }
  }
}

TEST_CASE("aligned groups stay whole when key/value heads are shared", "[plan]") {
  const auto groups = make_head_groups(32, {8, 16}, {1, 2});
  const auto parts = split_at_shared_key_values(groups, 4);
  REQUIRE(parts.size() == 2);
  CHECK(key_value_group(parts[1], 4).first_head == 4);
  CHECK(key_value_group(parts[1], 4).num_heads == 4);
  CHECK_THROWS(key_value_group(HeadGroup{0, 2, 4, 8, 1, 0}, 4));
}

TEST_CASE("longnet branches put every head in r contiguous offset blocks", "[plan][longnet]") {
  // H = 5, r = 2: blocks of ceil(5/2) = 3 heads (offset 0) and 2 heads (offset 1).
  const auto groups = make_longnet_groups(5, 64, {16, 32}, {1, 2});
  REQUIRE(groups.size() == 3);
  CHECK(groups[0].index == 0);
  CHECK(groups[0].num_heads == 5);
  CHECK(groups[0].offset == 0);
  CHECK(groups[1].index == 1);
  CHECK(groups[1].first_head == 0);
  CHECK(groups[1].num_heads == 3);
  CHECK(groups[1].offset == 0);
  CHECK(groups[2].first_head == 3);
  CHECK(groups[2].num_heads == 2);
  CHECK(groups[2].offset == 1);
}

TEST_CASE("longnet offsets without heads or past the segment cover nothing", "[plan][longnet]") {
  // H = 3, r = 4: blocks of one head at offsets 0, 1, 2; offset 3 has no head.
  const auto four = make_longnet_groups(3, 64, {8}, {4});
  REQUIRE(four.size() == 3);
  CHECK(four[2].offset == 2);
  CHECK(four[2].first_head == 2);
  // A segment longer than N is N long; rate 8 on 2 positions keeps offsets 0 and 1 only, the
  // rate capped at the segment length.
  const auto short_sequence = make_longnet_groups(8, 2, {16}, {8});
  REQUIRE(short_sequence.size() == 2);
  CHECK(short_sequence[0].segment_length == 2);
  CHECK(short_sequence[1].dilation_rate == 2);
  CHECK(short_sequence[1].offset == 1);
  CHECK(short_sequence[1].first_head == 1);
  // A rate past every head count does not overflow ceil(H / r).
  const auto huge = make_longnet_groups(4, 8, {8}, {INT64_MAX});
  REQUIRE(huge.size() == 4);
  CHECK(huge[3].first_head == 3);
  CHECK(huge[3].num_heads == 1);
  CHECK(make_longnet_groups(4, 0, {8}, {2}).empty());
}
