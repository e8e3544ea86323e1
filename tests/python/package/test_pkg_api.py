"""Every class and function of the spec is importable from the package and from its module;
the factories pick the documented classes; the library is the one the tests point at."""

import importlib
import os
from pathlib import Path

import pytest
import torch

import dilated_attention_pytorch as dap

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
