"""longnet_attention: LongNet's dilated attention (every branch over all heads, branches mixed
by their log-sum-exps, head offsets in contiguous blocks, truncated last segments), checked
against the float64 reference of longnet_reference.py, forward and gradients, and through
autograd.gradcheck, opcheck, torch.compile, TorchScript, Meta tensors, validation and dropout."""

import functools
import math
import re

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import TOLERANCES
from longnet_reference import (
    branch_segments,
    head_offset,
    longnet_reference,
    longnet_reference_lse_form,
)
from reference import dilated_attention_reference

OPS = torch.ops.dilated_attention


def LONGNET(*args, **kwargs):
    return torch.ops.dilated_attention.longnet_attention(*args, **kwargs)


# (B, N, H, H_kv, segment_lengths, dilation_rates, scale)
CONFIGS = [
    (1, 16, 3, 3, [8], [2], None),                  # H not a multiple of r: offsets 0, 0, 1
    (1, 20, 5, 5, [8, 16], [2, 4], None),           # H = 5 with r = 2, 4; N divides neither
    (1, 12, 2, 2, [4], [4], None),                  # r > H: offsets 2, 3 have no head
    (1, 10, 4, 4, [32, 4], [1, 3], None),           # w > N; r = 3 does not divide s = 4
    (1, 10, 4, 4, [4, 8], [4, 2], None),            # offsets 2, 3 >= the tail [8, 10): uncovered
    (1, 16, 2, 2, [2, 8], [4, 1], None),            # r > s: offset 1 of 2 heads, single keys
    (2, 32, 4, 4, [4, 8, 16], [1, 2, 4], None),     # torchscale's defaults, B = 2
    (1, 24, 4, 2, [8, 16], [1, 2], None),           # GQA H = 4, H_kv = 2
    (1, 18, 6, 1, [6, 12], [2, 3], None),           # multi-query H = 6, H_kv = 1
    (1, 16, 4, 4, [8, 16], [1, 2], 0.3),            # explicit scale
    (1, 13, 4, 2, [4, 8], [2, 2], -0.7),            # negative scale, N = 13
    (2, 5, 3, 3, [8, 16], [1, 2], None),            # N smaller than every segment
    (1, 1, 2, 2, [4, 8], [1, 2], None),             # N = 1
    (1, 9, 1, 1, [4, 8, 2], [1, 2, 1], None),       # H = 1 < number of branches
    (1, 8, 2, 1, [8], [1], None),                   # one dense branch
]


def config_id(c):
    B, N, H, H_kv, segs, rates, scale = c
    return (f"B{B}-N{N}-H{H}-Hkv{H_kv}-w{'.'.join(map(str, segs))}-r{'.'.join(map(str, rates))}"
            + ("" if scale is None else f"-scale{scale}"))


D = 4


def inputs(B, N, H, H_kv, dtype=torch.float64, seed=0, layout="contiguous", head_dim=D):
    """q [B, N, H, D], k/v [B, N, H_kv, D], grad_out [B, N, H, D]: the same values whatever the
    layout; "transposed" stores them as [B, H, N, D] and returns the transposed views."""
    gen = torch.Generator().manual_seed(seed)
    make = lambda heads: torch.randn(B, N, heads, head_dim, dtype=torch.float64,
                                     generator=gen).to(dtype)
    q, k, v, grad_out = make(H), make(H_kv), make(H_kv), make(H)
    if layout == "transposed":
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        if H_kv == 1:  # one head: transposing changes nothing; every other entry instead
            k, v = (torch.stack([t, torch.zeros_like(t)], -1)[..., 0] for t in (k, v))
        if N > 1 and H > 1:
            assert not any(t.is_contiguous() for t in (q, k, v))
    return q, k, v, grad_out


