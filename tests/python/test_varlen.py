"""dilated_attention_varlen: packed variable-length sequences, query [T, H, D], key/value
[T, H_kv, D], cu_seqlens [S + 1]. Every sequence is attended on its own with positions from its
first row; in every head group its last segment ends at its end (truncated). Checked against the
float64 reference with explicit truncated index sets (reference.py) and against
dilated_attention on sequences whose lengths are multiples of the segment lengths."""

import math

import pytest
import torch
import torch._dynamo.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TOLERANCES
from reference import dilated_attention_varlen_reference

VARLEN = torch.ops.dilated_attention.dilated_attention_varlen
CORE = torch.ops.dilated_attention.dilated_attention

# (H, H_kv, segment_lengths, dilation_rates, lengths)
CONFIGS = [
    (4, 4, [8, 16], [1, 2], [16, 0, 13, 1, 40]),     # empty and length-1 sequences, tails
    (6, 3, [8, 16, 32], [1, 2, 4], [50, 7, 32, 3]),  # shorter than s_g: one truncated segment
    (5, 1, [16, 32], [3, 4], [2, 33, 64]),           # offsets past short tails: zeros there
    (8, 2, [64], [1], [70, 64, 100]),                # a truncated tail of 64+ keys
]


def config_id(c):
    return f"H{c[0]}-Hkv{c[1]}-s{'.'.join(map(str, c[2]))}-r{'.'.join(map(str, c[3]))}"


def packed(lengths, H, H_kv, D, dtype, seed, index_dtype=torch.int32):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    make = lambda heads: torch.randn(total, heads, D, dtype=torch.float64, generator=gen).to(dtype)
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0).tolist()), dtype=index_dtype)
    return make(H), make(H_kv), make(H_kv), make(H), cu


def run(q, k, v, grad_out, cu, max_seqlen, segs, rates, causal, dropout_p=0.0, scale=None):
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = VARLEN(*leaves, cu, max_seqlen, segs, rates, dropout_p, causal, scale)
    return (out, *torch.autograd.grad(out, leaves, grad_out))


