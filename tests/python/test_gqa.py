"""Grouped-query and multi-query attention: key/value with H_kv heads, H_kv dividing H.

Query head h reads key/value head h // (H // H_kv). Checked against the float64 reference, which
indexes the shared head explicitly (reference.py), and against the same op given repeat_kv'd
key/value (one head per query head), whose gradients summed over the repeats are dK and dV.
"""

import math

import pytest
import torch
import torch._dynamo.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import TOLERANCES, recommended_ops
from layouts import LAYOUTS, storage_size
from reference import dilated_attention_reference

OP = torch.ops.dilated_attention.dilated_attention

# (H, H_kv, segment_lengths, dilation_rates): groups that align with the shared heads, groups
# that split them (8 heads in groups of 3, 3, 2 over 2 key/value heads), multi-query, r > 1,
# offsets, H_kv = H.
CONFIGS = [
    (8, 2, [8, 16, 32], [1, 2, 4]),
    (8, 1, [16, 32], [1, 2]),
    (6, 3, [8, 16], [1, 2]),
    (12, 4, [8, 16, 32, 32], [1, 2, 2, 4]),
    (5, 1, [8, 32], [2, 3]),
    (4, 4, [8], [1]),
    (32, 8, [16, 32], [1, 2]),
]


def config_id(c):
    return f"H{c[0]}-Hkv{c[1]}-s{'.'.join(map(str, c[2]))}-r{'.'.join(map(str, c[3]))}"


def repeat_kv(x, heads):
    """transformers' repeat_kv on [B, N, H_kv, D]: head h of the result is head h // (H / H_kv)."""
    return x.repeat_interleave(heads // x.shape[2], dim=2)


def gqa_inputs(B, N, H, H_kv, D, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    make = lambda heads: torch.randn(B, N, heads, D, dtype=torch.float64, generator=gen).to(dtype)
    return make(H), make(H_kv), make(H_kv), make(H)


def forward_and_grads(q, k, v, grad_out, segs, rates, causal, scale=None, dropout_p=0.0, op=OP,
                      extra=()):
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = op(*leaves, segs, rates, dropout_p, causal, scale, *extra)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return (out, *grads)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_forward_and_gradients_match_the_reference(config, causal, dtype):
    H, H_kv, segs, rates = config
    q, k, v, grad_out = gqa_inputs(2, 64, H, H_kv, 8, dtype, seed=H * 31 + H_kv)
    got = forward_and_grads(q, k, v, grad_out, segs, rates, causal)
    expected = forward_and_grads(q.double(), k.double(), v.double(), grad_out.double(), segs,
                                 rates, causal, op=dilated_attention_reference_op)
    assert got[0].shape == q.shape
    assert got[2].shape == k.shape and got[3].shape == v.shape
    atol, rtol = TOLERANCES[dtype]
    scale = 10 if dtype == torch.bfloat16 else 1  # dK sums H / H_kv rounded bf16 gradients
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        torch.testing.assert_close(g.double(), e, atol=atol * scale, rtol=rtol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def dilated_attention_reference_op(q, k, v, segs, rates, dropout_p, causal, scale):
    assert dropout_p == 0.0
    return dilated_attention_reference(q, k, v, segs, rates, causal, scale)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", CONFIGS[:4], ids=config_id)
def test_equals_the_op_on_repeated_key_values(config, causal, dropout_p):
    """The same function as repeat_kv + op, dropout included (its mask is per query head), with
    dK / dV the repeated heads' gradients summed."""
    H, H_kv, segs, rates = config
    q, k, v, grad_out = gqa_inputs(1, 32, H, H_kv, 4, torch.float64, seed=7)
    torch.manual_seed(11)
    got = forward_and_grads(q, k, v, grad_out, segs, rates, causal, dropout_p=dropout_p)
    torch.manual_seed(11)
    rk, rv = (repeat_kv(t, H).detach().requires_grad_(True) for t in (k, v))
    ql = q.detach().requires_grad_(True)
    out = OP(ql, rk, rv, segs, rates, dropout_p, causal, None)
    dq, drk, drv = torch.autograd.grad(out, (ql, rk, rv), grad_out)
    share = H // H_kv
    fold = lambda g: g.unflatten(2, (H_kv, share)).sum(3)
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, (out, dq, fold(drk), fold(drv))):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("layout", ["transposed_cache", "sequence_first", "expanded_heads"])
def test_key_value_layouts(layout):
    """transformers' cache layout [B, H_kv, N, D] seen as [B, N, H_kv, D], sequence-first storage,
    and heads expanded from one (stride 0, overlapping): all give the reference."""
    H, H_kv, segs, rates = 8, 2, [8, 16], [1, 2]
    q, k, v, grad_out = gqa_inputs(2, 32, H, H_kv, 8, torch.float64, seed=3)
    if layout == "transposed_cache":
        k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (k, v))
    elif layout == "sequence_first":
        k, v = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (k, v))
    else:
        k, v = (t[:, :, :1].expand(-1, -1, H_kv, -1) for t in (k, v))
    assert not k.is_contiguous()
    got = forward_and_grads(q, k, v, grad_out, segs, rates, True)
    expected = forward_and_grads(q, k.contiguous(), v.contiguous(), grad_out, segs, rates, True,
                                 op=dilated_attention_reference_op)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


