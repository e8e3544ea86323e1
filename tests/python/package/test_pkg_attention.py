"""The [B, N, H, D] attention modules (DilatedAttention, ImprovedDilatedAttention and every ring /
distributed class without a process group) against the float64 reference: outputs and input
gradients, dropout only in training, masks refused, constructor validation with the op's words."""

import re
import warnings

import pytest
import torch

import dilated_attention_pytorch as dap
from helpers import make_qkv
from pkg_helpers import ATTENTION_TOL, api_params
from reference import dilated_attention_reference


def _quiet(factory):
    """Builds a module with the deprecation notice silenced (it is tested elsewhere)."""
    def build(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return factory(*args, **kwargs)
    return build


# name -> (segment_lengths, dilation_rates, softmax_scale, dropout) -> module
BUILDERS = {
    "DilatedAttention": lambda s, r, scale=None, p=0.0: dap.DilatedAttention(
        s, r, softmax_scale=scale, attention_dropout=p),
    "ImprovedDilatedAttention": lambda s, r, scale=None, p=0.0: dap.ImprovedDilatedAttention(
        s, r, dropout=p, softmax_scale=scale),
    "RingDilatedAttentionHybridOptimizedV2":
        lambda s, r, scale=None, p=0.0: dap.RingDilatedAttentionHybridOptimizedV2(
            s, r, dropout=p, softmax_scale=scale),
    "RingDilatedAttention": lambda s, r, scale=None, p=0.0: dap.RingDilatedAttention(
        s, r, p, softmax_scale=scale),
    "RingDilatedAttentionHybridOptimized":
        lambda s, r, scale=None, p=0.0: dap.RingDilatedAttentionHybridOptimized(
            s, r, dropout=p, ring_size=1, softmax_scale=scale),
    "RingDilatedAttentionProduction": lambda s, r, scale=None, p=0.0:
        dap.RingDilatedAttentionProduction(
            dap.RingAttentionConfig(s, r, dropout=p, softmax_scale=scale)),
    "create_production_ring_attention": lambda s, r, scale=None, p=0.0:
        dap.create_production_ring_attention(s, r, dropout=p, softmax_scale=scale),
    "RingDilatedAttentionV2Collective": _quiet(lambda s, r, scale=None, p=0.0:
        dap.RingDilatedAttentionV2Collective(s, r, dropout=p, softmax_scale=scale)),
    "HilbertRingDilatedAttention": _quiet(lambda s, r, scale=None, p=0.0:
        dap.HilbertRingDilatedAttention(s, r, dropout=p, softmax_scale=scale)),
    "HeadParallelDilatedAttention": _quiet(lambda s, r, scale=None, p=0.0:
        dap.HeadParallelDilatedAttention(s, r, dropout=p, softmax_scale=scale)),
    "DistributedImprovedDilatedAttention": _quiet(lambda s, r, scale=None, p=0.0:
        dap.DistributedImprovedDilatedAttention(s, r, dropout=p, softmax_scale=scale)),
}

# (shape [B, N, H, D], segment_lengths, dilation_rates, is_causal, softmax_scale)
CONFIGS = [
    ((2, 32, 4, 8), [8, 16, 32], [1, 2, 4], False, None),
    ((1, 32, 5, 8), [8, 16], [1, 2], True, 0.3),  # 5 heads over 2 groups: 3 + 2
    ((2, 16, 3, 4), [16], [2], True, None),
]

_REFERENCE_CACHE = {}


def reference_for(config_index, dtype, layout):
    """(inputs, grad_output, (out, dq, dk, dv) in float64), computed once per case."""
    key = (config_index, dtype, layout)
    if key not in _REFERENCE_CACHE:
        shape, segs, rates, causal, scale = CONFIGS[config_index]
        q, k, v = make_qkv(shape, dtype, layout, seed=config_index)
        grad = torch.randn(shape, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(99)).to(dtype)
        ref_in = [t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v)]
        ref = dilated_attention_reference(*ref_in, segs, rates, causal, scale)
        ref.backward(grad.to(torch.float64))
        _REFERENCE_CACHE[key] = ((q, k, v), grad, (ref.detach(), *(t.grad for t in ref_in)))
    return _REFERENCE_CACHE[key]


