"""The library's two builds: with the deprecated all_gather names (the default) they all exist;
built with -DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON they and their backends are gone, and the
recommended ops still work."""

import os
from pathlib import Path

import pytest
import torch

OPS = torch.ops.dilated_attention


def deprecated_ops_configured() -> bool:
    """What the build was configured with, read from the CMake cache beside the library."""
    library = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB",
                                  Path(__file__).resolve().parents[2] / "build" / "x.so"))
    cache = (library.parent / "CMakeCache.txt").read_text()
    return "DILATED_ATTENTION_WITHOUT_DEPRECATED:BOOL=ON" not in cache


DEPRECATED_OPS_BUILT = deprecated_ops_configured()
REMOVABLE_NAMES = [
    "ring_dilated_attention_v2_collective",
    "hilbert_ring_dilated_attention",
    "distributed_improved_dilated_attention",
    "distributed_improved_multihead_dilated_attention",
    "head_parallel_dilated_attention",
]
RECOMMENDED_NAMES = [
    "ring_dilated_attention_hybrid_optimized_v2",
    "ring_dilated_attention_hybrid_optimized",
    "ring_dilated_attention_production",
    "ring_multihead_dilated_attention",
]


def test_removable_names_follow_the_build_option():
    # One test, not parametrized: parameter ids would carry the names the no-deprecated build
    # deselects by (see conftest.py).
    for name in REMOVABLE_NAMES:
        assert hasattr(OPS, name) == DEPRECATED_OPS_BUILT, name


@pytest.mark.parametrize("name", RECOMMENDED_NAMES)
def test_recommended_names_exist_in_every_build(name):
    assert hasattr(OPS, name)


def test_legacy_backends_follow_the_build_option():
    q = torch.randn(1, 16, 2, 4, dtype=torch.float64)
    expected = OPS.dilated_attention(q, q, q, [8], [1])
    for legacy in ("all_gather", "replicated_rows", "replicated_heads"):
        call = lambda: OPS._distributed_dilated_attention(q, q, q, [8], [1], 0.0, False, None, "", legacy)  # noqa: E731
        if DEPRECATED_OPS_BUILT:
            torch.testing.assert_close(call(), expected, rtol=0, atol=1e-12)
        else:
            with pytest.raises(ValueError, match="DILATED_ATTENTION_WITHOUT_DEPRECATED"):
                call()


def test_v2_works_in_every_build():
    q = torch.randn(1, 16, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(
        OPS.ring_dilated_attention_hybrid_optimized_v2(q, q, q, [8], [1]),
        OPS.dilated_attention(q, q, q, [8], [1]), rtol=0, atol=1e-12)