def test_non_finite_key_reaches_only_the_rows_and_heads_that_see_it():
    """A NaN in key head 0 at position 5, causal: query heads 0..3 (which share it) are NaN from
    row 5 on in the groups whose segment holds position 5; heads 4..7 stay finite."""
    H, H_kv, segs, rates = 8, 2, [8, 16], [1, 1]
    q, k, v, _ = gqa_inputs(1, 16, H, H_kv, 4, torch.float32, seed=5)
    k[0, 5, 0, 1] = float("nan")
    out = OP(q, k, v, segs, rates, 0.0, True, None)
    ref = dilated_attention_reference(q, k, v, segs, rates, True)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert torch.isnan(out[0, 5:8, :4]).all()
    assert torch.isfinite(out[0, :5]).all() and torch.isfinite(out[0, :, 4:]).all()


def test_gradcheck():
    q, k, v, _ = gqa_inputs(1, 8, 4, 2, 3, torch.float64, seed=1)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda *x: OP(*x, [4, 8], [1, 2], 0.0, causal, None), leaves)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    q, k, v, _ = gqa_inputs(2, 16, 6, 2, 8, torch.float32, seed=2)
    args = [t.requires_grad_(requires_grad) for t in (q, k, v)]
    torch.library.opcheck(OP.default, (*args, [8, 16], [1, 2], 0.0, True, None))


def test_meta_shapes_of_the_internal_ops():
    q = torch.empty(2, 32, 8, 16, device="meta")
    k = v = torch.empty(2, 32, 2, 16, device="meta")
    out, lse, rng = torch.ops.dilated_attention._dilated_attention_forward(
        q, k, v, [8, 16], [1, 2], 0.0, False, None)
    assert out.shape == q.shape and lse.shape == (2, 32, 8)
    dq, dk, dv = torch.ops.dilated_attention._dilated_attention_backward(
        out, q, k, v, out, lse, rng, [8, 16], [1, 2], 0.0, False, None)
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


def test_compile_fullgraph_with_dynamic_length():
    counter = torch._dynamo.testing.CompileCounter()
    fn = torch.compile(lambda q, k, v: OP(q, k, v, [8, 16], [1, 2], 0.0, True, None),
                       backend=counter, fullgraph=True, dynamic=True)
    for n in (32, 48):
        q, k, v, _ = gqa_inputs(1, n, 8, 2, 8, torch.float32, seed=n)
        torch.testing.assert_close(fn(q, k, v), OP(q, k, v, [8, 16], [1, 2], 0.0, True, None))
    assert counter.frame_count == 1


def test_torchscript():
    @torch.jit.script
    def scripted(q, k, v):
        return torch.ops.dilated_attention.dilated_attention(q, k, v, [8, 16], [1, 2], 0.0, True,
                                                             None)

    q, k, v, _ = gqa_inputs(1, 32, 4, 1, 8, torch.float32)
    torch.testing.assert_close(scripted(q, k, v), OP(q, k, v, [8, 16], [1, 2], 0.0, True, None))


@pytest.mark.parametrize("H, H_kv", [(8, 3), (4, 8), (6, 4)])
def test_heads_not_a_multiple_is_a_value_error_naming_both(H, H_kv):
    q, k, v, _ = gqa_inputs(1, 16, H, H_kv, 4, torch.float32)
    with pytest.raises(ValueError, match=rf"^Shape mismatch at dimension 2: query has size {H}, "
                                         rf"key has size {H_kv}; the number of key/value heads "
                                         "must divide the number of query heads"):
        OP(q, k, v, [8], [1])


def test_zero_key_heads_is_a_value_error():
    q = torch.randn(1, 16, 4, 4)
    k = v = torch.randn(1, 16, 0, 4)
    with pytest.raises(ValueError, match="query has size 4, key has size 0"):
        OP(q, k, v, [8], [1])


def test_value_heads_must_match_key_heads():
    q = torch.randn(1, 16, 4, 4)
    k, v = torch.randn(1, 16, 2, 4), torch.randn(1, 16, 4, 4)
    with pytest.raises(ValueError, match="^Shape mismatch at dimension 2: query has size 4, key "
                                         "has size 2, value has size 4; key and value must have "
                                         "the same number of heads"):
        OP(q, k, v, [8], [1])


