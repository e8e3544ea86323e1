"""key_padding_mask in the package: the attention classes, the ring classes (one process), the
multi-head classes and dilated_attention_pytorch.functional, each against the float64 reference
built from the module's own weights; attn_mask stays a clear error that points to it."""

import pytest
import torch

import dilated_attention_pytorch as dap
from pkg_helpers import (MULTIHEAD_TOL, compare_with_reference, multihead_reference, perturb_,
                         randn, ring_multihead_reference)
from reference import dilated_attention_reference

E, H, SEGS, RATES = 64, 8, [8, 16], [1, 2]


def mask_of(B, N, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=gen) < 0.3
    mask[0, :5] = True
    if B > 1:
        mask[1, 8:] = True
    return mask


@pytest.mark.parametrize("make", [
    lambda: dap.DilatedAttention(SEGS, RATES),
    lambda: dap.ImprovedDilatedAttention(SEGS, RATES),
    lambda: dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES),
    lambda: dap.RingDilatedAttentionHybridOptimized(SEGS, RATES),
    lambda: dap.create_production_ring_attention(SEGS, RATES),
], ids=["DilatedAttention", "ImprovedDilatedAttention", "RingV2", "RingFull", "Production"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_modules_honour_the_mask(make, is_causal):
    module = make()
    q, k, v = (randn((2, 16, 4, 8), torch.float64, s) for s in (1, 2, 3))
    k, v = k[:, :, :2], v[:, :, :2]  # grouped-query K/V too
    mask = mask_of(2, 16)
    out = module(q, k, v, is_causal, key_padding_mask=mask)
    ref = dilated_attention_reference(q, k, v, SEGS, RATES, is_causal, None, mask)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("is_causal", [False, True])
def test_functional_dilated_attention(is_causal):
    q, k, v = (randn((2, 16, 4, 8), torch.float64, s).requires_grad_() for s in (4, 5, 6))
    mask = mask_of(2, 16, 1)
    out = dap.functional.dilated_attention(q, k, v, SEGS, RATES, is_causal=is_causal, scale=0.5,
                                           key_padding_mask=mask)
    ref = dilated_attention_reference(q, k, v, SEGS, RATES, is_causal, 0.5, mask)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    expected = torch.autograd.grad(ref.sum(), (q, k, v))
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)
    unmasked = dap.functional.dilated_attention(q, k, v, (8, 16), (1, 2))
    torch.testing.assert_close(unmasked, torch.ops.dilated_attention.dilated_attention(
        q, k, v, [8, 16], [1, 2]))


@pytest.mark.parametrize("kv_heads", [None, 2])
@pytest.mark.parametrize("is_causal", [False, True])
def test_multihead_honours_the_mask(is_causal, kv_heads):
    module = perturb_(dap.MultiheadDilatedAttention(E, H, RATES, SEGS, dtype=torch.float64,
                                                    num_key_value_heads=kv_heads))
    x, y = randn((2, 16, E), torch.float64, 1), randn((2, 16, E), torch.float64, 2)
    mask = mask_of(2, 16, 2)
    compare_with_reference(
        module, [x, y, y],
        lambda p, q, k, v: multihead_reference(p, q, k, v, H, SEGS, RATES, is_causal,
                                               num_key_value_heads=kv_heads,
                                               key_padding_mask=mask),
        MULTIHEAD_TOL[torch.float64],
        call=lambda m, q, k, v: m(q, k, v, key_padding_mask=mask, is_causal=is_causal))


@pytest.mark.parametrize("variant", [dict(), dict(layer_norm=True), dict(num_key_value_heads=4)],
                         ids=["fused", "layer_norm", "gqa"])
def test_ring_multihead_honours_the_mask(variant):
    module = perturb_(dap.RingMultiheadDilatedAttention(E, H, SEGS, RATES, dtype=torch.float64,
                                                        **variant))
    x = randn((2, 16, E), torch.float64, 3)
    mask = mask_of(2, 16, 3)
    compare_with_reference(
        module, [x],
        lambda p, x: ring_multihead_reference(p, x, H, SEGS, RATES, True,
                                              variant.get("layer_norm", False),
                                              num_key_value_heads=variant.get(
                                                  "num_key_value_heads"),
                                              key_padding_mask=mask),
        MULTIHEAD_TOL[torch.float64],
        call=lambda m, x: m(x, is_causal=True, key_padding_mask=mask))


def test_attention_mask_points_to_key_padding_mask():
    q = randn((1, 16, 4, 8), torch.float32, 0)
    with pytest.raises(ValueError, match="attention_mask is not supported.*key_padding_mask="):
        dap.DilatedAttention(SEGS, RATES)(q, q, q, attention_mask=torch.zeros(16, 16))


def test_scripted_multihead_with_a_mask():
    module = dap.MultiheadDilatedAttention(E, H, RATES, SEGS)
    scripted = torch.jit.script(module)
    x = randn((2, 16, E), torch.float32, 4)
    mask = mask_of(2, 16, 4)
    torch.testing.assert_close(scripted(x, x, x, key_padding_mask=mask),
                               module(x, x, x, key_padding_mask=mask))
