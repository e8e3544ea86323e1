# The Python package's part of the build, for `pip install . --no-build-isolation`
# (scikit-build-core, see pyproject.toml). Included at the end of the top-level CMakeLists.txt.
#
# scikit-build-core configures with SKBUILD set and Python3_EXECUTABLE forced to the interpreter
# that runs pip, so the top-level CMakeLists.txt builds against that interpreter's torch. It then
# installs only the "python" component (install.components in pyproject.toml) into the wheel's
# platlib; the package's Python sources come from wheel.packages.
if(NOT SKBUILD)
  return()
endif()

# python/dilated_attention_pytorch/_library.py looks for the library next to itself.
install(TARGETS dilated_attention_ops
  LIBRARY DESTINATION dilated_attention_pytorch COMPONENT python)

# No RPATH in the installed library: it never points into the build tree or at the torch it was
# built against (both may be gone by the time it loads). The package loads it with
# torch.ops.load_library after `import torch`, which has already loaded libtorch, libtorch_cpu
# and libc10 (and libc10_cuda for a CUDA torch), so its DT_NEEDED entries resolve by soname to
# the torch of the process. The build-tree copy keeps its RPATH for the C++ tests and the bench.
set_target_properties(dilated_attention_ops PROPERTIES
  INSTALL_RPATH ""
  INSTALL_RPATH_USE_LINK_PATH OFF
  BUILD_WITH_INSTALL_RPATH OFF)