def test_other_dimensions_must_still_match_the_query():
    q = torch.randn(1, 16, 4, 4)
    k = torch.randn(1, 16, 2, 8)
    with pytest.raises(ValueError, match="^Shape mismatch at dimension 3: query has size 4, key "
                                         "has size 8"):
        OP(q, k, k, [8], [1])


# ----- property-based: drawn shapes, layouts, sharing ratios -----

PROPERTY_OPS = ["dilated_attention"] + recommended_ops(signature="attention")


@st.composite
def gqa_problems(draw):
    num_groups = draw(st.integers(1, 3))
    key_heads = draw(st.integers(1, 3))
    heads = key_heads * draw(st.integers(1, 4))
    if heads < num_groups:
        heads = key_heads * math.ceil(num_groups / key_heads)
    segments, rates = [], []
    for g in range(num_groups):
        rate = draw(st.integers(1, 4))
        segments.append(draw(st.sampled_from([s for s in (1, 2, 4, 8) if s > g % rate])))
        rates.append(rate)
    unit = math.lcm(*segments)
    seq_len = unit * draw(st.integers(0, max(0, 16 // unit)))
    return (draw(st.integers(0, 2)), seq_len, heads, key_heads, draw(st.sampled_from([1, 4, 8])),
            segments, rates)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(problem=gqa_problems(), layout=st.sampled_from(sorted(LAYOUTS)),
       dtype=st.sampled_from([torch.float64, torch.float32]), causal=st.booleans(),
       op_name=st.sampled_from(PROPERTY_OPS), seed=st.integers(0, 2**16))
def test_property_forward_and_gradients_match_the_reference(problem, layout, dtype, causal,
                                                            op_name, seed):
    B, N, H, H_kv, D, segments, rates = problem
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, N, H, D), (B, N, H_kv, D), (B, N, H_kv, D)]
    bases = [torch.randn(storage_size(s), dtype=torch.float64, generator=gen).requires_grad_(True)
             for s in shapes]
    views = [LAYOUTS[layout](b, s) for b, s in zip(bases, shapes)]
    grad_out = torch.randn(shapes[0], dtype=torch.float64, generator=gen)
    op_bases = [b.detach().to(dtype).requires_grad_(True) for b in bases]
    op_views = [LAYOUTS[layout](b, s) for b, s in zip(op_bases, shapes)]
    op = getattr(torch.ops.dilated_attention, op_name)
    extra = () if op_name == "dilated_attention" else ("",)
    out = op(*op_views, segments, rates, 0.0, causal, None, *extra)
    assert out.shape == shapes[0]
    ref = dilated_attention_reference(*views, segments, rates, causal)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    if out.numel() == 0:
        return
    got = torch.autograd.grad(out, op_bases, grad_out.to(dtype))
    expected = torch.autograd.grad(ref, bases, grad_out)
    for name, g, e in zip("qkv", got, expected):
        torch.testing.assert_close(g.double(), e, atol=atol * 10, rtol=rtol * 10,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("scale", [-1.0, -0.3, -1e-300], ids=str)
def test_negative_scales_match_the_reference(scale, causal):
    """ATen's CPU flash kernel gives NaN for a negative scale under causal masking; the blocks
    pass it the negated queries and |scale| instead (found by the adversarial pass)."""
    q, k, v, grad_out = gqa_inputs(1, 32, 4, 2, 8, torch.float64, seed=13)
    got = forward_and_grads(q, k, v, grad_out, [8, 16], [1, 2], causal, scale)
    expected = forward_and_grads(q, k, v, grad_out, [8, 16], [1, 2], causal, scale,
                                 op=dilated_attention_reference_op)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-10)


def test_internal_forward_ops_refuse_a_derivative_clearly():
    """Called by hand on inputs that require grad, the internal forward ops say they have no
    derivative instead of carrying a graph of ATen's internals that fails obscurely."""
    q = torch.randn(1, 8, 2, 4, requires_grad=True)
    out, _, _ = torch.ops.dilated_attention._dilated_attention_forward(q, q, q, [8], [1], 0.0,
                                                                      False, None)
    with pytest.raises(RuntimeError, match="derivative for dilated_attention::"
                                           "_dilated_attention_forward is not implemented"):
        out.sum().backward()
    packed = torch.randn(8, 2, 4, requires_grad=True)
    out, _, _ = torch.ops.dilated_attention._dilated_attention_varlen_forward(
        packed, packed, packed, torch.tensor([0, 8]), 8, [8], [1], 0.0, False, None)
    with pytest.raises(RuntimeError, match="_dilated_attention_varlen_forward is not implemented"):
        out.sum().backward()
