"""Every class and function of the spec is importable from the package and from its module (in
every build); each distributed class runs its op's row of the library's table of named ops (or,
where the build leaves that op out, says so on construction); the factories pick the documented
classes; the library is the one the tests point at."""

import importlib
import inspect
import os
import re
import warnings
from pathlib import Path

import pytest
import torch

import dilated_attention_pytorch as dap
from helpers import deprecated_op, deprecated_ops, named_op_table, op_row
from pkg_helpers import distributed_classes

SPEC_NAMES = {
    "dilated_attention": ["DilatedAttention"],
    "improved_dilated_attention": ["ImprovedDilatedAttention"],
    "multihead_dilated_attention": ["MultiheadDilatedAttention"],
    "ring_dilated_attention_hybrid_optimized_v2": [
        "RingDilatedAttentionHybridOptimizedV2", "RingDilatedAttention"],
    "ring_dilated_attention_hybrid_optimized": ["RingDilatedAttentionHybridOptimized"],
    "ring_dilated_attention_production": [
        "RingDilatedAttentionProduction", "RingAttentionConfig", "create_production_ring_attention"],
    "ring_multihead_dilated_attention": ["RingMultiheadDilatedAttention"],
    "ring_dilated_attention_v2_collective": ["RingDilatedAttentionV2Collective"],
    "ring_hilbert_dilated_attention": ["HilbertRingDilatedAttention"],
    "improved_distributed_dilated_attention": [
        "DistributedImprovedDilatedAttention", "DistributedImprovedMultiheadDilatedAttention"],
    "head_parallel_dilated_attention": ["HeadParallelDilatedAttention"],
    "factory": ["create_dilated_attention", "create_multihead_dilated_attention"],
}

SEGS, RATES = [8, 16], [1, 2]


@pytest.mark.parametrize("module_name,name", [
    (m, n) for m, names in SPEC_NAMES.items() for n in names])
def test_importable_from_package_and_module(module_name, name):
    module = importlib.import_module(f"dilated_attention_pytorch.{module_name}")
    from_module = getattr(module, name)
    from_package = getattr(dap, name)
    assert from_module is from_package
    assert name in dap.__all__


def test_star_import_exposes_all():
    namespace = {}
    exec("from dilated_attention_pytorch import *", namespace)
    for names in SPEC_NAMES.values():
        for name in names:
            assert name in namespace, name


def construct(cls):
    """The class with small valid arguments, its deprecation notice silenced."""
    first = list(inspect.signature(cls.__init__).parameters)[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if first == "config":
            return cls(dap.RingAttentionConfig(SEGS, RATES))
        if first == "embed_dim":
            return cls(32, 4, SEGS, RATES)
        return cls(SEGS, RATES)


def test_every_named_op_has_a_class():
    ops_of_classes = {cls.OP_NAME for cls in distributed_classes().values()}
    built = {r["name"] for r in named_op_table()}
    assert built <= ops_of_classes
    if deprecated_ops():  # the default build: the table has every op
        assert built == ops_of_classes


@pytest.mark.parametrize("name", list(distributed_classes()))
def test_distributed_class_runs_its_row_of_the_table(name):
    cls = getattr(dap, name)
    rows = {r["name"]: r for r in named_op_table()}
    if cls.OP_NAME not in rows:
        # Only a build without the deprecated ops leaves out the op of a package class; the
        # class is still there, and constructing it says why it cannot run.
        assert not deprecated_ops(), f"{name} runs {cls.OP_NAME!r}, which the table lacks"
        with pytest.raises(RuntimeError, match=re.escape(cls.OP_NAME) + ".*"
                           + "-DDILATED_ATTENTION_WITHOUT_DEPRECATED=ON"):
            construct(cls)
        return
    row = rows[cls.OP_NAME]
    module = construct(cls)
    assert (module.backend, module.contract) == (row["backend"], row["contract"])
    if row["deprecated_class"] is not None:
        assert cls.__name__ == row["deprecated_class"]


@deprecated_op
def test_every_deprecated_op_has_its_class():
    for op_name in deprecated_ops():
        cls = getattr(dap, op_row(op_name)["deprecated_class"])
        assert cls.OP_NAME == op_name


def test_ring_alias_is_the_v2_class():
    assert dap.RingDilatedAttention is dap.RingDilatedAttentionHybridOptimizedV2


def test_modules_are_nn_modules():
    for names in SPEC_NAMES.values():
        for name in names:
            obj = getattr(dap, name)
            if isinstance(obj, type) and name != "RingAttentionConfig":
                assert issubclass(obj, torch.nn.Module), name


def test_library_path_is_the_configured_library():
    expected = Path(os.environ["DILATED_ATTENTION_OPS_LIB"]).resolve()
    assert Path(dap.library_path()).resolve() == expected
    assert hasattr(torch.ops.dilated_attention, "dilated_attention")


@pytest.mark.parametrize("kind,cls", [
    ("standard", dap.DilatedAttention),
    ("improved", dap.ImprovedDilatedAttention),
    ("ring", dap.RingDilatedAttentionHybridOptimizedV2),
    ("auto", dap.ImprovedDilatedAttention),  # no process group: single device
])
def test_create_dilated_attention_kinds(kind, cls):
    module = dap.create_dilated_attention(kind, SEGS, RATES)
    assert type(module) is cls
    assert module.segment_lengths == SEGS and module.dilation_rates == RATES
    q, k, v = (torch.randn(1, 16, 2, 8, generator=torch.Generator().manual_seed(i))
               for i in range(3))
    expected = dap.DilatedAttention(SEGS, RATES)(q, k, v)
    torch.testing.assert_close(module(q, k, v), expected)


@pytest.mark.parametrize("kind", ["standard", "improved", "ring"])
def test_create_dilated_attention_passes_dropout(kind):
    module = dap.create_dilated_attention(kind, SEGS, RATES, dropout=0.25)
    assert module.dropout == 0.25


@pytest.mark.parametrize("kind,cls", [
    ("standard", dap.MultiheadDilatedAttention),
    ("improved", dap.MultiheadDilatedAttention),
    ("auto", dap.MultiheadDilatedAttention),
    ("ring", dap.RingMultiheadDilatedAttention),
])
def test_create_multihead_dilated_attention_kinds(kind, cls):
    module = dap.create_multihead_dilated_attention(kind, 32, 4, SEGS, RATES)
    assert type(module) is cls
    segs = module.attention.segment_lengths if cls is dap.MultiheadDilatedAttention \
        else module.segment_lengths
    rates = module.attention.dilation_rates if cls is dap.MultiheadDilatedAttention \
        else module.dilation_rates
    assert (segs, rates) == (SEGS, RATES)
    out = module(torch.randn(2, 16, 32))
    out = out[0] if isinstance(out, tuple) else out
    assert out.shape == (2, 16, 32)


@pytest.mark.parametrize("factory", [dap.create_dilated_attention,
                                     dap.create_multihead_dilated_attention])
def test_factories_reject_unknown_kind(factory):
    with pytest.raises(ValueError, match="kind must be one of auto, standard, improved, ring"):
        factory("flash")


def test_create_production_ring_attention_builds_config():
    module = dap.create_production_ring_attention(SEGS, RATES, dropout=0.1, softmax_scale=0.5)
    assert type(module) is dap.RingDilatedAttentionProduction
    assert module.segment_lengths == SEGS and module.dilation_rates == RATES
    assert module.dropout == 0.1 and module.softmax_scale == 0.5
    config = dap.RingAttentionConfig(SEGS, RATES)
    assert (config.dropout, config.ring_size) == (0.0, None)
