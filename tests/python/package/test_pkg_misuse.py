"""Misuse of the modules raises ValueError at the first moment it can be seen, in the words
users' tests match: "Expected 3D tensors", "embedding dimension", and the op's own messages for
a configuration (softmax_scale included) at construction."""

import math
import warnings

import pytest
import torch

import dilated_attention_pytorch as dap
from helpers import deprecated_op

SEGS, RATES = [8, 16], [1, 2]
E, HEADS = 32, 4


def multihead(name, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if name == "MultiheadDilatedAttention":
            return dap.MultiheadDilatedAttention(E, HEADS, RATES, SEGS, **kwargs)
        return getattr(dap, name)(E, HEADS, SEGS, RATES, **kwargs)


MULTIHEAD = [
    pytest.param("MultiheadDilatedAttention", {}, id="multihead"),
    pytest.param("RingMultiheadDilatedAttention", {}, id="ring-multihead"),
    pytest.param("RingMultiheadDilatedAttention", {"layer_norm": True},
                 id="ring-multihead-layer-norm"),
    pytest.param("DistributedImprovedMultiheadDilatedAttention", {},
                 id="distributed-improved-multihead", marks=deprecated_op),
]


@pytest.mark.parametrize("name, kwargs", MULTIHEAD)
def test_four_dimensional_input_is_refused(name, kwargs):
    module = multihead(name, **kwargs)
    with pytest.raises(ValueError, match="Expected 3D tensors"):
        module(torch.randn(1, 16, HEADS, E // HEADS))


@pytest.mark.parametrize("name, kwargs", MULTIHEAD)
def test_wrong_embedding_size_is_refused(name, kwargs):
    module = multihead(name, **kwargs)
    with pytest.raises(ValueError, match="embedding dimension"):
        module(torch.randn(1, 16, E + 8))


def test_wrong_key_or_value_is_refused():
    module = multihead("MultiheadDilatedAttention")
    x = torch.randn(1, 16, E)
    with pytest.raises(ValueError, match="Expected 3D tensors"):
        module(x, torch.randn(16, E))
    with pytest.raises(ValueError, match="value has embedding dimension 24, expected 32"):
        module(x, x, torch.randn(1, 16, 24))


@pytest.mark.parametrize("name, kwargs", MULTIHEAD)
def test_embed_dim_zero_is_a_value_error(name, kwargs):
    with pytest.raises(ValueError, match="embed_dim must be positive, got 0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if name == "MultiheadDilatedAttention":
                dap.MultiheadDilatedAttention(0, HEADS, RATES, SEGS)
            else:
                getattr(dap, name)(0, HEADS, SEGS, RATES, **kwargs)


@pytest.mark.parametrize("name, kwargs", MULTIHEAD)
def test_num_heads_zero_is_a_value_error(name, kwargs):
    with pytest.raises(ValueError, match="num_heads must be positive, got 0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            if name == "MultiheadDilatedAttention":
                dap.MultiheadDilatedAttention(E, 0, RATES, SEGS)
            else:
                getattr(dap, name)(E, 0, SEGS, RATES, **kwargs)


DISTRIBUTED = [
    pytest.param(lambda **kw: dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES, **kw),
                 id="ring-v2"),
    pytest.param(lambda **kw: dap.RingMultiheadDilatedAttention(E, HEADS, SEGS, RATES, **kw),
                 id="ring-multihead"),
]


@pytest.mark.parametrize("build", DISTRIBUTED)
def test_process_group_of_the_wrong_type_is_a_value_error(build):
    with pytest.raises(ValueError, match="process_group must be a torch.distributed.ProcessGroup "
                                         "or None, got str"):
        build(process_group="x")


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("build", DISTRIBUTED + [
    pytest.param(lambda **kw: dap.DilatedAttention(SEGS, RATES, **kw), id="dilated-attention")])
def test_non_finite_softmax_scale_is_refused_at_construction(build, scale):
    with pytest.raises(ValueError, match="scale must be a finite number"):
        build(softmax_scale=scale)
