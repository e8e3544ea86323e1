"""Dropout on the attention weights: determinism, scaling, statistics and backward mask."""

import pytest
import torch

from helpers import make_qkv
from reference import dilated_attention_reference

SEGMENTS, RATES = [8, 16], [1, 2]


def seeded(op, seed, q, k, v, p, segments=SEGMENTS, rates=RATES, is_causal=False):
    torch.manual_seed(seed)
    return op(q, k, v, segments, rates, p, is_causal, None)


def weight_probe(n, batch=4):
    """q, k random and v[b, m, 0] = e_m, so with one dense group the output rows are exactly
    the (dropped-out, rescaled) attention weights of that single head."""
    q, k, _ = make_qkv((batch, n, 1, n), seed=3)
    v = torch.eye(n, dtype=torch.float64).expand(batch, n, n).unsqueeze(2).contiguous()
    return q, k, v


@pytest.mark.parametrize("is_causal", [False, True])
def test_same_seed_same_output_different_seed_different(op, is_causal):
    q, k, v = make_qkv((2, 32, 3, 8), torch.float32)
    a = seeded(op, 7, q, k, v, 0.3, is_causal=is_causal)
    b = seeded(op, 7, q, k, v, 0.3, is_causal=is_causal)
    c = seeded(op, 8, q, k, v, 0.3, is_causal=is_causal)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    no_dropout = op(q, k, v, SEGMENTS, RATES, 0.0, is_causal, None)
    assert not torch.allclose(a, no_dropout)


def test_same_seed_same_gradients(op):
    def grads(seed):
        q, k, v = make_qkv((1, 16, 2, 8), requires_grad=True)
        seeded(op, seed, q, k, v, 0.4).pow(2).sum().backward()
        return [t.grad for t in (q, k, v)]

    for g1, g2 in zip(grads(5), grads(5)):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=str)
def test_p_one_gives_zeros(op, dtype):
    q, k, v = make_qkv((1, 16, 3, 8), dtype, requires_grad=True)
    out = seeded(op, 0, q, k, v, 1.0)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.count_nonzero(out) == 0
    out.backward(torch.ones_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert torch.count_nonzero(t.grad) == 0


def test_p_zero_equals_no_dropout_exactly(op):
    q, k, v = make_qkv((2, 32, 3, 8), torch.float32)
    torch.manual_seed(0)
    explicit = op(q, k, v, SEGMENTS, RATES, 0.0, True, None)
    default = op(q, k, v, SEGMENTS, RATES, is_causal=True)
    assert torch.equal(explicit, default)
    # Deterministic regardless of the generator state.
    torch.manual_seed(123)
    assert torch.equal(op(q, k, v, SEGMENTS, RATES, 0.0, True, None), explicit)


@pytest.mark.parametrize("segments, rates, is_causal", [([8, 16], [1, 2], False),
                                                         ([4, 8], [2, 1], True)])
def test_gradcheck_with_fixed_mask(op, segments, rates, is_causal):
    """Re-seeding right before every call fixes the mask, so finite differences of the
    forward must match the analytic backward: the backward uses the forward's mask."""
    q, k, v = make_qkv((1, 16, 3, 4), requires_grad=True)

    def fn(q, k, v):
        torch.manual_seed(1234)
        return op(q, k, v, segments, rates, 0.5, is_causal, None)

    assert torch.count_nonzero(fn(q, k, v) - op(q, k, v, segments, rates, 0.0, is_causal, None))
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_only_attention_weights_dropped_with_inverted_scaling(op):
    n, p = 32, 0.25
    q, k, v = weight_probe(n)
    weights = dilated_attention_reference(q, k, v, [n], [1])  # no dropout: rows = weights
    out = seeded(op, 11, q, k, v, p, segments=[n], rates=[1])
    kept = out != 0
    # Every entry is either dropped or exactly the weight scaled by 1 / (1 - p).
    torch.testing.assert_close(out[kept], weights[kept] / (1 - p), atol=1e-12, rtol=1e-12)
    dropped_fraction = 1 - kept.double().mean().item()
    assert abs(dropped_fraction - p) < 0.03, dropped_fraction


def test_mean_over_seeds_approximates_no_dropout(op):
    q, k, v = make_qkv((1, 16, 2, 8), torch.float32)
    expected = op(q, k, v, SEGMENTS, RATES, 0.0, False, None)
    outs = torch.stack([seeded(op, s, q, k, v, 0.3) for s in range(200)])
    mean = outs.mean(0)
    err = (mean - expected).abs()
    assert err.mean() < 0.03, err.mean()
    assert err.max() < 0.15, err.max()
    # Dropout noise is real: single draws deviate much more than the mean does.
    assert (outs[0] - expected).abs().mean() > 3 * err.mean()
