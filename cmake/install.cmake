# install() rules and the exported CMake package, so a LibTorch program elsewhere does
#   find_package(dilated_attention_ops REQUIRED)
#   target_link_libraries(app PRIVATE dilated_attention_ops::dilated_attention_ops)
# (tests/consumer is such a program; CI builds it against an installed tree).
include(CMakePackageConfigHelpers)

set(DILATED_ATTENTION_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/dilated_attention_ops")

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
