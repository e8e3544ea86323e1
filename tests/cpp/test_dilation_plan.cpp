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
