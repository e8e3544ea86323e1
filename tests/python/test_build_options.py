"""The library's two builds and its table of named ops.

The table (`named_op_table()`, from which the registration, the deprecation notices, the
package's classes and the test matrix derive) is checked here against an explicit list, written
from the README's tables, so a wrong table fails a test however the rest derives from it. With
the deprecated all_gather names (the default build) they all exist; built with
-DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON they and their backends are gone, and the recommended
ops still work. Every test here runs in both builds."""

import os
from pathlib import Path

import pytest
import torch

from helpers import backends_with, deprecated_ops, named_op_table, ops_with, recommended_ops

OPS = torch.ops.dilated_attention


def deprecated_ops_configured() -> bool:
    """What the build was configured with, read from the CMake cache beside the library."""
    library = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB",
                                  Path(__file__).resolve().parents[2] / "build" / "x.so"))
    cache = (library.parent / "CMakeCache.txt").read_text()
    return "DILATED_ATTENTION_WITHOUT_DEPRECATED:BOOL=ON" not in cache


DEPRECATED_OPS_BUILT = deprecated_ops_configured()

# The README's tables ("Distributed ops", "Migration from the deprecated all_gather ops"):
# (name, signature, backend, contract, deprecated class).
EXPECTED_TABLE = [
    ("ring_dilated_attention_hybrid_optimized_v2", "attention", "segment_ring", "sharded", None),
    ("ring_dilated_attention_hybrid_optimized", "attention", "full_ring", "sharded", None),
    ("ring_dilated_attention_production", "attention", "segment_ring_checked", "sharded", None),
    ("ring_multihead_dilated_attention", "fused_self_attention", "segment_ring", "sharded", None),
    ("ring_dilated_attention_v2_collective", "attention", "all_gather", "sharded",
     "RingDilatedAttentionV2Collective"),
    ("hilbert_ring_dilated_attention", "attention", "all_gather", "sharded",
     "HilbertRingDilatedAttention"),
    ("distributed_improved_dilated_attention", "attention", "replicated_rows", "replicated",
     "DistributedImprovedDilatedAttention"),
    ("distributed_improved_multihead_dilated_attention", "projected", "replicated_rows",
     "replicated", "DistributedImprovedMultiheadDilatedAttention"),
    ("head_parallel_dilated_attention", "attention", "replicated_heads", "replicated",
     "HeadParallelDilatedAttention"),
]
EXPECTED_RECOMMENDED = [row[0] for row in EXPECTED_TABLE if row[4] is None]
EXPECTED_DEPRECATED = [row[0] for row in EXPECTED_TABLE if row[4] is not None]
# Backends that only deprecated names use: the build without them leaves them out.
LEGACY_BACKENDS = sorted({row[2] for row in EXPECTED_TABLE if row[4] is not None}
                         - {row[2] for row in EXPECTED_TABLE if row[4] is None})


def test_named_op_table_is_the_documented_one():
    expected = [row for row in EXPECTED_TABLE if DEPRECATED_OPS_BUILT or row[4] is None]
    rows = OPS.named_op_table()
    assert [(r["name"], r["signature"], r["backend"], r["contract"], r["deprecated_class"])
            for r in rows] == expected
    for r in rows:
        assert set(r) == {"name", "signature", "backend", "contract", "deprecated_class",
                          "deprecation_warning"}, r
        # The notice's exact text is checked (against its own copy) by the warning tests.
        if r["deprecated_class"] is None:
            assert r["deprecation_warning"] is None, r
        else:
            assert r["deprecation_warning"].startswith(f"{r['deprecated_class']} is deprecated. ")


def test_test_matrix_is_the_table():
    """The helpers the other tests parametrise with select what the table says."""
    assert [r["name"] for r in named_op_table()] == ops_with()
    assert recommended_ops() == EXPECTED_RECOMMENDED
    assert deprecated_ops() == (EXPECTED_DEPRECATED if DEPRECATED_OPS_BUILT else [])
    assert ops_with(signature="attention", contract="sharded", deprecated=False) == [
        "ring_dilated_attention_hybrid_optimized_v2", "ring_dilated_attention_hybrid_optimized",
        "ring_dilated_attention_production"]
    built_backends = {row[2] for row in EXPECTED_TABLE if DEPRECATED_OPS_BUILT or row[4] is None}
    assert set(backends_with()) == built_backends
    assert LEGACY_BACKENDS == ["all_gather", "replicated_heads", "replicated_rows"]


@pytest.mark.parametrize("name", EXPECTED_DEPRECATED)
def test_deprecated_names_follow_the_build_option(name):
    assert hasattr(OPS, name) == DEPRECATED_OPS_BUILT, name


@pytest.mark.parametrize("name", EXPECTED_RECOMMENDED)
def test_recommended_names_exist_in_every_build(name):
    assert hasattr(OPS, name)


@pytest.mark.parametrize("legacy", LEGACY_BACKENDS)
def test_legacy_backends_follow_the_build_option(legacy):
    q = torch.randn(1, 16, 2, 4, dtype=torch.float64)
    expected = OPS.dilated_attention(q, q, q, [8], [1])
    call = lambda: OPS._distributed_dilated_attention(q, q, q, [8], [1], 0.0, False, None, "", legacy)  # noqa: E731
    if DEPRECATED_OPS_BUILT:
        torch.testing.assert_close(call(), expected, rtol=0, atol=1e-12)
    else:
        with pytest.raises(ValueError, match="DILATED_ATTENTION_WITHOUT_DEPRECATED"):
            call()


@pytest.mark.parametrize("backend", sorted({row[2] for row in EXPECTED_TABLE if row[4] is None}))
def test_recommended_backends_work_in_every_build(backend):
    q = torch.randn(1, 16, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(
        OPS._distributed_dilated_attention(q, q, q, [8], [1], 0.0, False, None, "", backend),
        OPS.dilated_attention(q, q, q, [8], [1]), rtol=0, atol=1e-12)


def test_v2_works_in_every_build():
    q = torch.randn(1, 16, 2, 4, dtype=torch.float64)
    torch.testing.assert_close(
        OPS.ring_dilated_attention_hybrid_optimized_v2(q, q, q, [8], [1]),
        OPS.dilated_attention(q, q, q, [8], [1]), rtol=0, atol=1e-12)


def test_unknown_backend_error_lists_what_this_build_accepts():
    q = torch.randn(1, 16, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="backend must be one of") as error:
        OPS._distributed_dilated_attention(q, q, q, [8], [1], 0.0, False, None, "", "no_such")
    listed = str(error.value).split("backend must be one of ")[1].split(", got")[0].split(", ")
    # ring_longnet_attention's backend, an op of its own outside the named ops' table.
    expected = {row[2] for row in EXPECTED_TABLE if DEPRECATED_OPS_BUILT or row[4] is None}
    expected.add("longnet_segment_ring")
    assert set(listed) == expected
