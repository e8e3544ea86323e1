# install() rules and the exported CMake package, so a LibTorch program elsewhere does
#   find_package(dilated_attention_ops REQUIRED)
#   target_link_libraries(app PRIVATE dilated_attention_ops::dilated_attention_ops)
# (tests/consumer is such a program; CI builds it against an installed tree).
include(CMakePackageConfigHelpers)

set(DILATED_ATTENTION_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/dilated_attention_ops")

# The installed library finds the LibTorch it was built against, as the program that links it
# does through TorchConfig: a CUDA torch lists c10_cuda by name, so a program that needs none of
# its symbols does not load it for the library. (The Python package's copy has no run path at
# all, cmake/python_package.cmake, since `import torch` has loaded those libraries first.)
set_target_properties(dilated_attention_ops PROPERTIES INSTALL_RPATH "${TORCH_INSTALL_PREFIX}/lib")
install(TARGETS dilated_attention_ops
  EXPORT dilated_attention_ops_targets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT development)
install(DIRECTORY include/dilated_attention
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT development)
install(EXPORT dilated_attention_ops_targets
  NAMESPACE dilated_attention_ops::
  FILE dilated_attention_opsTargets.cmake
  DESTINATION ${DILATED_ATTENTION_CMAKE_DIR} COMPONENT development)

configure_package_config_file(
  ${PROJECT_SOURCE_DIR}/cmake/dilated_attention_opsConfig.cmake.in
  ${PROJECT_BINARY_DIR}/dilated_attention_opsConfig.cmake
  INSTALL_DESTINATION ${DILATED_ATTENTION_CMAKE_DIR})
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/dilated_attention_opsConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/dilated_attention_opsConfig.cmake
  ${PROJECT_BINARY_DIR}/dilated_attention_opsConfigVersion.cmake
  DESTINATION ${DILATED_ATTENTION_CMAKE_DIR} COMPONENT development)