def padding_mask(B, N, seed):
    """Random padding; the last batch row (when B > 1) entirely padding; the first segment of
    4 positions of row 0 padding."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=gen) < 0.3
    mask[0, :4] = True
    if B > 1:
        mask[-1] = True
    return mask


def run_op(q, k, v, grad_out, segs, rates, causal, scale=None, mask=None, dropout_p=0.0):
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = LONGNET(*leaves, segs, rates, dropout_p, causal, scale, mask)
    return (out, *torch.autograd.grad(out, leaves, grad_out))


def run_reference(q, k, v, grad_out, segs, rates, causal, scale=None, mask=None):
    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v)]
    out = longnet_reference(*leaves, segs, rates, causal, scale, mask)
    if not out.requires_grad:  # no row sees a key
        return (out, *(torch.zeros_like(t) for t in leaves))
    grads = torch.autograd.grad(out, leaves, grad_out.to(torch.float64), allow_unused=True)
    return (out, *(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)))


@functools.lru_cache(maxsize=None)
def cached_reference(config, causal, masked, seed):
    B, N, H, H_kv, segs, rates, scale = config
    q, k, v, grad_out = inputs(B, N, H, H_kv, seed=seed)
    mask = padding_mask(B, N, seed) if masked else None
    return run_reference(q, k, v, grad_out, list(segs), list(rates), causal, scale, mask)


def hashable(config):
    B, N, H, H_kv, segs, rates, scale = config
    return (B, N, H, H_kv, tuple(segs), tuple(rates), scale)


def assert_all_close(got, expected, atol, rtol, what=""):
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        assert g.shape == e.shape, (name, g.shape, e.shape)
        torch.testing.assert_close(g.to(torch.float64), e, atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{what} {name}: {m}")


# ============================================================================================
# The reference itself (runs without the op)
# ============================================================================================

def test_reference_index_sets():
    """The index sets of the spec, written out for small cases."""
    # H = 3, r = 2: blocks of ceil(3 / 2) = 2 heads -> offsets 0, 0, 1.
    assert [head_offset(h, 3, 2) for h in range(3)] == [0, 0, 1]
    # H = 5, r = 4: blocks of 2 -> offsets 0, 0, 1, 1, 2; offset 3 has no head.
    assert [head_offset(h, 5, 4) for h in range(5)] == [0, 0, 1, 1, 2]
    # r > H: one head per offset.
    assert [head_offset(h, 2, 4) for h in range(2)] == [0, 1]
    # N = 10, w = 8, r = 4, H = 5, head 4 (offset 2): [2, 6]; the tail [8, 10) holds no 10.
    assert branch_segments(10, 5, 8, 4, 4) == [[2, 6]]
    assert branch_segments(10, 5, 8, 4, 0) == [[0, 4], [8]]
    # w > N: one truncated segment of length N.
    assert branch_segments(5, 1, 32, 2, 0) == [[0, 2, 4]]
    # r = 3 does not divide s = 4, offset 1 (H = 4: blocks of 2).
    assert branch_segments(10, 4, 4, 3, 2) == [[1], [5], [9]]
    # Offset >= s covers nothing.
    assert branch_segments(16, 2, 2, 4, 1) == [[1], [3], [5], [7], [9], [11], [13], [15]]
    assert branch_segments(16, 8, 2, 8, 5) == []
    assert branch_segments(0, 2, 4, 1, 0) == []


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("N, w, scale", [(8, 8, None), (7, 16, None), (12, 100, -0.4)])
def test_reference_one_dense_branch_is_plain_attention(N, w, scale, causal):
    q, k, v, _ = inputs(2, N, 3, 3, seed=N)
    ref = longnet_reference(q, k, v, [w], [1], causal, scale)
    # The math backend: ATen's CPU flash kernel gives NaN for a negative scale under causal.
    with sdpa_kernel(SDPBackend.MATH):
        sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                              v.transpose(1, 2), is_causal=causal,
                                              scale=scale).transpose(1, 2)
    torch.testing.assert_close(ref, sdpa, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_reference_concatenated_softmax_equals_the_lse_combination(config, causal, masked):
    B, N, H, H_kv, segs, rates, scale = config
    q, k, v, grad_out = inputs(B, N, H, H_kv, seed=3)
    mask = padding_mask(B, N, 3) if masked else None
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    concat, concat_lse = longnet_reference(*leaves, segs, rates, causal, scale, mask,
                                           return_lse=True)
    lse_form, lse = longnet_reference_lse_form(*leaves, segs, rates, causal, scale, mask)
    torch.testing.assert_close(concat, lse_form, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(concat_lse, lse, atol=1e-12, rtol=1e-12)
    if masked or not concat.requires_grad:
        return
    got = torch.autograd.grad(concat, leaves, grad_out, allow_unused=True)
    expected = torch.autograd.grad(lse_form, leaves, grad_out, allow_unused=True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-11, rtol=1e-11)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reference_one_branch_of_rate_one_is_the_core_reference(causal):
    """One branch, r = 1, N a multiple of w: every head has offset 0, as the core op's one
    group; the core's division by G = 1 changes nothing."""
    q, k, v, _ = inputs(2, 24, 4, 2, seed=5)
    torch.testing.assert_close(longnet_reference(q, k, v, [8], [1], causal),
                               dilated_attention_reference(q, k, v, [8], [1], causal),
                               atol=1e-12, rtol=1e-12)


def test_reference_a_branch_twice_is_the_branch_once():
    """Every key of (p, h) listed twice: the same softmax. No division by the branch count."""
    q, k, v, _ = inputs(1, 14, 5, 5, seed=6)
    torch.testing.assert_close(longnet_reference(q, k, v, [8, 8], [2, 2], True),
                               longnet_reference(q, k, v, [8], [2], True), atol=1e-12, rtol=1e-12)