def reference(q, k, v, grad_out, cu, segs, rates, causal, scale=None):
    leaves = [t.detach().double().requires_grad_(True) for t in (q, k, v)]
    out = dilated_attention_varlen_reference(*leaves, cu, segs, rates, causal, scale)
    if not out.requires_grad:  # no row is attended
        return (out, None, None, None)
    return (out, *torch.autograd.grad(out, leaves, grad_out.double(), allow_unused=True))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_forward_and_gradients_match_the_reference(config, causal, dtype):
    H, H_kv, segs, rates, lengths = config
    q, k, v, grad_out, cu = packed(lengths, H, H_kv, 8, dtype, seed=H * 3 + H_kv)
    got = run(q, k, v, grad_out, cu, max(lengths), segs, rates, causal)
    expected = reference(q, k, v, grad_out, cu, segs, rates, causal)
    atol, rtol = TOLERANCES[dtype]
    widen = 10 if dtype == torch.bfloat16 else 1
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        assert g.shape == (q if name in ("out", "dq") else k).shape
        torch.testing.assert_close(g.double(), e, atol=atol * widen, rtol=rtol * widen,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_sequences_of_whole_segments_equal_the_core_op_on_each(causal):
    segs, rates = [8, 16], [1, 2]
    lengths = [32, 16, 48]
    q, k, v, grad_out, cu = packed(lengths, 4, 2, 8, torch.float64, seed=1, index_dtype=torch.int64)
    got = run(q, k, v, grad_out, cu, 48, segs, rates, causal)
    for i, length in enumerate(lengths):
        rows = slice(int(cu[i]), int(cu[i + 1]))
        one = [t[rows].unsqueeze(0).detach().requires_grad_(True) for t in (q, k, v)]
        out = CORE(*one, segs, rates, 0.0, causal, None)
        grads = torch.autograd.grad(out, one, grad_out[rows].unsqueeze(0))
        for g, e in zip(got, (out, *grads)):
            torch.testing.assert_close(g[rows], e[0], atol=1e-12, rtol=1e-12)


def test_one_sequence_of_any_length():
    """cu_seqlens = [0, N] runs a sequence whose length divides no segment length."""
    q, k, v, grad_out, cu = packed([37], 4, 4, 8, torch.float64, seed=2)
    with pytest.raises(ValueError, match="dilated_attention_varlen with cu_seqlens = \\[0, N\\]"):
        CORE(q[None], k[None], v[None], [8, 16], [1, 2])
    got = run(q, k, v, grad_out, cu, 37, [8, 16], [1, 2], True)
    expected = reference(q, k, v, grad_out, cu, [8, 16], [1, 2], True)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


def test_dropout_uses_sequence_and_position_coordinates():
    """A packed batch of equal sequences draws the mask of the core op on [B, N]: sequence i is
    batch i, positions count from its first row."""
    B, N, segs, rates = 3, 32, [8, 16], [1, 2]
    q, k, v, grad_out, cu = packed([N] * B, 4, 2, 8, torch.float64, seed=3)
    torch.manual_seed(7)
    got = run(q, k, v, grad_out, cu, N, segs, rates, True, dropout_p=0.3)
    torch.manual_seed(7)
    batched = [t.view(B, N, *t.shape[1:]).detach().requires_grad_(True) for t in (q, k, v)]
    out = CORE(*batched, segs, rates, 0.3, True, None)
    grads = torch.autograd.grad(out, batched, grad_out.view(B, N, *grad_out.shape[1:]))
    for g, e in zip(got, (out, *grads)):
        torch.testing.assert_close(g, e.reshape(g.shape), atol=1e-12, rtol=1e-12)
    assert not torch.allclose(got[0], run(q, k, v, grad_out, cu, N, segs, rates, True)[0])


def test_gradcheck():
    q, k, v, _, cu = packed([5, 0, 8, 3], 2, 1, 3, torch.float64, seed=4)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda *x: VARLEN(*x, cu, 8, [4, 8], [1, 2], 0.0, causal, None), leaves)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    q, k, v, _, cu = packed([12, 20, 1], 4, 2, 8, torch.float32, seed=5)
    args = [t.requires_grad_(requires_grad) for t in (q, k, v)]
    torch.library.opcheck(VARLEN.default, (*args, cu, 20, [8, 16], [1, 2], 0.0, True, None))


def test_compile_fullgraph_with_dynamic_total_length():
    """T and the number of sequences vary without a recompile; max_seqlen is an int of the
    schema, which the graph specializes on, so a fixed upper bound is passed (a larger
    max_seqlen is fine)."""
    counter = torch._dynamo.testing.CompileCounter()
    fn = torch.compile(lambda q, k, v, cu: VARLEN(q, k, v, cu, 64, [8, 16], [1, 2], 0.0, True),
                       backend=counter, fullgraph=True, dynamic=True)
    for lengths in ([10, 20], [7, 30, 3]):
        q, k, v, _, cu = packed(lengths, 4, 2, 8, torch.float32, seed=len(lengths))
        torch.testing.assert_close(fn(q, k, v, cu),
                                   VARLEN(q, k, v, cu, 64, [8, 16], [1, 2], 0.0, True))
    assert counter.frame_count == 1


def test_torchscript():
    @torch.jit.script
    def scripted(q, k, v, cu):
        return torch.ops.dilated_attention.dilated_attention_varlen(q, k, v, cu, 30, [8, 16],
                                                                    [1, 2], 0.0, True, None)

    q, k, v, _, cu = packed([30, 5], 4, 1, 8, torch.float32, seed=6)
    torch.testing.assert_close(scripted(q, k, v, cu),
                               VARLEN(q, k, v, cu, 30, [8, 16], [1, 2], 0.0, True, None))