@pytest.mark.parametrize("name", api_params(BUILDERS))
@pytest.mark.parametrize("config_index", range(len(CONFIGS)))
@pytest.mark.parametrize("dtype,layout", [(torch.float64, "contiguous"),
                                          (torch.float32, "transposed")])
def test_matches_reference_forward_and_backward(name, config_index, dtype, layout):
    shape, segs, rates, causal, scale = CONFIGS[config_index]
    (q, k, v), grad, expected = reference_for(config_index, dtype, layout)
    module = BUILDERS[name](segs, rates, scale)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = module(*leaves, is_causal=causal)
    assert out.shape == shape and out.dtype == dtype
    out.backward(grad)
    atol, rtol = ATTENTION_TOL[dtype]
    for what, got, want in zip(["out", "dq", "dk", "dv"],
                               (out, *(t.grad for t in leaves)), expected):
        torch.testing.assert_close(got.to(torch.float64), want, atol=atol, rtol=rtol,
                                   msg=lambda m: f"{name} {what}: {m}")


@pytest.mark.parametrize("name", api_params(BUILDERS))
def test_same_result_as_dilated_attention(name):
    """Without a process group every class is DilatedAttention (same kernels: same bits)."""
    q, k, v = make_qkv((2, 32, 4, 8), torch.float32, seed=5)
    expected = dap.DilatedAttention([8, 32], [1, 2])(q, k, v, is_causal=True)
    got = BUILDERS[name]([8, 32], [1, 2])(q, k, v, True)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


@pytest.mark.parametrize("name", api_params(BUILDERS))
def test_dropout_only_in_training(name):
    q, k, v = make_qkv((1, 32, 2, 8), torch.float32, seed=3)
    plain = BUILDERS[name]([16, 32], [1, 2])(q, k, v)
    module = BUILDERS[name]([16, 32], [1, 2], None, 0.5)
    assert module.training  # nn.Module default
    torch.manual_seed(0)
    train_a = module(q, k, v)
    torch.manual_seed(0)
    train_b = module(q, k, v)
    train_c = module(q, k, v)
    assert not torch.allclose(train_a, plain), "dropout had no effect in training mode"
    torch.testing.assert_close(train_a, train_b, atol=0, rtol=0)  # seeded: reproducible
    assert not torch.equal(train_a, train_c)
    module.eval()
    torch.testing.assert_close(module(q, k, v), plain, atol=0, rtol=0)
    torch.testing.assert_close(module(q, k, v), plain, atol=0, rtol=0)
    module.train()
    assert not torch.allclose(module(q, k, v), plain)


@pytest.mark.parametrize("name", ["DilatedAttention", "ImprovedDilatedAttention"])
def test_training_without_dropout_is_deterministic(name):
    q, k, v = make_qkv((1, 16, 2, 8), torch.float32, seed=4)
    module = BUILDERS[name]([8, 16], [1, 2])
    module.train()
    torch.testing.assert_close(module(q, k, v), module.eval()(q, k, v), atol=0, rtol=0)


