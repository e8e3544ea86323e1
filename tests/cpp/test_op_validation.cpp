// Every validation message, through the dispatcher from C++: each is a c10::ValueError.
#include <dilated_attention/ops.h>
#include <torch/torch.h>

#include <functional>
#include <string>

#include "catch_compat.h"
#include "error_messages.h"

namespace {

using test_support::mentions;
using test_support::value_error_of;

at::Tensor qkv(std::vector<int64_t> sizes = {1, 16, 4, 8}) { return torch::randn(sizes); }

}  // namespace

TEST_CASE("argument errors name the argument and the expected value", "[validation]") {
  using dilated_attention::dilated_attention;
  const auto q = qkv();
  auto error = [&](std::vector<int64_t> segs, std::vector<int64_t> rates, double p = 0.0,
                   std::optional<double> scale = std::nullopt, at::Tensor query = {}) {
    const auto query_in = query.defined() ? query : q;
    return value_error_of([&] { dilated_attention(query_in, q, q, segs, rates, p, false, scale); });
  };
  CHECK(mentions(error({}, {1}), "segment_lengths cannot be empty"));
  CHECK(mentions(error({8}, {}), "dilation_rates cannot be empty"));
  CHECK(mentions(error({8, 16}, {1}),
                 "segment_lengths and dilation_rates must have the same length: 2 != 1"));
  CHECK(mentions(error({8, -2}, {1, 1}), "segment_lengths[1] must be positive, got -2"));
  CHECK(mentions(error({8}, {0}), "dilation_rates[0] must be positive, got 0"));
  CHECK(mentions(error({8}, {1}, 1.5), "dropout must be between 0.0 and 1.0, got 1.5"));
  CHECK(mentions(error({8}, {1}, 0.0, INFINITY), "scale must be a finite number, got inf"));
  CHECK(mentions(error({8}, {1}, 0.0, {}, torch::randn({16, 4, 8})),
                 "query expected 4D tensor, got 3D"));
  CHECK(mentions(error({32}, {1}),
                 "Sequence length (16) must be divisible by the largest segment length (32)"));
  CHECK(mentions(error({6, 8}, {1, 1}),
                 "Sequence length (16) must be divisible by segment_lengths[0] (6)"));
  CHECK(mentions(error({8, 1}, {1, 2}),
                 "dilation_rates[1] (2) gives group 1 the offset 1, which must be smaller than "
                 "segment_lengths[1] (1)"));
  CHECK(
      mentions(error({4, 4, 4, 4, 4}, {1, 1, 1, 1, 1}), "num_heads (4) must be >= num_groups (5)"));
}

TEST_CASE("tensor errors: shapes, devices and dtypes", "[validation]") {
  using dilated_attention::dilated_attention;
  const auto q = qkv();
  CHECK(mentions(value_error_of([&] { dilated_attention(q, qkv({1, 16, 4, 4}), q, {8}, {1}); }),
                 "Shape mismatch at dimension 3: query has size 8, key has size 4"));
  CHECK(mentions(value_error_of([&] { dilated_attention(q, q, qkv({2, 16, 4, 8}), {8}, {1}); }),
                 "Shape mismatch at dimension 0: query has size 1, value has size 2"));
  CHECK(mentions(value_error_of([&] { dilated_attention(q, q.to(torch::kDouble), q, {8}, {1}); }),
                 "Dtype mismatch"));
  const auto ints = torch::ones({1, 16, 4, 8}, torch::kInt);
  CHECK(mentions(value_error_of([&] { dilated_attention(ints, ints, ints, {8}, {1}); }),
                 "query dtype must be one of float32, float64, bfloat16, float16, got Int"));
  CHECK(mentions(value_error_of([&] { dilated_attention(q, q.to(torch::kMeta), q, {8}, {1}); }),
                 "Device mismatch"));
}
