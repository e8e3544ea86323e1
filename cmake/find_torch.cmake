# Finds LibTorch and decides whether the CUDA kernels are built. Included once, from the
# top-level CMakeLists.txt.
# LibTorch: the torch of Python3_EXECUTABLE (re-read at every configure, so a build directory
# follows the interpreter that configures it), or a LibTorch tree given with
# -DDILATED_ATTENTION_TORCH_DIR=<dir with TorchConfig.cmake> (then Python is not needed).
set(DILATED_ATTENTION_TORCH_DIR "" CACHE PATH "LibTorch's CMake package dir (default: Python's torch)")
if(DILATED_ATTENTION_TORCH_DIR)
  set(Torch_DIR "${DILATED_ATTENTION_TORCH_DIR}" CACHE PATH "" FORCE)
  set(TORCH_CUDA_VERSION "")
else()
  find_package(Python3 COMPONENTS Interpreter REQUIRED)
  execute_process(
    COMMAND ${Python3_EXECUTABLE} -c
            "import torch; print(torch.utils.cmake_prefix_path); print(torch.version.cuda or '')"
    OUTPUT_VARIABLE TORCH_QUERY OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE TORCH_QUERY_FAILED)
  if(TORCH_QUERY_FAILED)
    message(FATAL_ERROR "${Python3_EXECUTABLE} cannot import torch; install it or pass "
                        "-DDILATED_ATTENTION_TORCH_DIR")
  endif()
  string(REPLACE "\n" ";" TORCH_QUERY "${TORCH_QUERY}")
  list(GET TORCH_QUERY 0 TORCH_CMAKE_PREFIX)
  list(LENGTH TORCH_QUERY TORCH_QUERY_LENGTH)
  set(TORCH_CUDA_VERSION "")
  if(TORCH_QUERY_LENGTH GREATER 1)
    list(GET TORCH_QUERY 1 TORCH_CUDA_VERSION)
  endif()
  set(Torch_DIR "${TORCH_CMAKE_PREFIX}/Torch" CACHE PATH "" FORCE)
  set(Caffe2_DIR "${TORCH_CMAKE_PREFIX}/Caffe2" CACHE PATH "" FORCE)
endif()
# A build directory configured again by another interpreter must not keep the first torch's
# libraries: TorchConfig and Caffe2Config find c10, torch, nvrtc, ... with find_library, whose
# results stay cached. Forget every cached file path under the previous torch's root.
get_filename_component(DILATED_ATTENTION_TORCH_ROOT "${Torch_DIR}/../../../.." ABSOLUTE)
if(DEFINED CACHE{DILATED_ATTENTION_CONFIGURED_TORCH_ROOT} AND
   NOT DILATED_ATTENTION_CONFIGURED_TORCH_ROOT STREQUAL DILATED_ATTENTION_TORCH_ROOT)
  get_cmake_property(cache_entries CACHE_VARIABLES)
  foreach(entry IN LISTS cache_entries)
    get_property(entry_type CACHE "${entry}" PROPERTY TYPE)
    get_property(entry_value CACHE "${entry}" PROPERTY VALUE)
    string(FIND "${entry_value}" "${DILATED_ATTENTION_CONFIGURED_TORCH_ROOT}/" old_root_at)
    if(entry_type STREQUAL "FILEPATH" AND old_root_at EQUAL 0)
      unset(${entry} CACHE)
    endif()
  endforeach()
endif()
set(DILATED_ATTENTION_CONFIGURED_TORCH_ROOT "${DILATED_ATTENTION_TORCH_ROOT}" CACHE INTERNAL "")
# CUDA kernels are built when the torch in use has CUDA (AUTO, decided at every configure); the
# CPU-only build stays as it is.
set(DILATED_ATTENTION_CUDA AUTO CACHE STRING "Build the CUDA kernels: AUTO, ON or OFF")
if(DILATED_ATTENTION_CUDA STREQUAL "AUTO")
  if(TORCH_CUDA_VERSION)
    set(DILATED_ATTENTION_WITH_CUDA ON)
  else()
    set(DILATED_ATTENTION_WITH_CUDA OFF)
  endif()
else()
  set(DILATED_ATTENTION_WITH_CUDA ${DILATED_ATTENTION_CUDA})
endif()
# A CUDA build of torch needs the toolkit's libraries found even when our CUDA kernels are not
# built (-DDILATED_ATTENTION_CUDA=OFF: CI's sanitizer and no-deprecated builds, which compile
# the CUDA sources the default build already compiled).
if(DILATED_ATTENTION_WITH_CUDA OR TORCH_CUDA_VERSION)
  include(cmake/cuda_toolkit.cmake)
endif()
find_package(Torch REQUIRED)
