// The table of each device's kernels (kernels/device_kernels.h): what a build has, and what each
// device's kernels refuse during validation. The CUDA kernels' checks are plain host code, so a
// CUDA build tests them on a machine without a GPU too.
#include <c10/util/Exception.h>

#include <functional>
#include <string>

#include "catch_compat.h"
#include "error_messages.h"
#include "kernels/device_kernels.h"

namespace {

using dilated_attention::KernelRequest;
using dilated_attention::kernels_for;

using test_support::mentions;
using test_support::value_error_of;

}  // namespace

TEST_CASE("the CPU kernels take every dtype, head dim and dropout", "[device_kernels]") {
  const auto& cpu = kernels_for(c10::DeviceType::CPU);
  for (auto dtype : {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf}) {
    for (int64_t head_dim : {1, 3, 64, 300}) {
      CHECK(value_error_of([&] { cpu.check_supported({dtype, head_dim, true}); }).empty());
    }
  }
}

TEST_CASE("a device without kernels is a ValueError naming it", "[device_kernels]") {
  const auto message = value_error_of([] { kernels_for(c10::DeviceType::MPS); });
  CHECK(mentions(message, "dilated_attention has no kernels for device mps in this build"));
}

#ifdef DILATED_ATTENTION_WITH_CUDA
TEST_CASE("the CUDA kernels refuse dropout, float64 and head dims they cannot take",
          "[device_kernels]") {
  const auto& cuda = kernels_for(c10::DeviceType::CUDA);
  auto error = [&](KernelRequest request) {
    return value_error_of([&] { cuda.check_supported(request); });
  };
  CHECK(mentions(error({at::kFloat, 64, true}), "dropout_p > 0 is not supported on CUDA yet"));
  CHECK(mentions(error({at::kDouble, 64, false}), "query dtype float64 is not supported on CUDA"));
  CHECK(mentions(error({at::kFloat, 30, false}), "head_dim (30) must be a multiple of 4"));
  CHECK(mentions(error({at::kHalf, 36, false}), "head_dim (36) must be a multiple of 8"));
  CHECK(error({at::kHalf, 64, false}).empty());
  CHECK(error({at::kBFloat16, 256, false}).empty());
  CHECK(error({at::kFloat, 36, false}).empty());
}
#else
TEST_CASE("this build has no CUDA kernels", "[device_kernels]") {
  CHECK(mentions(value_error_of([] { kernels_for(c10::DeviceType::CUDA); }),
                 "no kernels for device cuda"));
}
#endif