def test_reference_rows_that_see_nothing_are_zero():
    q, k, v, _ = inputs(2, 10, 4, 4, seed=7)
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[1] = True
    out, lse = longnet_reference(q, k, v, [4, 8], [4, 2], False, None, mask, return_lse=True)
    assert torch.count_nonzero(out[1]) == 0 and torch.isinf(lse[1]).all()
    # (p = 8, h = 3): branch 0's offset 3 and branch 1's offset 1 both miss position 8.
    assert torch.count_nonzero(out[0, 8, 3]) == 0 and torch.isinf(lse[0, 8, 3])
    covered = torch.zeros(10, 4, dtype=torch.bool)
    for w, r in ((4, 4), (8, 2)):
        for h in range(4):
            for positions in branch_segments(10, 4, w, r, h):
                covered[positions, h] = True
    assert torch.equal(torch.isfinite(lse[0]), covered)
    assert torch.equal(out[0].abs().sum(-1) != 0, covered)
    # Head 0: offset 0 in both branches: positions 0, 4, 8 (w = 4, r = 4) and the even ones.
    assert covered[:, 0].tolist() == [p % 2 == 0 for p in range(10)]
    assert covered[:, 3].tolist() == [p in (1, 3, 5, 7, 9) for p in range(10)]


# ============================================================================================
# The op against the reference
# ============================================================================================

@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_forward_and_gradients_match_the_reference(config, causal, layout):
    B, N, H, H_kv, segs, rates, scale = config
    q, k, v, grad_out = inputs(B, N, H, H_kv, seed=11, layout=layout)
    got = run_op(q, k, v, grad_out, segs, rates, causal, scale)
    expected = cached_reference(hashable(config), causal, False, 11)
    assert_all_close(got, expected, 1e-10, 1e-10)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", [c for c in CONFIGS if c[1] >= 8], ids=config_id)
def test_key_padding_mask_matches_the_reference(config, causal):
    """Random padding, a padded first segment and (B = 2) a batch row of nothing but padding:
    rows that see no key are 0 with 0 gradients, never NaN."""
    config = (2,) + tuple(config[1:])
    B, N, H, H_kv, segs, rates, scale = config
    q, k, v, grad_out = inputs(B, N, H, H_kv, seed=13)
    mask = padding_mask(B, N, 13)
    got = run_op(q, k, v, grad_out, segs, rates, causal, scale, mask)
    expected = cached_reference(hashable(config), causal, True, 13)
    for g in got:
        assert torch.isfinite(g).all()
    assert_all_close(got, expected, 1e-10, 1e-10)
    # The fully padded batch row: zero output and zero gradients.
    for g in got:
        assert torch.count_nonzero(g[-1]) == 0
    # Padded keys get no gradient.
    assert torch.count_nonzero(got[2][mask]) == 0 and torch.count_nonzero(got[3][mask]) == 0


def test_padded_key_values_change_nothing():
    q, k, v, grad_out = inputs(2, 20, 4, 2, seed=14)
    mask = padding_mask(2, 20, 14)
    mask[1, :10] = False
    a = run_op(q, k, v, grad_out, [8, 16], [1, 2], True, None, mask)
    k2, v2 = k.clone(), v.clone()
    k2[mask], v2[mask] = 1e3, -7.0
    b = run_op(q, k2, v2, grad_out, [8, 16], [1, 2], True, None, mask)
    for x, y in zip(a[:2], b[:2]):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[6], CONFIGS[8], CONFIGS[10]],
                         ids=config_id)
def test_lower_precisions_match_the_reference(config, causal, dtype):
    B, N, H, H_kv, segs, rates, scale = config
    q, k, v, grad_out = inputs(B, N, H, H_kv, dtype=dtype, seed=17)
    got = run_op(q, k, v, grad_out, segs, rates, causal, scale)
    assert all(g.dtype == dtype for g in got)
    expected = run_reference(q, k, v, grad_out, segs, rates, causal, scale)
    atol, rtol = TOLERANCES[dtype]
    widen = 10 if dtype == torch.bfloat16 else 1  # dK / dV sum rounded bf16 gradients
    assert_all_close(got, expected, atol * widen, rtol * widen, str(dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_internal_forward_log_sum_exp_matches_the_reference(causal, masked, dtype):
    """_longnet_attention_forward's softmax_lse is [B, N, H], float32 (float64 for float64
    inputs): the log-sum-exp of the scaled scores over each row's concatenated keys (checked
    where a row sees a key)."""
    q, k, v, _ = inputs(2, 20, 5, 5, dtype=dtype, seed=19)
    mask = padding_mask(2, 20, 19) if masked else None
    out, lse, _ = OPS._longnet_attention_forward(q, k, v, [8, 16], [2, 4], 0.0, causal, None,
                                                 mask)
    assert lse.shape == (2, 20, 5)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    ref, ref_lse = longnet_reference(q, k, v, [8, 16], [2, 4], causal, None, mask,
                                     return_lse=True)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)
    seen = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse.double()[seen], ref_lse[seen], atol=atol, rtol=rtol)