def test_meta_shapes():
    q = torch.empty(40, 8, 16, device="meta")
    k = torch.empty(40, 2, 16, device="meta")
    cu = torch.empty(4, dtype=torch.int32, device="meta")
    out = VARLEN(q, k, k, cu, 40, [8, 16], [1, 2])
    assert out.shape == q.shape
    out, lse, rng = torch.ops.dilated_attention._dilated_attention_varlen_forward(
        q, k, k, cu, 40, [8, 16], [1, 2], 0.0, False, None)
    assert lse.shape == (40, 8)
    dq, dk, dv = torch.ops.dilated_attention._dilated_attention_varlen_backward(
        out, q, k, k, out, lse, rng, cu, 40, [8, 16], [1, 2], 0.0, False, None)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == k.shape


@pytest.mark.parametrize("cu, max_seqlen, message", [
    (torch.tensor([0.0, 10.0, 20.0]), 10, "^cu_seqlens must be an int32 or int64 tensor, got "
                                          "dtype Float"),
    (torch.tensor([[0, 10, 20]]), 10, r"^cu_seqlens must be 1-D \[S \+ 1\]"),
    (torch.tensor([], dtype=torch.int64), 10, r"^cu_seqlens must be 1-D \[S \+ 1\]"),
    (torch.tensor([1, 10, 20]), 10, "^cu_seqlens must start at 0, got 1"),
    (torch.tensor([0, 12, 8, 20]), 12, r"^cu_seqlens must be non-decreasing: cu_seqlens\[2\] = 8 "
                                       r"< cu_seqlens\[1\] = 12"),
    (torch.tensor([0, 10, 19]), 10, r"^cu_seqlens must end at the number of rows T = "
                                    r"query.size\(0\) = 20, got 19"),
    (torch.tensor([0, 10, 20], device="meta"), 10, "Device mismatch: query is on cpu, cu_seqlens "
                                                   "is on meta"),
    (torch.tensor([0, 4, 20]), 15, r"^max_seqlen \(15\) must be at least the longest sequence's "
                                   r"length \(16\)"),
    (torch.tensor([0, 10, 20]), -1, "^max_seqlen must be non-negative, got -1"),
], ids=["float", "2d", "empty", "start", "decreasing", "end", "device", "max_seqlen", "negative"])
def test_bad_cu_seqlens_and_max_seqlen_are_value_errors(cu, max_seqlen, message):
    q, k, v, _, _ = packed([10, 10], 4, 2, 8, torch.float32, seed=7)
    with pytest.raises(ValueError, match=message):
        VARLEN(q, k, v, cu, max_seqlen, [8], [1])


def test_a_larger_max_seqlen_is_fine():
    q, k, v, _, cu = packed([10, 10], 4, 2, 8, torch.float32, seed=8)
    torch.testing.assert_close(VARLEN(q, k, v, cu, 1000, [8], [1]), VARLEN(q, k, v, cu, 10, [8], [1]))


@pytest.mark.parametrize("shapes, message", [
    (((20, 4, 8), (20, 3, 8)), "^Shape mismatch at dimension 1: query has size 4, key has size 3"),
    (((20, 4, 8), (19, 2, 8)), "^Shape mismatch at dimension 0: query has size 20, key has size 19"),
    (((1, 20, 4, 8), (1, 20, 4, 8)), r"^query expected 3D tensor \[T, H, D\], got 4D"),
    (((20, 4, 8), (20, 4)), r"^key expected 3D tensor \[T, H, D\], got 2D"),
])
def test_bad_packed_inputs_are_value_errors(shapes, message):
    q, k = torch.randn(shapes[0]), torch.randn(shapes[1])
    with pytest.raises(ValueError, match=message):
        VARLEN(q, k, k, torch.tensor([0, 20]), 20, [8], [1])


# ----- property-based: drawn lengths (0 and 1 included), groups, rates, sharing ratios -----

