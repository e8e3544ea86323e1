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
# Two threads, as CI's machine has; DILATED_ATTENTION_TEST_THREADS runs a suite with more (the
# fused kernel's choices depend on the thread count: test_fused_cpu_attention.py).
torch.set_num_threads(int(os.environ.get("DILATED_ATTENTION_TEST_THREADS", "2")))

from helpers import deprecated_ops_built  # noqa: E402  (after the library is loaded)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "deprecated_op: exercises a deprecated named op, its class, or a backend only deprecated "
        "ops use; deselected where the library's named-op table has no deprecated rows",
    )
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
# all_gather op names and backends (the notice's final removal step), and its table of named ops
# (helpers.named_op_table) has no deprecated rows. Parametrisations over the table then have no
# deprecated parameters, and the tests marked `deprecated_op` are deselected (not skipped:
# test_build_options.py checks that the names and backends are really gone instead).


def pytest_collection_modifyitems(config, items):
    if deprecated_ops_built():
        return
    removed = [item for item in items if item.get_closest_marker("deprecated_op")]
    if removed:
        config.hook.pytest_deselected(items=removed)
        items[:] = [item for item in items if item not in removed]