def test_internal_backward_equals_autograd():
    q, k, v, grad_out = inputs(1, 21, 4, 2, seed=20)
    mask = padding_mask(1, 21, 20)
    segs, rates = [4, 8, 16], [1, 2, 4]
    for dropout_p in (0.0, 0.3):
        torch.manual_seed(5)
        got = run_op(q, k, v, grad_out, segs, rates, True, None, mask, dropout_p)
        torch.manual_seed(5)
        out, lse, rng = OPS._longnet_attention_forward(q, k, v, segs, rates, dropout_p, True,
                                                       None, mask)
        grads = OPS._longnet_attention_backward(grad_out, q, k, v, out, lse, rng, segs, rates,
                                                dropout_p, True, None, mask)
        for a, b in zip(got, (out, *grads)):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_one_branch_of_rate_one_equals_the_core_op(causal):
    q, k, v, grad_out = inputs(2, 32, 4, 2, seed=21)
    mask = padding_mask(2, 32, 21)
    got = run_op(q, k, v, grad_out, [16], [1], causal, None, mask)
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = OPS.dilated_attention(*leaves, [16], [1], 0.0, causal, None, mask)
    expected = (out, *torch.autograd.grad(out, leaves, grad_out))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_a_branch_twice_is_the_branch_once(causal):
    """No division by the number of branches: listing every key twice leaves the softmax."""
    q, k, v, grad_out = inputs(1, 14, 5, 5, seed=22)
    a = run_op(q, k, v, grad_out, [8, 8], [2, 2], causal)
    b = run_op(q, k, v, grad_out, [8], [2], causal)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("shape", [(1, 0, 2, 2), (0, 12, 2, 2), (0, 0, 3, 1)])
def test_empty_batch_or_sequence(shape):
    B, N, H, H_kv = shape
    q, k, v, grad_out = inputs(B, N, H, H_kv, seed=23)
    out, dq, dk, dv = run_op(q, k, v, grad_out, [8, 16], [1, 2], True)
    assert out.shape == q.shape and dq.shape == q.shape
    assert dk.shape == k.shape and dv.shape == v.shape


@st.composite
def problems(draw):
    """Any branch lengths and rates (segments longer than N, rates larger than H or s), any N,
    GQA ratios, masks of any density."""
    num_kv = draw(st.integers(1, 3))
    heads = num_kv * draw(st.integers(1, 3))
    branches = draw(st.integers(1, 3))
    segs = [draw(st.integers(1, 24)) for _ in range(branches)]
    rates = [draw(st.integers(1, 5)) for _ in range(branches)]
    scale = draw(st.sampled_from([None, 0.5, -0.8]))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 20)), heads, num_kv, segs, rates, scale)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(problem=problems(), causal=st.booleans(), padding=st.sampled_from([None, 0.3, 0.8]),
       layout=st.sampled_from(["contiguous", "transposed"]), seed=st.integers(0, 2**16))
def test_property_forward_and_gradients_match_the_reference(problem, causal, padding, layout,
                                                            seed):
    B, N, H, H_kv, segs, rates, scale = problem
    q, k, v, grad_out = inputs(B, N, H, H_kv, seed=seed, layout=layout)
    mask = None
    if padding is not None:
        mask = torch.rand(B, N, generator=torch.Generator().manual_seed(seed)) < padding
    got = run_op(q, k, v, grad_out, segs, rates, causal, scale, mask)
    expected = run_reference(q, k, v, grad_out, segs, rates, causal, scale, mask)
    assert_all_close(got, expected, 1e-10, 1e-10, config_id(problem))


# ============================================================================================
# gradcheck, opcheck, torch.compile, TorchScript, Meta
# ============================================================================================

@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_gradcheck(causal, masked):
    if masked:
        q, k, v, _ = inputs(2, 6, 2, 1, seed=24, head_dim=2)
        mask = torch.tensor([[True, False, False, True, False, False],
                             [False, True, True, True, True, False]])
    else:
        q, k, v, _ = inputs(1, 7, 3, 1, seed=24, head_dim=2)
        mask = None
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda *x: LONGNET(*x, [4, 8], [1, 2], 0.0, causal, None, mask), leaves)