@st.composite
def problems(draw):
    num_groups = draw(st.integers(1, 3))
    key_heads = draw(st.integers(1, 2))
    heads = key_heads * max(draw(st.integers(1, 3)), math.ceil(num_groups / key_heads))
    segments, rates = [], []
    for g in range(num_groups):
        rate = draw(st.integers(1, 4))
        segments.append(draw(st.sampled_from([s for s in (1, 2, 3, 4, 8) if s > g % rate])))
        rates.append(rate)
    lengths = draw(st.lists(st.integers(0, 20), min_size=0, max_size=4))
    return heads, key_heads, draw(st.sampled_from([1, 4])), segments, rates, lengths


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(problem=problems(), dtype=st.sampled_from([torch.float64, torch.float32]),
       causal=st.booleans(), layout=st.sampled_from(["contiguous", "head_major"]),
       seed=st.integers(0, 2**16))
def test_property_forward_and_gradients_match_the_reference(problem, dtype, causal, layout, seed):
    H, H_kv, D, segments, rates, lengths = problem
    q, k, v, grad_out, cu = packed(lengths, H, H_kv, D, dtype, seed)
    if layout == "head_major":  # [H, T, D] storage seen as [T, H, D]
        q, k, v = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (q, k, v))
    got = run(q, k, v, grad_out, cu, max(lengths, default=0), segments, rates, causal)
    if q.numel() == 0:
        assert all(g.numel() == 0 or not g.any() for g in got)
        return
    expected = reference(q, k, v, grad_out, cu, segments, rates, causal)
    atol, rtol = TOLERANCES[dtype]
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        e = torch.zeros_like(g, dtype=torch.float64) if e is None else e
        torch.testing.assert_close(g.double(), e, atol=atol * 10, rtol=rtol * 10,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_equals_padding_to_a_whole_segment_with_a_key_padding_mask(causal):
    """Truncating a segment at a sequence's end sees the same keys as padding the sequence to a
    whole segment and masking the padding: the real rows agree, forward and backward."""
    segs, rates, lengths, N = [8, 16], [1, 2], [13, 32, 5], 32
    q, k, v, grad_out, cu = packed(lengths, 4, 2, 8, torch.float64, seed=9)
    got = run(q, k, v, grad_out, cu, N, segs, rates, causal)
    pad = lambda t: torch.stack([torch.nn.functional.pad(t[int(cu[i]):int(cu[i + 1])],
                                                         (0, 0, 0, 0, 0, N - n))
                                 for i, n in enumerate(lengths)])
    mask = torch.arange(N)[None, :] >= torch.tensor(lengths)[:, None]
    padded = [pad(t).detach().requires_grad_(True) for t in (q, k, v)]
    out = CORE(*padded, segs, rates, 0.0, causal, None, mask)
    grads = torch.autograd.grad(out, padded, pad(grad_out))
    for g, e in zip(got, (out, *grads)):
        for i, n in enumerate(lengths):
            torch.testing.assert_close(g[int(cu[i]):int(cu[i + 1])], e[i, :n], atol=1e-12,
                                       rtol=1e-12)


def test_a_nan_key_stays_in_its_sequence_and_after_its_position():
    """Causal: a NaN key at row 5 of sequence 1 reaches that sequence's rows from 5 on in the
    heads and segments that see it, and nothing in the other sequences."""
    lengths = [12, 20, 9]
    q, k, v, grad_out, cu = packed(lengths, 4, 2, 8, torch.float32, seed=11)
    k[12 + 5, 0] = float("nan")
    got = run(q, k, v, grad_out, cu, 20, [8, 16], [1, 1], True)
    expected = reference(q, k, v, grad_out, cu, [8, 16], [1, 1], True)
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        torch.testing.assert_close(g.double(), e, atol=1e-5, rtol=1e-5, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert torch.isfinite(got[0][:12 + 5]).all() and torch.isfinite(got[0][32:]).all()
    assert torch.isnan(got[0][12 + 5]).any()


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_a_negative_scale_matches_the_reference(causal):
    q, k, v, grad_out, cu = packed([3, 7, 16], 2, 1, 4, torch.float64, seed=12)
    got = run(q, k, v, grad_out, cu, 16, [4, 8], [1, 2], causal, scale=-1.0)
    expected = reference(q, k, v, grad_out, cu, [4, 8], [1, 2], causal, scale=-1.0)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)
