"""Grouped-query attention in the package's multi-head classes (num_key_value_heads): projection
shapes, the exact computation against a float64 reference built from the module's own weights
(outputs, input and parameter gradients), TorchScript, the default unchanged, bad values refused,
and modules pickled before the argument existed."""

import io
import pickle

import pytest
import torch

import dilated_attention_pytorch as dap
from pkg_helpers import (MULTIHEAD_TOL, compare_with_reference, multihead_reference, perturb_,
                         randn, ring_multihead_reference)

E, H, SEGS, RATES = 64, 8, [8, 16], [1, 2]


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_multihead_projects_key_value_to_the_shared_heads(kv_heads):
    module = dap.MultiheadDilatedAttention(E, H, RATES, SEGS, num_key_value_heads=kv_heads)
    kv_dim = kv_heads * E // H
    assert module.num_key_value_heads == kv_heads
    assert module.k_proj.weight.shape == (kv_dim, E) and module.v_proj.weight.shape == (kv_dim, E)
    assert module.k_ln.normalized_shape == (kv_dim,)
    assert module.q_proj.weight.shape == (E, E) and module.out_proj.weight.shape == (E, E)


def test_multihead_default_is_one_key_value_head_per_query_head():
    module = dap.MultiheadDilatedAttention(E, H, RATES, SEGS)
    assert module.num_key_value_heads == H
    assert module.k_proj.weight.shape == (E, E) and module.k_ln.normalized_shape == (E,)


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_multihead_matches_the_reference(dtype, is_causal, layer_norm):
    module = perturb_(dap.MultiheadDilatedAttention(E, H, RATES, SEGS, layer_norm=layer_norm,
                                                    dtype=dtype, num_key_value_heads=2))
    x, y = randn((2, 16, E), dtype, 1), randn((2, 16, E), dtype, 2)
    compare_with_reference(
        module, [x, y, y],
        lambda p, q, k, v: multihead_reference(p, q, k, v, H, SEGS, RATES, is_causal, layer_norm,
                                               num_key_value_heads=2),
        MULTIHEAD_TOL[dtype], call=lambda m, q, k, v: m(q, k, v, is_causal=is_causal))


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("is_causal", [False, True])
def test_ring_multihead_matches_the_reference(is_causal, layer_norm):
    module = perturb_(dap.RingMultiheadDilatedAttention(E, H, SEGS, RATES, layer_norm=layer_norm,
                                                        dtype=torch.float64,
                                                        num_key_value_heads=4))
    assert module.qkv_proj.weight.shape == (E + 2 * 4 * (E // H), E)
    x = randn((2, 16, E), torch.float64, 3)
    compare_with_reference(
        module, [x],
        lambda p, x: ring_multihead_reference(p, x, H, SEGS, RATES, is_causal, layer_norm,
                                              num_key_value_heads=4),
        MULTIHEAD_TOL[torch.float64], call=lambda m, x: m(x, is_causal=is_causal))


@pytest.mark.parametrize("make", [
    lambda: dap.MultiheadDilatedAttention(E, H, RATES, SEGS, num_key_value_heads=2),
    lambda: dap.RingMultiheadDilatedAttention(E, H, SEGS, RATES, num_key_value_heads=2),
], ids=["MultiheadDilatedAttention", "RingMultiheadDilatedAttention"])
def test_scripts_and_matches_eager(make):
    module = make()
    scripted = torch.jit.script(module)
    x = randn((1, 16, E), torch.float32, 4)
    eager = module(x, x, x) if isinstance(module, dap.MultiheadDilatedAttention) else module(x)[0]
    got = scripted(x, x, x) if isinstance(module, dap.MultiheadDilatedAttention) else scripted(x)[0]
    torch.testing.assert_close(got, eager)


@pytest.mark.parametrize("cls", [dap.MultiheadDilatedAttention, dap.RingMultiheadDilatedAttention])
@pytest.mark.parametrize("kv_heads, message", [
    (3, r"num_heads \(8\) must be divisible by num_key_value_heads \(3\)"),
    (0, "num_key_value_heads must be positive, got 0"),
    (16, r"num_heads \(8\) must be divisible by num_key_value_heads \(16\)"),
])
def test_bad_key_value_heads_are_refused(cls, kv_heads, message):
    args = (E, H, RATES, SEGS) if cls is dap.MultiheadDilatedAttention else (E, H, SEGS, RATES)
    with pytest.raises(ValueError, match=message):
        cls(*args, num_key_value_heads=kv_heads)


@pytest.mark.parametrize("cls", [dap.MultiheadDilatedAttention, dap.RingMultiheadDilatedAttention])
def test_modules_pickled_before_the_argument_load_with_shared_heads_off(cls):
    args = (E, H, RATES, SEGS) if cls is dap.MultiheadDilatedAttention else (E, H, SEGS, RATES)
    module = cls(*args)
    del module.num_key_value_heads  # as an older release pickled it
    restored = pickle.loads(pickle.dumps(module))
    assert restored.num_key_value_heads == H
    x = randn((1, 16, E), torch.float32, 5)
    out = restored(x)[0] if cls is dap.RingMultiheadDilatedAttention else restored(x, x, x)
    assert out.shape == x.shape