OPCHECK_CASES = [
    # (B, N, H, H_kv, segs, rates, causal, scale, masked)
    (2, 16, 4, 2, [8, 16], [1, 2], True, None, False),
    (1, 21, 3, 3, [4, 8, 16], [1, 2, 4], False, 0.5, True),
    (1, 10, 5, 1, [32], [3], True, None, True),
]


def opcheck_args(case, dtype, requires_grad):
    B, N, H, H_kv, segs, rates, causal, scale, masked = case
    q, k, v, _ = inputs(B, N, H, H_kv, dtype=dtype, seed=25, layout="transposed", head_dim=8)
    q, k, v = (t.requires_grad_(requires_grad) for t in (q, k, v))
    mask = padding_mask(B, N, 25) if masked else None
    return q, k, v, segs, rates, causal, scale, mask


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"N{c[1]}-H{c[2]}-mask{c[8]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_public_op(case, dtype, requires_grad):
    q, k, v, segs, rates, causal, scale, mask = opcheck_args(case, dtype, requires_grad)
    torch.library.opcheck(OPS.longnet_attention.default,
                          (q, k, v, segs, rates, 0.0, causal, scale, mask))


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"N{c[1]}-H{c[2]}-mask{c[8]}")
def test_opcheck_internal_ops(case):
    q, k, v, segs, rates, causal, scale, mask = opcheck_args(case, torch.float32, False)
    torch.library.opcheck(OPS._longnet_attention_forward.default,
                          (q, k, v, segs, rates, 0.0, causal, scale, mask))
    grad_out = torch.randn_like(q)
    for dropout_p in (0.0, 0.3):  # a fixed rng_state makes the dropout backward deterministic
        out, lse, rng = OPS._longnet_attention_forward(q, k, v, segs, rates, dropout_p, causal,
                                                       scale, mask)
        torch.library.opcheck(OPS._longnet_attention_backward.default,
                              (grad_out, q, k, v, out, lse, rng, segs, rates, dropout_p, causal,
                               scale, mask))


def test_opcheck_empty_sequence():
    q, k, v, _ = inputs(1, 0, 2, 2, dtype=torch.float32, seed=26)
    args = [t.requires_grad_(True) for t in (q, k, v)]
    torch.library.opcheck(OPS.longnet_attention.default,
                          (*args, [4], [1], 0.0, False, None, None))


def longnet_block(q, k, v, mask):
    out = LONGNET(q * 1.5, k, v, [4, 8, 16], [1, 2, 4], 0.0, True, None, mask)
    return torch.tanh(out) + q


@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
def test_compile_fullgraph_forward_backward_with_dynamic_length(masked):
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(longnet_block, backend=counter, fullgraph=True, dynamic=True)
    for n in (24, 37):
        q, k, v, grad_out = inputs(2, n, 4, 2, dtype=torch.float32, seed=n)
        mask = padding_mask(2, n, n) if masked else None
        eager = [t.clone().requires_grad_(True) for t in (q, k, v)]
        comp = [t.clone().requires_grad_(True) for t in (q, k, v)]
        expected = longnet_block(*eager, mask)
        got = compiled(*comp, mask)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
        for a, b in zip(torch.autograd.grad(got, comp, grad_out),
                        torch.autograd.grad(expected, eager, grad_out)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_torchscript():
    @torch.jit.script
    def scripted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 m: torch.Tensor) -> torch.Tensor:
        return torch.ops.dilated_attention.longnet_attention(q, k, v, [4, 8, 16], [1, 2, 4], 0.0,
                                                             True, None, m)

    assert "dilated_attention::longnet_attention" in scripted.graph.str()
    q, k, v, grad_out = inputs(2, 19, 4, 1, dtype=torch.float32, seed=27)
    m = padding_mask(2, 19, 27)
    a = [t.clone().requires_grad_(True) for t in (q, k, v)]
    b = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out_s = scripted(*a, m)
    out_e = LONGNET(*b, [4, 8, 16], [1, 2, 4], 0.0, True, None, m)
    torch.testing.assert_close(out_s, out_e, atol=0, rtol=0)
    for x, y in zip(torch.autograd.grad(out_s, a, grad_out), torch.autograd.grad(out_e, b, grad_out)):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("N", [37, 5, 0])
def test_meta_shapes(N, dtype):
    """N a multiple of no segment (37), smaller than all (5), empty (0)."""
    q = torch.empty(2, N, 6, 8, device="meta", dtype=dtype)
    k = torch.empty(2, N, 3, 8, device="meta", dtype=dtype)
    mask = torch.empty(2, N, dtype=torch.bool, device="meta")
    segs, rates = [8, 16], [1, 2]
    out = LONGNET(q, k, k, segs, rates)
    assert out.shape == q.shape and out.dtype == dtype and out.device.type == "meta"
    assert LONGNET(q, k, k, segs, rates, key_padding_mask=mask).shape == q.shape
    out, lse, rng = OPS._longnet_attention_forward(q, k, k, segs, rates, 0.0, True, None, mask)
    assert out.shape == q.shape
    assert lse.shape == (2, N, 6)
    assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    dq, dk, dv = OPS._longnet_attention_backward(out, q, k, k, out, lse, rng, segs, rates, 0.0,
                                                 True, None, mask)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape
    assert dq.dtype == dk.dtype == dv.dtype == dtype


