"""MultiheadDilatedAttention, RingMultiheadDilatedAttention and the deprecated
DistributedImprovedMultiheadDilatedAttention: exact state_dict names, the exact computation against
a float64 reference built from the module's own weights (outputs, input and parameter gradients),
argument handling, initialisation and the head_dim warnings."""

import math
import re
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import dilated_attention_pytorch as dap
from helpers import deprecated_op
from pkg_helpers import (MULTIHEAD_TOL, api_params, compare_with_reference, multihead_reference,
                         perturb_, randn, ring_multihead_reference)
from reference import dilated_attention_reference

SEGS, RATES = [8, 16], [1, 2]


# --------------------------------------------------------------------------------------------
# MultiheadDilatedAttention


def test_multihead_state_dict_keys():
    module = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS)
    assert list(module.state_dict()) == [
        "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
        "v_proj.weight", "v_proj.bias", "q_ln.weight", "q_ln.bias", "k_ln.weight", "k_ln.bias",
        "out_proj.weight", "out_proj.bias"]
    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert shapes["q_proj.weight"] == (32, 32) and shapes["q_ln.weight"] == (32,)


def test_multihead_state_dict_keys_without_bias_and_layer_norm():
    module = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS, bias=False, layer_norm=False)
    assert sorted(module.state_dict()) == sorted(
        ["q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight"])


def test_multihead_load_state_dict_round_trip():
    a = perturb_(dap.MultiheadDilatedAttention(32, 4, RATES, SEGS))
    b = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS)
    b.load_state_dict(a.state_dict(), strict=True)
    x = randn((1, 16, 32), torch.float32, 0)
    torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layer_norm,bias,causal", [(True, True, False), (True, True, True),
                                                    (False, True, True), (True, False, False)])
def test_multihead_self_attention_matches_reference(dtype, layer_norm, bias, causal):
    module = perturb_(dap.MultiheadDilatedAttention(
        32, 4, [1, 2, 4], [8, 16, 32], bias=bias, layer_norm=layer_norm, layer_norm_eps=1e-4,
        dtype=dtype))
    assert all(p.dtype == dtype for p in module.parameters())
    x = randn((2, 32, 32), dtype, 1)
    reference = lambda p, x: multihead_reference(p, x, x, x, 4, [8, 16, 32], [1, 2, 4], causal,
                                                 layer_norm, 1e-4)
    compare_with_reference(module, [x], reference, MULTIHEAD_TOL[dtype],
                           call=lambda m, x: m(x, is_causal=causal))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_multihead_cross_attention_matches_reference(dtype):
    module = perturb_(dap.MultiheadDilatedAttention(32, 4, RATES, SEGS, dtype=dtype), seed=1)
    q, k, v = (randn((2, 16, 32), dtype, s) for s in (2, 3, 4))
    reference = lambda p, q, k, v: multihead_reference(p, q, k, v, 4, SEGS, RATES)
    compare_with_reference(module, [q, k, v], reference, MULTIHEAD_TOL[dtype])


def test_multihead_key_defaults_value_to_key():
    """key=None uses query; value=None uses key (nn.MultiheadAttention-style positional call)."""
    module = perturb_(dap.MultiheadDilatedAttention(32, 4, RATES, SEGS, dtype=torch.float64))
    q, k = randn((1, 16, 32), torch.float64, 5), randn((1, 16, 32), torch.float64, 6)
    torch.testing.assert_close(module(q), module(q, q, q), atol=0, rtol=0)
    torch.testing.assert_close(module(q, k), module(q, k, k), atol=0, rtol=0)


def test_multihead_applies_q_ln_twice():
    """The merged heads go through q_ln again before out_proj (as upstream checkpoints expect):
    the module matches the reference with the second q_ln and differs from one without it."""
    module = perturb_(dap.MultiheadDilatedAttention(16, 2, [1], [8], dtype=torch.float64))
    x = randn((1, 8, 16), torch.float64, 7)
    p = {n: t.detach() for n, t in module.named_parameters()}
    with_second = multihead_reference(p, x, x, x, 2, [8], [1])
    # Without the second q_ln: out_proj applied to the raw merged heads.
    q = F.layer_norm(F.linear(x, p["q_proj.weight"], p["q_proj.bias"]), (16,), p["q_ln.weight"],
                     p["q_ln.bias"]).unflatten(-1, (2, 8))
    k = F.layer_norm(F.linear(x, p["k_proj.weight"], p["k_proj.bias"]), (16,), p["k_ln.weight"],
                     p["k_ln.bias"]).unflatten(-1, (2, 8))
    v = F.linear(x, p["v_proj.weight"], p["v_proj.bias"]).unflatten(-1, (2, 8))
    merged = dilated_attention_reference(q, k, v, [8], [1]).flatten(-2)
    without_second = F.linear(merged, p["out_proj.weight"], p["out_proj.bias"])
    got = module(x)
    torch.testing.assert_close(got, with_second, atol=1e-10, rtol=1e-10)
    assert not torch.allclose(got, without_second, atol=1e-3)