@pytest.mark.parametrize("name", ["DilatedAttention", "ImprovedDilatedAttention"])
@pytest.mark.parametrize("mask", [torch.ones(16, 16, dtype=torch.bool), torch.zeros(16, 16)])
def test_attention_mask_is_refused(name, mask):
    q, k, v = make_qkv((1, 16, 2, 8), torch.float32)
    module = BUILDERS[name]([8, 16], [1, 2])
    with pytest.raises(ValueError, match="attention_mask is not supported"):
        module(q, k, v, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask is not supported"):
        module(q, k, v, False, mask)


def test_positional_arguments_of_dilated_attention():
    """DilatedAttention(segment_lengths, dilation_rates, softmax_scale, attention_dropout)."""
    module = dap.DilatedAttention([8], [1], 0.25, 0.1)
    assert module.softmax_scale == 0.25 and module.dropout == 0.1
    q, k, v = make_qkv((1, 8, 1, 4), torch.float64)
    module.eval()
    expected = dilated_attention_reference(q, k, v, [8], [1], False, 0.25)
    torch.testing.assert_close(module(q, k, v), expected, atol=1e-12, rtol=1e-12)
    improved = dap.ImprovedDilatedAttention([8], [1], 0.3)
    assert improved.dropout == 0.3 and improved.softmax_scale is None


BAD_CONFIGS = [
    ([], [], 0.0, "segment_lengths cannot be empty"),
    ([8], [0], 0.0, "dilation_rates[0] must be positive, got 0"),
    ([8, 16], [1, -2], 0.0, "dilation_rates[1] must be positive, got -2"),
    ([0], [1], 0.0, "segment_lengths[0] must be positive, got 0"),
    ([8, 16], [1], 0.0, "segment_lengths and dilation_rates must have the same length: 2 != 1"),
    ([8], [1], 1.5, "dropout must be between 0.0 and 1.0, got 1.5"),
    ([8], [1], -0.1, "dropout must be between 0.0 and 1.0, got -0.1"),
]

CONSTRUCTORS = {
    **{name: (lambda b: lambda s, r, p: b(s, r, None, p))(b) for name, b in BUILDERS.items()},
    "MultiheadDilatedAttention": lambda s, r, p: dap.MultiheadDilatedAttention(
        32, 4, r, s, dropout=p),
    "RingMultiheadDilatedAttention": lambda s, r, p: dap.RingMultiheadDilatedAttention(
        32, 4, s, r, dropout=p),
    "DistributedImprovedMultiheadDilatedAttention": _quiet(
        lambda s, r, p: dap.DistributedImprovedMultiheadDilatedAttention(32, 4, s, r, dropout=p)),
    "create_dilated_attention": lambda s, r, p: dap.create_dilated_attention(
        "auto", s, r, dropout=p),
}


@pytest.mark.parametrize("name", api_params(CONSTRUCTORS))
@pytest.mark.parametrize("segs,rates,dropout,message", BAD_CONFIGS)
def test_constructor_validation(name, segs, rates, dropout, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CONSTRUCTORS[name](segs, rates, dropout)


@pytest.mark.parametrize("name", ["DilatedAttention", "RingDilatedAttentionHybridOptimizedV2",
                                  "RingDilatedAttentionProduction"])
def test_sequence_length_error_at_forward(name):
    q, k, v = make_qkv((1, 24, 2, 8), torch.float32)
    with pytest.raises(ValueError, match=re.escape(
            "Sequence length (24) must be divisible by the largest segment length (16)")):
        BUILDERS[name]([8, 16], [1, 2])(q, k, v)


@pytest.mark.parametrize("name", ["RingDilatedAttentionHybridOptimizedV2",
                                  "RingDilatedAttentionHybridOptimized"])
def test_ring_size_must_match_group(name):
    cls = getattr(dap, name)
    cls([8], [1], ring_size=1)  # one process: a ring of one is fine
    with pytest.raises(ValueError, match=re.escape(
            "ring_size (2) must equal the size of the process group (1)")):
        cls([8], [1], ring_size=2)


def test_ring_size_must_match_group_production_and_multihead():
    with pytest.raises(ValueError, match=r"ring_size \(4\) must equal"):
        dap.RingDilatedAttentionProduction(dap.RingAttentionConfig([8], [1], ring_size=4))
    with pytest.raises(ValueError, match=r"ring_size \(4\) must equal"):
        dap.create_production_ring_attention([8], [1], ring_size=4)
    with pytest.raises(ValueError, match=r"ring_size \(2\) must equal"):
        dap.RingMultiheadDilatedAttention(32, 4, [8], [1], ring_size=2)


@pytest.mark.parametrize("name", api_params(BUILDERS))
def test_modules_have_no_parameters_or_buffers(name):
    module = BUILDERS[name]([8], [1])
    assert list(module.parameters()) == [] and module.state_dict() == {}, name
