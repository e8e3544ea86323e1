"""Module plumbing users rely on: copies and whole-module pickles, empty inputs, low-precision
inputs, the softmax_scale extension of the ring modules, reprs."""

import copy
import io
import warnings

import pytest
import torch

import dilated_attention_pytorch as dap
from helpers import TOLERANCES, deprecated_op, make_qkv
from pkg_helpers import MULTIHEAD_TOL, compare_with_reference, randn, ring_multihead_reference
from reference import dilated_attention_reference

SEGS, RATES = [8, 16], [1, 2]

MODULES = {
    "DilatedAttention": lambda: dap.DilatedAttention(SEGS, RATES, softmax_scale=0.2),
    "RingDilatedAttentionHybridOptimizedV2":
        lambda: dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES),
    "RingDilatedAttentionProduction":
        lambda: dap.create_production_ring_attention(SEGS, RATES),
    "MultiheadDilatedAttention": lambda: dap.MultiheadDilatedAttention(32, 4, RATES, SEGS),
    "RingMultiheadDilatedAttention":
        lambda: dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES, layer_norm=True),
}


def call(module):
    if isinstance(module, (dap.MultiheadDilatedAttention, dap.RingMultiheadDilatedAttention)):
        out = module(randn((1, 16, 32), torch.float32, 0))
        return out[0] if isinstance(out, tuple) else out
    return module(*make_qkv((1, 16, 4, 8), torch.float32), True)


@pytest.mark.parametrize("name", list(MODULES))
def test_deepcopy_and_whole_module_pickle(name):
    module = MODULES[name]().eval()
    expected = call(module)
    torch.testing.assert_close(call(copy.deepcopy(module)), expected, atol=0, rtol=0)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is type(module)
    torch.testing.assert_close(call(loaded), expected, atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(0, 16, 2, 8), (1, 0, 2, 8)])
def test_empty_inputs(shape):
    q = torch.randn(shape, requires_grad=True)
    out = dap.DilatedAttention(SEGS, RATES)(q, q, q)
    assert out.shape == shape
    out.sum().backward()
    assert q.grad.shape == shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["DilatedAttention", "RingDilatedAttentionHybridOptimizedV2"])
def test_low_precision_forward(name, dtype):
    q, k, v = make_qkv((1, 16, 4, 8), dtype, seed=2)
    module = MODULES[name]()
    out = module(q, k, v, True)
    assert out.dtype == dtype
    expected = dilated_attention_reference(q, k, v, SEGS, RATES, True, module.softmax_scale)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ring_multihead_softmax_scale(layer_norm):
    module = dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES, layer_norm=layer_norm,
                                               softmax_scale=0.15, dtype=torch.float64)
    x = randn((2, 16, 32), torch.float64, 1)
    compare_with_reference(
        module, [x], lambda p, x: ring_multihead_reference(p, x, 4, SEGS, RATES, True, layer_norm,
                                                           scale=0.15),
        MULTIHEAD_TOL[torch.float64], call=lambda m, x: m(x, is_causal=True))


def test_reprs_name_the_configuration():
    assert "segment_lengths=[8, 16], dilation_rates=[1, 2]" in repr(MODULES["DilatedAttention"]())
    assert "segment_lengths=[8, 16]" in repr(MODULES["RingDilatedAttentionHybridOptimizedV2"]())


@deprecated_op
def test_repr_of_a_deprecated_class_names_the_configuration():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert "dilation_rates=[1, 2]" in repr(dap.RingDilatedAttentionV2Collective(SEGS, RATES))
