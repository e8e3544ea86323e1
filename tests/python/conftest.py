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


# Built with -DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON, the library leaves out the deprecated
# all_gather op names and backends (the notice's final removal step). Tests of those are then
# deselected (not skipped: test_without_deprecated.py checks that they are really gone instead).
DEPRECATED_OPS_BUILT = hasattr(torch.ops.dilated_attention, "ring_dilated_attention_v2_collective")
DEPRECATED_WORDS = (
    "v2_collective", "V2Collective", "hilbert", "Hilbert", "distributed_improved",
    "DistributedImproved", "head_parallel", "HeadParallel", "deprecat", "Deprecat",
    "all_gather", "replicated", "migration",
    # Tests that run deprecated names inside a shared worker or beside the recommended ones:
    "test_pkg_distributed.py", "test_exact_bytes", "test_every_call_warns_under_warn_always",
    "test_canonical_names_never_warn", "test_nothing_else_warns",
)


def pytest_collection_modifyitems(config, items):
    if DEPRECATED_OPS_BUILT:
        return
    removed = [item for item in items if any(word in item.nodeid for word in DEPRECATED_WORDS)]
    if removed:
        config.hook.pytest_deselected(items=removed)
        items[:] = [item for item in items if item not in removed]
