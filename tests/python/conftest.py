"""Loads the dilated attention op library once for the whole test session."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LIB = REPO_ROOT / "build" / "libdilated_attention_ops.so"
LIB_PATH = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", DEFAULT_LIB)).resolve()

if not LIB_PATH.is_file():
    raise RuntimeError(
        f"op library not found at {LIB_PATH}; build it (cmake --build build) "
        "or point DILATED_ATTENTION_OPS_LIB at it"
    )

torch.ops.load_library(str(LIB_PATH))
torch.set_num_threads(2)


def pytest_configure(config):
    # torch.jit itself (also used inside torch.compile) warns that it is deprecated.
    config.addinivalue_line(
        "filterwarnings", r"ignore:`torch\.jit\.script.*` is deprecated:DeprecationWarning"
    )


@pytest.fixture(scope="session")
def lib_path():
    return LIB_PATH


@pytest.fixture(scope="session")
def op():
    return torch.ops.dilated_attention.dilated_attention