def test_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.empty(2, 37, 4, 8), torch.empty(2, 37, 2, 8)
        out = LONGNET(q, k, k, [8, 16, 32], [1, 2, 4],
                      key_padding_mask=torch.empty(2, 37, dtype=torch.bool))
    assert out.shape == (2, 37, 4, 8)


SCHEMAS = {
    "longnet_attention": (
        "longnet_attention(Tensor query, Tensor key, Tensor value, int[] segment_lengths, "
        "int[] dilation_rates, float dropout_p=0., bool is_causal=False, float? scale=None, "
        "Tensor? key_padding_mask=None) -> Tensor"
    ),
    "_longnet_attention_forward": (
        "_longnet_attention_forward(Tensor query, Tensor key, Tensor value, "
        "int[] segment_lengths, int[] dilation_rates, float dropout_p, bool is_causal, "
        "float? scale, Tensor? key_padding_mask=None) -> (Tensor output, Tensor softmax_lse, "
        "Tensor rng_state)"
    ),
    "_longnet_attention_backward": (
        "_longnet_attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
        "Tensor output, Tensor softmax_lse, Tensor rng_state, int[] segment_lengths, "
        "int[] dilation_rates, float dropout_p, bool is_causal, float? scale, "
        "Tensor? key_padding_mask=None) -> (Tensor grad_query, Tensor grad_key, "
        "Tensor grad_value)"
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema(name):
    schema = str(getattr(OPS, name).default._schema)
    assert schema == "dilated_attention::" + SCHEMAS[name]


# ============================================================================================
# Validation
# ============================================================================================

def call(requires_grad=False, shape=(1, 16, 4, 8), key_shape=None, segments=(8,), rates=(1,),
         dropout_p=0.0, scale=None, mask=None, dtype=torch.float32):
    def tensor(s):
        t = torch.randn(s).to(dtype)
        return t.requires_grad_(requires_grad and t.is_floating_point())

    q, k, v = tensor(shape), tensor(key_shape or shape), tensor(key_shape or shape)
    return LONGNET(q, k, v, list(segments), list(rates), dropout_p, False, scale, mask)


INVALID = [
    ("empty-segments", dict(segments=(), rates=()), "segment_lengths cannot be empty"),
    ("empty-rates", dict(segments=(8,), rates=()), "dilation_rates cannot be empty"),
    ("length-mismatch", dict(segments=(8, 16), rates=(1,)),
     "segment_lengths and dilation_rates must have the same length: 2 != 1"),
    ("length-mismatch-2", dict(segments=(8,), rates=(1, 2)),
     "segment_lengths and dilation_rates must have the same length: 1 != 2"),
    ("segment-zero", dict(segments=(8, 0), rates=(1, 1)),
     "segment_lengths[1] must be positive, got 0"),
    ("segment-negative", dict(segments=(-4,), rates=(1,)),
     "segment_lengths[0] must be positive, got -4"),
    ("rate-zero", dict(segments=(8, 16), rates=(1, 0)),
     "dilation_rates[1] must be positive, got 0"),
    ("rate-negative", dict(segments=(8,), rates=(-2,)),
     "dilation_rates[0] must be positive, got -2"),
    ("dropout-high", dict(dropout_p=1.5), "dropout must be between 0.0 and 1.0, got 1.5"),
    ("dropout-low", dict(dropout_p=-0.1), "dropout must be between 0.0 and 1.0, got -0.1"),
    ("query-3d", dict(shape=(16, 4, 8), key_shape=(1, 16, 4, 8)),
     "query expected 4D tensor, got 3D"),
    ("key-5d", dict(key_shape=(1, 1, 16, 4, 8)), "key expected 4D tensor, got 5D"),
    ("key-heads", dict(key_shape=(1, 16, 3, 8)),
     "Shape mismatch at dimension 2: query has size 4, key has size 3; the number of key/value "
     "heads must divide the number of query heads"),
    ("key-length", dict(key_shape=(1, 12, 4, 8)),
     "Shape mismatch at dimension 1: query has size 16, key has size 12"),
    ("mask-float", dict(mask=torch.zeros(1, 16)),
     "key_padding_mask must be a bool tensor (True = padding), got dtype Float"),
    ("mask-uint8", dict(mask=torch.zeros(1, 16, dtype=torch.uint8)),
     "key_padding_mask must be a bool tensor"),
    ("mask-shape", dict(mask=torch.zeros(1, 15, dtype=torch.bool)),
     "key_padding_mask expected shape [1, 16]"),
    ("mask-1d", dict(mask=torch.zeros(16, dtype=torch.bool)),
     "key_padding_mask expected shape [1, 16]"),
    ("scale-inf", dict(scale=math.inf), "scale must be a finite number, got inf"),
    ("scale-nan", dict(scale=math.nan), "scale must be a finite number, got nan"),
    ("dtype-int", dict(dtype=torch.int64),
     "query dtype must be one of float32, float64, bfloat16, float16, got "),
]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("kwargs, message", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_arguments_raise_value_error(kwargs, message, requires_grad):
    with pytest.raises(ValueError, match=re.escape(message)):
        call(requires_grad, **kwargs)


def test_the_internal_ops_validate_too():
    q, k, v, _ = inputs(2, 16, 4, 4, dtype=torch.float32, seed=28)
    with pytest.raises(ValueError, match="segment_lengths cannot be empty"):
        OPS._longnet_attention_forward(q, k, v, [], [], 0.0, False, None, None)
    with pytest.raises(ValueError, match="key_padding_mask expected shape"):
        OPS._longnet_attention_forward(q, k, v, [8], [1], 0.0, False, None,
                                       torch.zeros(2, 15, dtype=torch.bool))
    out, lse, rng = OPS._longnet_attention_forward(q, k, v, [8], [1], 0.0, False, None, None)
    with pytest.raises(ValueError, match="key_padding_mask must be a bool tensor"):
        OPS._longnet_attention_backward(out, q, k, v, out, lse, rng, [8], [1], 0.0, False, None,
                                        torch.zeros(2, 16))
    with pytest.raises(ValueError, match=re.escape("dilation_rates[0] must be positive, got 0")):
        OPS._longnet_attention_backward(out, q, k, v, out, lse, rng, [8], [0], 0.0, False, None,
                                        None)


@pytest.mark.parametrize("kwargs", [
    dict(shape=(1, 20, 4, 8), segments=(8,), rates=(1,)),                 # N a multiple of none
    dict(shape=(1, 21, 4, 8), segments=(6, 16), rates=(1, 2)),
    dict(shape=(1, 16, 1, 8), segments=(4, 8, 16), rates=(1, 2, 4)),      # H = 1 < 3 branches
    dict(shape=(1, 16, 2, 8), segments=(4, 8, 16, 2), rates=(1, 1, 1, 1)),
    dict(shape=(1, 16, 8, 8), segments=(2,), rates=(8,)),                 # offsets up to 7 >= s
    dict(shape=(1, 16, 4, 8), segments=(64,), rates=(32,)),               # w > N, r > H
    dict(dropout_p=1.0), dict(dropout_p=0.0), dict(scale=0.0), dict(scale=-3.0),
], ids=str)
def test_boundary_arguments_are_accepted(kwargs):
    out = call(**kwargs)
    assert out.shape == kwargs.get("shape", (1, 16, 4, 8))
    assert torch.isfinite(out).all()


# ============================================================================================
# Dropout (per branch, inverted scaling; the mask is a function of torch's CPU generator)
# ============================================================================================

DROP_SEGS, DROP_RATES = [4, 8, 16], [1, 2, 4]


def seeded(seed, q, k, v, p, segs=DROP_SEGS, rates=DROP_RATES, causal=False, mask=None):
    torch.manual_seed(seed)
    return LONGNET(q, k, v, segs, rates, p, causal, None, mask)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dropout_same_seed_same_output_and_gradients_different_seed_different(causal):
    q, k, v, grad_out = inputs(2, 21, 4, 2, dtype=torch.float32, seed=30)

    def run(seed):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = seeded(seed, *leaves, 0.3, causal=causal)
        return (out, *torch.autograd.grad(out, leaves, grad_out))

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for x, y in zip(a, c):
        assert not torch.equal(x, y)
    assert not torch.allclose(a[0], LONGNET(q, k, v, DROP_SEGS, DROP_RATES, 0.0, causal))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_dropout_p_one_gives_zeros_and_zero_gradients(dtype):
    q, k, v, _ = inputs(1, 19, 3, 3, dtype=dtype, seed=31)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out = seeded(0, q, k, v, 1.0, causal=True)
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.count_nonzero(out) == 0
    out.backward(torch.ones_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and torch.count_nonzero(t.grad) == 0


def test_dropout_p_zero_equals_no_dropout_exactly():
    q, k, v, _ = inputs(2, 21, 4, 2, dtype=torch.float32, seed=32)
    torch.manual_seed(0)
    explicit = LONGNET(q, k, v, DROP_SEGS, DROP_RATES, 0.0, True, None)
    default = LONGNET(q, k, v, DROP_SEGS, DROP_RATES, is_causal=True)
    assert torch.equal(explicit, default)
    torch.manual_seed(123)
    assert torch.equal(LONGNET(q, k, v, DROP_SEGS, DROP_RATES, 0.0, True, None), explicit)


def test_dropout_mean_over_seeds_approximates_no_dropout():
    q, k, v, _ = inputs(1, 16, 2, 2, dtype=torch.float32, seed=33, head_dim=8)
    expected = LONGNET(q, k, v, DROP_SEGS, DROP_RATES, 0.0, False, None)
    outs = torch.stack([seeded(s, q, k, v, 0.3) for s in range(200)])
    err = (outs.mean(0) - expected).abs()
    standard_error = outs.std(0) / math.sqrt(len(outs))
    assert err.mean() < 0.03, err.mean()
    assert bool((err <= 5 * standard_error + 1e-6).all()), (err / standard_error).max()
    assert (outs[0] - expected).abs().mean() > 3 * err.mean()


@pytest.mark.parametrize("segs, rates, causal, masked", [
    ([4, 8], [1, 2], False, False),
    ([4, 8, 16], [1, 2, 4], True, False),
    ([3, 8], [2, 1], True, True),
])
def test_dropout_gradcheck_with_a_fixed_seed(segs, rates, causal, masked):
    """Re-seeding before every call fixes the mask: finite differences of the forward match the
    analytic backward, so backward uses the forward's masks."""
    q, k, v, _ = inputs(1, 10, 3, 1, seed=34, head_dim=2)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    mask = (torch.arange(10) % 4 == 1)[None] if masked else None

    def fn(q, k, v):
        torch.manual_seed(1234)
        return LONGNET(q, k, v, segs, rates, 0.5, causal, None, mask)

    assert torch.count_nonzero(fn(*leaves) - LONGNET(*leaves, segs, rates, 0.0, causal, None, mask))
    assert torch.autograd.gradcheck(fn, leaves)


def weight_probe(n, batch=4):
    """v[b, m, 0] = e_m and one head: the output rows are the (dropped-out) weights over keys."""
    q, k, _, _ = inputs(batch, n, 1, 1, seed=35, head_dim=n)
    v = torch.eye(n, dtype=torch.float64).expand(batch, n, n).unsqueeze(2).contiguous()
    return q, k, v


def test_dropout_drops_weights_with_inverted_scaling():
    n, p = 32, 0.25
    q, k, v = weight_probe(n)
    weights = longnet_reference(q, k, v, [n], [1])
    out = seeded(11, q, k, v, p, segs=[n], rates=[1])
    kept = out != 0
    torch.testing.assert_close(out[kept], weights[kept] / (1 - p), atol=1e-12, rtol=1e-12)
    dropped = 1 - kept.double().mean().item()
    assert abs(dropped - p) < 0.03, dropped


def test_dropout_is_independent_per_branch():
    """Two identical dense branches: each key weighs w/2 in each; with independent masks an
    entry is 0, w/2/(1-p) (one branch kept it) or w/(1-p) (both), the middle case with
    probability 2p(1-p). The same mask in both branches would never give it."""
    n, p = 32, 0.3
    q, k, v = weight_probe(n)
    weights = longnet_reference(q, k, v, [n], [1])
    out = seeded(12, q, k, v, p, segs=[n, n], rates=[1, 1])
    half = torch.isclose(out, weights / 2 / (1 - p), atol=1e-12, rtol=1e-10) & (out != 0)
    full = torch.isclose(out, weights / (1 - p), atol=1e-12, rtol=1e-10) & (out != 0)
    assert bool((half | full | (out == 0)).all())
    frac_half = half.double().mean().item()
    frac_full = full.double().mean().item()
    assert abs(frac_half - 2 * p * (1 - p)) < 0.04, frac_half
    assert abs(frac_full - (1 - p) ** 2) < 0.04, frac_full


def test_dropout_with_padding_keeps_padded_keys_at_zero_weight():
    n, p = 16, 0.3
    q, k, v = weight_probe(n)
    gen = torch.Generator().manual_seed(36)
    mask = torch.rand(4, n, generator=gen) < 0.4
    mask[:, 0] = False
    mask[3] = True
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    out = seeded(13, q, k, v, p, segs=[n, 8], rates=[1, 2], causal=True, mask=mask)
    assert torch.count_nonzero(out[..., 0, :][mask[:, None, :].expand(4, n, n)]) == 0
    assert torch.count_nonzero(out[3]) == 0
    out.backward(torch.ones_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all() and torch.count_nonzero(t.grad[3]) == 0
