#include "kernels/device_kernels.h"

#include <c10/util/Exception.h>

#include <array>

namespace dilated_attention {
namespace {

using Registry =
    std::array<DeviceKernels, static_cast<size_t>(c10::DeviceType::COMPILE_TIME_MAX_DEVICE_TYPES)>;

// A function-local static, so registrations from other files' static initialisers always find
// it constructed.
Registry& registry() {
  static Registry kernels{};
  return kernels;
}

}  // namespace

const DeviceKernels& kernels_for(c10::DeviceType device) {
  const auto& kernels = registry()[static_cast<size_t>(device)];
  TORCH_CHECK_VALUE(kernels.forward != nullptr, "dilated_attention has no kernels for device ",
                    c10::DeviceTypeName(device, /*lower_case=*/true), " in this build");
  return kernels;
}

DeviceKernelsRegistration::DeviceKernelsRegistration(c10::DeviceType device,
                                                     const DeviceKernels& kernels) {
  TORCH_INTERNAL_ASSERT(kernels.forward && kernels.backward && kernels.merge &&
                        kernels.check_supported);
  registry()[static_cast<size_t>(device)] = kernels;
}

}  // namespace dilated_attention
