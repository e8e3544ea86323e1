"""Puts the package (``<repo>/python``) and the shared test helpers (``tests/python``) on
sys.path and points the package at the built op library, before anything imports it.

The parent conftest (tests/python/conftest.py) has already loaded the library into torch and
set two intra-op threads; the package loads the same file again, which is a no-op.
"""

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
PACKAGE_ROOT = REPO_ROOT / "python"
TESTS_PYTHON = HERE.parent

for path in (str(HERE), str(TESTS_PYTHON), str(PACKAGE_ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

os.environ.setdefault(
    "DILATED_ATTENTION_OPS_LIB", str(REPO_ROOT / "build" / "libdilated_attention_ops.so")
)

import dilated_attention_pytorch  # noqa: E402  (after the environment is set)
from dilated_attention_pytorch import _deprecation  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_deprecation_registry():
    """Every test sees the deprecation notices as a fresh process would (once per class)."""
    _deprecation._warned.clear()
    yield
    _deprecation._warned.clear()


@pytest.fixture(scope="session")
def package():
    return dilated_attention_pytorch
