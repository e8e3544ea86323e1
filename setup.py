"""Builds libdilated_attention_ops.so with the project's CMake and ships it inside the package.

Use `pip install . --no-build-isolation` so the library is built against the torch already
installed (its headers and libraries are what the custom ops link to).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
LIBRARY = "libdilated_attention_ops.so"


class BuildWithCMake(build_py):
    def run(self):
        super().run()
        build_dir = Path(os.environ.get("DILATED_ATTENTION_PIP_BUILD_DIR", ROOT / "build" / "pip"))
        configure = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DDILATED_ATTENTION_BUILD_TESTS=OFF", "-DDILATED_ATTENTION_BUILD_BENCH=OFF",
        ]
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        subprocess.check_call(configure)
        subprocess.check_call(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 1)])
        target = Path(self.build_lib) / "dilated_attention_pytorch"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build_dir / LIBRARY, target / LIBRARY)


class BinaryDistribution(Distribution):
    """The package carries a compiled library: wheels are platform-specific."""

    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithCMake}, distclass=BinaryDistribution)