def test_multihead_positional_argument_order():
    """dilation_rates comes before segment_lengths."""
    module = dap.MultiheadDilatedAttention(32, 4, [1, 2], [8, 16], 0.1, False, False, 1e-6, 0.5)
    assert module.attention.dilation_rates == [1, 2]
    assert module.attention.segment_lengths == [8, 16]
    assert module.attention.dropout == 0.1
    assert module.q_proj.bias is None and isinstance(module.q_ln, torch.nn.Identity)
    module = dap.MultiheadDilatedAttention(32, 4, [1, 2], [8, 16], layer_norm_eps=1e-3)
    assert module.q_ln.eps == 1e-3 and module.k_ln.eps == 1e-3


def test_multihead_need_weights_returns_tuple():
    module = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS)
    x = randn((1, 16, 32), torch.float32, 0)
    plain = module(x)
    assert isinstance(plain, torch.Tensor) and plain.shape == (1, 16, 32)
    out, weights = module(x, need_weights=True)
    assert weights is None
    torch.testing.assert_close(out, plain, atol=0, rtol=0)
    out, weights = module(x, need_weights=True, average_attn_weights=False)
    assert weights is None


def test_multihead_attn_mask_is_refused_pointing_to_key_padding_mask():
    module = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS)
    x = randn((1, 16, 32), torch.float32, 0)
    with pytest.raises(ValueError, match="attn_mask is not supported.*key_padding_mask="):
        module(x, attn_mask=torch.zeros(16, 16, dtype=torch.bool))


def test_multihead_dropout_only_in_training():
    module = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS, dropout=0.5)
    plain = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS)
    plain.load_state_dict(module.state_dict())
    x = randn((1, 16, 32), torch.float32, 0)
    assert not torch.allclose(module(x), plain(x))
    module.eval()
    torch.testing.assert_close(module(x), plain(x), atol=0, rtol=0)


def test_multihead_dtype_and_device_arguments():
    module = dap.MultiheadDilatedAttention(32, 4, RATES, SEGS, device="cpu", dtype=torch.float64)
    assert {p.dtype for p in module.parameters()} == {torch.float64}
    out = module(randn((1, 16, 32), torch.float64, 0))
    assert out.dtype == torch.float64


@pytest.mark.parametrize("cls", api_params(["MultiheadDilatedAttention",
                                             "RingMultiheadDilatedAttention",
                                             "DistributedImprovedMultiheadDilatedAttention"]))
def test_embed_dim_must_divide(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match=re.escape(
                "embed_dim (60) must be divisible by num_heads (8)")):
            build_multihead(cls, 60, 8)


def build_multihead(cls, embed_dim, num_heads, **kwargs):
    if cls == "MultiheadDilatedAttention":
        return dap.MultiheadDilatedAttention(embed_dim, num_heads, RATES, SEGS, **kwargs)
    return getattr(dap, cls)(embed_dim, num_heads, SEGS, RATES, **kwargs)


@pytest.mark.parametrize("cls", ["MultiheadDilatedAttention", "RingMultiheadDilatedAttention"])
def test_head_dim_warnings(cls):
    with pytest.warns(UserWarning, match="should be divisible by 8") as record:
        build_multihead(cls, 48, 4)  # head_dim 12
    assert record[0].filename == __file__  # points at the caller
    with pytest.warns(UserWarning, match=r"head_dim \(embed_dim / num_heads = 256\) should be <= "
                                         r"128"):
        build_multihead(cls, 512, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_multihead(cls, 64, 4)  # head_dim 16: silent
        build_multihead(cls, 256, 2)  # head_dim 128: silent


def _check_xavier_normal(weight, gain):
    fan_out, fan_in = weight.shape
    expected_std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    w = weight.detach().double()
    assert abs(w.mean().item()) < 0.05 * expected_std
    assert abs(w.std().item() / expected_std - 1) < 0.05
    # Normal, not uniform: a uniform of that std never exceeds sqrt(3) std.
    assert w.abs().max().item() > 1.5 * math.sqrt(3) * expected_std


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_multihead_initialisation(gamma):
    torch.manual_seed(0)
    module = dap.MultiheadDilatedAttention(256, 8, RATES, SEGS, gamma_init=gamma)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        proj = getattr(module, name)
        _check_xavier_normal(proj.weight, gamma)
        assert torch.count_nonzero(proj.bias) == 0
    for name in ("q_ln", "k_ln"):
        ln = getattr(module, name)
        assert torch.all(ln.weight == 1) and torch.all(ln.bias == 0)


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_ring_multihead_initialisation(gamma):
    torch.manual_seed(0)
    module = dap.RingMultiheadDilatedAttention(256, 8, SEGS, RATES, gamma_init=gamma)
    _check_xavier_normal(module.qkv_proj.weight, gamma)
    _check_xavier_normal(module.out_proj.weight, gamma)
    assert torch.count_nonzero(module.qkv_proj.bias) == 0
    assert torch.count_nonzero(module.out_proj.bias) == 0


# --------------------------------------------------------------------------------------------
# RingMultiheadDilatedAttention


def test_ring_multihead_state_dict_keys():
    assert list(dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES).state_dict()) == [
        "qkv_proj.weight", "qkv_proj.bias", "out_proj.weight", "out_proj.bias"]
    module = dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES, layer_norm=True)
    assert list(module.state_dict()) == [
        "qkv_proj.weight", "qkv_proj.bias", "norm.weight", "norm.bias", "out_proj.weight",
        "out_proj.bias"]
    assert module.qkv_proj.weight.shape == (96, 32)
    assert sorted(dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES, bias=False).state_dict()) \
        == ["out_proj.weight", "qkv_proj.weight"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layer_norm,bias,causal,batch_first", [
    (False, True, False, True), (False, True, True, True), (True, True, True, True),
    (False, False, False, False), (True, True, False, False)])
