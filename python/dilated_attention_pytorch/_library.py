"""Loads libdilated_attention_ops.so once, so ``torch.ops.dilated_attention`` is ready.

Where the library comes from, first match wins:
1. ``DILATED_ATTENTION_OPS_LIB``: an explicit path (a source build, a custom build);
2. the copy installed inside this package by ``pip install .``;
3. ``build/libdilated_attention_ops.so`` of the source checkout this package sits in.
"""

import os
from pathlib import Path

import torch

LIBRARY_NAME = "libdilated_attention_ops.so"
ENV_VAR = "DILATED_ATTENTION_OPS_LIB"

_loaded_from = None


def _candidates():
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        yield Path(explicit)
        return
    here = Path(__file__).resolve().parent
    yield here / LIBRARY_NAME
    yield here.parents[1] / "build" / LIBRARY_NAME


def library_path() -> Path:
    """The library this process loaded (loading it first if needed)."""
    load_library()
    return _loaded_from


def load_library() -> None:
    global _loaded_from
    if _loaded_from is not None:
        return
    tried = []
    for candidate in _candidates():
        if candidate.is_file():
            torch.ops.load_library(str(candidate))
            _loaded_from = candidate
            return
        tried.append(str(candidate))
    raise ImportError(
        f"dilated_attention_pytorch: {LIBRARY_NAME} not found (looked at {', '.join(tried)}). "
        f"Install the package with `pip install . --no-build-isolation`, or build the project "
        f"(`bash scripts/setup.sh`) and set {ENV_VAR} to the built library."
    )
