# Finds what a CUDA build of torch needs from the CUDA toolkit, for machines that carry nvcc
# (a CUDA toolkit without every library) next to a CUDA wheel of torch (which carries the rest).
if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
  # A100 and H100; override with -DTORCH_CUDA_ARCH_LIST=... or the environment variable.
  set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
endif()
if(NOT CUDA_TOOLKIT_ROOT_DIR)
  if(DEFINED ENV{CUDA_HOME})
    set(CUDA_TOOLKIT_ROOT_DIR "$ENV{CUDA_HOME}")
  elseif(EXISTS /usr/local/cuda)
    set(CUDA_TOOLKIT_ROOT_DIR /usr/local/cuda)
  endif()
endif()
if(NOT CMAKE_CUDA_COMPILER AND EXISTS "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc")
  set(CMAKE_CUDA_COMPILER "${CUDA_TOOLKIT_ROOT_DIR}/bin/nvcc")
endif()
enable_language(CUDA)

# The libraries of the nvidia-* wheels torch depends on (nvrtc among them).
execute_process(
  COMMAND ${Python3_EXECUTABLE} -c
          "import glob, os, torch; print(';'.join(glob.glob(os.path.join(os.path.dirname(torch.__file__), '..', 'nvidia', '*', 'lib')) + glob.glob(os.path.join(os.path.dirname(torch.__file__), '..', 'nvidia', '*', '*', 'lib'))))"
  OUTPUT_VARIABLE TORCH_NVIDIA_LIBRARY_DIRS OUTPUT_STRIP_TRAILING_WHITESPACE)
find_library(CUDA_nvrtc_LIBRARY
  NAMES nvrtc libnvrtc.so.13 libnvrtc.so.12
  HINTS "${CUDA_TOOLKIT_ROOT_DIR}/lib64" ${TORCH_NVIDIA_LIBRARY_DIRS})
# Headers of those libraries (cusparse.h, cublas_v2.h, ...) that ATen's CUDA headers include.
foreach(library_dir IN LISTS TORCH_NVIDIA_LIBRARY_DIRS)
  string(REGEX REPLACE "/lib$" "/include" include_dir "${library_dir}")
  include_directories(SYSTEM "${include_dir}")
endforeach()