def test_ring_multihead_matches_reference(dtype, layer_norm, bias, causal, batch_first):
    module = perturb_(dap.RingMultiheadDilatedAttention(
        32, 4, [8, 16, 32], [1, 2, 4], bias=bias, layer_norm=layer_norm, layer_norm_eps=1e-4,
        dtype=dtype, batch_first=batch_first))
    assert all(p.dtype == dtype for p in module.parameters())
    shape = (2, 32, 32) if batch_first else (32, 2, 32)
    x = randn(shape, dtype, 3)
    reference = partial(ring_multihead_reference, num_heads=4, segment_lengths=[8, 16, 32],
                        dilation_rates=[1, 2, 4], is_causal=causal, layer_norm=layer_norm,
                        eps=1e-4, batch_first=batch_first)

    def call(m, x):
        out = m(x, is_causal=causal)
        assert isinstance(out, tuple) and len(out) == 2 and out[1] is None
        return out

    out = compare_with_reference(module, [x], lambda p, x: reference(p, x),
                                 MULTIHEAD_TOL[dtype], call=call)
    assert out.shape == shape


def test_ring_multihead_explicit_self_attention_arguments():
    module = perturb_(dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES))
    x = randn((1, 16, 32), torch.float32, 0)
    expected, _ = module(x)
    torch.testing.assert_close(module(x, x, x)[0], expected, atol=0, rtol=0)
    torch.testing.assert_close(module(x, x)[0], expected, atol=0, rtol=0)


@pytest.mark.parametrize("which", ["key", "value"])
def test_ring_multihead_cross_attention_not_implemented(which):
    module = dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES)
    x = randn((1, 16, 32), torch.float32, 0)
    other = x.clone()
    with pytest.raises(NotImplementedError) as info:
        module(x, **{which: other})
    assert str(info.value) == ("Cross-attention not yet implemented for Ring Attention. "
                               "Currently only self-attention is supported.")


def test_ring_multihead_need_weights_and_mask_are_refused():
    module = dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES)
    x = randn((1, 16, 32), torch.float32, 0)
    with pytest.raises(ValueError, match="need_weights"):
        module(x, need_weights=True)
    with pytest.raises(ValueError, match="attn_mask is not supported"):
        module(x, attn_mask=torch.zeros(16, 16, dtype=torch.bool))


def test_ring_multihead_positional_arguments():
    """(embed_dim, num_heads, segment_lengths, dilation_rates, dropout, bias, layer_norm,
    layer_norm_eps, gamma_init, ring_size, device, dtype, batch_first)"""
    module = dap.RingMultiheadDilatedAttention(32, 4, [8, 16], [1, 2], 0.1, False, True, 1e-3,
                                               1.0, 1, "cpu", torch.float64, False)
    assert (module.segment_lengths, module.dilation_rates) == ([8, 16], [1, 2])
    assert module.dropout == 0.1 and module.qkv_proj.bias is None
    assert module.norm.eps == 1e-3 and module.qkv_proj.weight.dtype == torch.float64
    assert module.batch_first is False


def test_ring_multihead_dropout_only_in_training():
    module = dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES, dropout=0.5)
    plain = dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES)
    plain.load_state_dict(module.state_dict())
    x = randn((1, 16, 32), torch.float32, 0)
    assert not torch.allclose(module(x)[0], plain(x)[0])
    module.eval()
    torch.testing.assert_close(module(x)[0], plain(x)[0], atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# DistributedImprovedMultiheadDilatedAttention (deprecated; single process here)


@deprecated_op
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distributed_improved_multihead_matches_reference(dtype):
    with pytest.warns(DeprecationWarning):
        module = perturb_(dap.DistributedImprovedMultiheadDilatedAttention(
            32, 4, SEGS, RATES, dtype=dtype))
    assert sorted(module.state_dict()) == sorted(
        f"{n}.{p}" for n in ("q_proj", "k_proj", "v_proj", "out_proj") for p in ("weight", "bias"))
    q, k, v = (randn((2, 16, 32), dtype, s) for s in (2, 3, 4))
    reference = lambda p, q, k, v: multihead_reference(p, q, k, v, 4, SEGS, RATES, True,
                                                       layer_norm=False)
    compare_with_reference(module, [q, k, v], reference, MULTIHEAD_TOL[dtype],
                           call=lambda m, q, k, v: m(q, k, v, is_causal=True))
