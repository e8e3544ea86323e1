"""key_padding_mask: bool [B, N], True = padding. A padded key is excluded from every softmax; a
query that sees no key at all (its dilated segment, after causal masking, minus padded keys) gets
output 0 and gradient 0, never NaN. Checked against the float64 reference, which computes every
row over its explicit set of visible keys (reference.py)."""

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

# (H, H_kv, segment_lengths, dilation_rates)
CONFIGS = [
    (4, 4, [8, 16], [1, 2]),
    (6, 3, [8, 16, 32], [1, 2, 4]),   # uneven groups split over shared heads
    (5, 1, [32], [3]),                # multi-query, offsets past short segments
    (8, 2, [64], [1]),                # one block of 64 keys (ATen's long-block path)
]


def config_id(c):
    return f"H{c[0]}-Hkv{c[1]}-s{'.'.join(map(str, c[2]))}-r{'.'.join(map(str, c[3]))}"


def inputs(B, N, H, H_kv, D, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    make = lambda heads: torch.randn(B, N, heads, D, dtype=torch.float64, generator=gen).to(dtype)
    return make(H), make(H_kv), make(H_kv), make(H)


def masks(B, N, seed):
    """Random padding, plus a left-padded row, a right-padded row and a fully padded row."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, N, generator=gen) < 0.3
    mask[0, : N // 3] = True
    mask[0, N // 3:] = False  # left padding: the first N/3 keys
    if B > 1:
        mask[1] = True          # every key of this batch row is padding
    if B > 2:
        mask[2, : N // 2] = False
        mask[2, N // 2:] = True  # right padding
    return mask


def run(op, q, k, v, grad_out, segs, rates, causal, mask, dropout_p=0.0, extra=()):
    leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
    out = op(*leaves, segs, rates, dropout_p, causal, None, *extra, key_padding_mask=mask)
    return (out, *torch.autograd.grad(out, leaves, grad_out))


def reference_op(q, k, v, segs, rates, dropout_p, causal, scale, key_padding_mask=None):
    assert dropout_p == 0.0
    return dilated_attention_reference(q, k, v, segs, rates, causal, scale, key_padding_mask)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
def test_forward_and_gradients_match_the_reference(config, causal, dtype):
    H, H_kv, segs, rates = config
    q, k, v, grad_out = inputs(3, 64, H, H_kv, 8, dtype, seed=H + 7 * H_kv)
    mask = masks(3, 64, seed=H)
    got = run(OP, q, k, v, grad_out, segs, rates, causal, mask)
    expected = run(reference_op, *(t.double() for t in (q, k, v, grad_out)), segs, rates, causal,
                   mask)
    atol, rtol = TOLERANCES[dtype]
    widen = 10 if dtype == torch.bfloat16 else 1
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.double(), e, atol=atol * widen, rtol=rtol * widen,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_rows_that_see_no_key_are_exactly_zero_with_zero_gradients():
    q, k, v, grad_out = inputs(2, 32, 4, 2, 8, torch.float32, seed=1)
    mask = torch.zeros(2, 32, dtype=torch.bool)
    mask[0] = True           # batch 0: nothing to see anywhere
    mask[1, :8] = True       # batch 1: the first 8-segment has no key; causal rows 8.. see some
    out, dq, dk, dv = run(OP, q, k, v, grad_out, [8], [1], True, mask)
    assert torch.count_nonzero(out[0]) == 0 and torch.count_nonzero(dq[0]) == 0
    assert torch.count_nonzero(out[1, :8]) == 0 and torch.count_nonzero(dq[1, :8]) == 0
    assert torch.count_nonzero(dk[0]) == 0 and torch.count_nonzero(dv[0]) == 0
    assert torch.count_nonzero(dk[1, :8]) == 0  # padded keys get no gradient
    assert torch.isfinite(out).all() and (out[1, 8:].abs().sum(-1) > 0).all()


def test_padded_keys_get_no_gradient_and_do_not_change_the_output():
    """Changing what padded K/V rows hold changes nothing."""
    q, k, v, grad_out = inputs(2, 32, 4, 4, 8, torch.float64, seed=2)
    mask = masks(2, 32, seed=2)
    a = run(OP, q, k, v, grad_out, [8, 16], [1, 2], False, mask)
    k2, v2 = k.clone(), v.clone()
    k2[mask] = 1e3
    v2[mask] = -7.0
    b = run(OP, q, k2, v2, grad_out, [8, 16], [1, 2], False, mask)
    for x, y in zip(a[:2], b[:2]):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=1e-12)
    assert torch.count_nonzero(a[2][mask]) == 0 and torch.count_nonzero(a[3][mask]) == 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_non_finite_padding_does_not_leak(value, causal):
    """Padding often holds garbage (torch.empty): a NaN or inf in a padded key or value row
    reaches nobody, forward or backward."""
    q, k, v, grad_out = inputs(2, 64, 4, 2, 8, torch.float32, seed=3)
    mask = torch.zeros(2, 64, dtype=torch.bool)
    mask[:, 40:] = True
    k[:, 50] = value
    v[:, 45] = value
    got = run(OP, q, k, v, grad_out, [16, 64], [1, 2], causal, mask)
    for name, g in zip(["out", "dq", "dk", "dv"], got):
        assert torch.isfinite(g).all(), name
    clean_k, clean_v = k.clone(), v.clone()
    clean_k[mask], clean_v[mask] = 0.0, 0.0
    expected = run(reference_op, *(t.double() for t in (q, clean_k, clean_v, grad_out)),
                   [16, 64], [1, 2], causal, mask)
    for name, g, e in zip(["out", "dq", "dk", "dv"], got, expected):
        torch.testing.assert_close(g.double(), e, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_a_mask_of_no_padding_is_exactly_no_mask():
    q, k, v, grad_out = inputs(2, 32, 4, 2, 8, torch.float32, seed=4)
    none = torch.zeros(2, 32, dtype=torch.bool)
    for dropout_p in (0.0, 0.25):
        torch.manual_seed(3)
        a = run(OP, q, k, v, grad_out, [8, 16], [1, 2], True, None, dropout_p)
        torch.manual_seed(3)
        b = run(OP, q, k, v, grad_out, [8, 16], [1, 2], True, none, dropout_p)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dropout_drops_and_rescales_only_the_visible_weights(causal):
    """v = identity: each output row is that row's dropped-out weights. Padded keys weigh
    exactly 0; every other weight is 0 (dropped) or softmax over the visible keys / (1 - p)."""
    n, p = 16, 0.3
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(4, n, 1, n, dtype=torch.float64, generator=gen)
    k = torch.randn(4, n, 1, n, dtype=torch.float64, generator=gen)
    v = torch.eye(n, dtype=torch.float64).expand(4, n, n).unsqueeze(2).contiguous()
    mask = torch.rand(4, n, generator=gen) < 0.4
    mask[:, 0] = False
    torch.manual_seed(0)
    out = OP(q, k, v, [n], [1], p, causal, None, mask)[:, :, 0]
    ref = dilated_attention_reference(q, k, v, [n], [1], causal, None, mask)[:, :, 0]
    assert torch.count_nonzero(out[mask[:, None, :].expand_as(out)]) == 0
    kept = out != 0
    torch.testing.assert_close(out[kept], ref[kept] / (1 - p), atol=1e-12, rtol=1e-12)
    assert 0.5 < kept.sum() / (ref != 0).sum() < 0.9  # about 1 - p of the weights survive


def test_gradcheck():
    q, k, v, _ = inputs(2, 8, 2, 1, 3, torch.float64, seed=6)
    mask = torch.tensor([[True, False, True, False, False, False, True, True],
                         [True, True, True, True, False, False, False, False]])
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda *x: OP(*x, [4, 8], [1, 2], 0.0, causal, None, mask), leaves)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    q, k, v, _ = inputs(2, 16, 4, 2, 8, torch.float32, seed=7)
    args = [t.requires_grad_(requires_grad) for t in (q, k, v)]
    torch.library.opcheck(OP.default, (*args, [8, 16], [1, 2], 0.0, True, None, masks(2, 16, 7)))


def test_compile_fullgraph_with_dynamic_length():
    counter = torch._dynamo.testing.CompileCounter()
    fn = torch.compile(lambda q, k, v, m: OP(q, k, v, [8, 16], [1, 2], 0.0, True, None, m),
                       backend=counter, fullgraph=True, dynamic=True)
    for n in (32, 48):
        q, k, v, _ = inputs(2, n, 4, 2, 8, torch.float32, seed=n)
        m = masks(2, n, n)
        torch.testing.assert_close(fn(q, k, v, m), OP(q, k, v, [8, 16], [1, 2], 0.0, True, None, m))
    assert counter.frame_count == 1


def test_torchscript():
    @torch.jit.script
    def scripted(q, k, v, m: torch.Tensor):
        return torch.ops.dilated_attention.dilated_attention(q, k, v, [8, 16], [1, 2], 0.0, True,
                                                             None, m)

    q, k, v, _ = inputs(2, 32, 4, 1, 8, torch.float32, seed=8)
    m = masks(2, 32, 8)
    torch.testing.assert_close(scripted(q, k, v, m), OP(q, k, v, [8, 16], [1, 2], 0.0, True, None, m))


def test_meta_and_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k = torch.empty(2, 32, 4, 8), torch.empty(2, 32, 2, 8)
        out = OP(q, k, k, [8, 32], [1, 4], key_padding_mask=torch.empty(2, 32, dtype=torch.bool))
    assert out.shape == (2, 32, 4, 8)
    with pytest.raises(ValueError, match="key_padding_mask expected shape"):
        OP(torch.empty(2, 32, 4, 8, device="meta"), torch.empty(2, 32, 4, 8, device="meta"),
           torch.empty(2, 32, 4, 8, device="meta"), [8], [1],
           key_padding_mask=torch.empty(2, 16, dtype=torch.bool, device="meta"))


@pytest.mark.parametrize("mask, message", [
    (torch.zeros(2, 32), r"^key_padding_mask must be a bool tensor \(True = padding\), got dtype "
                         r"Float"),
    (torch.zeros(2, 32, dtype=torch.uint8), "key_padding_mask must be a bool tensor"),
    (torch.zeros(32, dtype=torch.bool), r"^key_padding_mask expected shape \[2, 32\] \(\[B, N\]"),
    (torch.zeros(2, 16, dtype=torch.bool), r"key_padding_mask expected shape \[2, 32\].*got "
                                           r"\[2, 16\]"),
    (torch.zeros(2, 32, 1, dtype=torch.bool), "key_padding_mask expected shape"),
    (torch.zeros(2, 32, dtype=torch.bool, device="meta"),
     "Device mismatch: query is on cpu, key_padding_mask is on meta"),
], ids=["float", "uint8", "1d", "rows", "3d", "device"])
def test_bad_masks_are_value_errors_naming_the_argument(mask, message):
    q, k, v, _ = inputs(2, 32, 4, 2, 8, torch.float32, seed=9)
    with pytest.raises(ValueError, match=message):
        OP(q, k, v, [8], [1], key_padding_mask=mask)
    ring = torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2
    with pytest.raises(ValueError, match=message):
        ring(q, k, v, [8], [1], key_padding_mask=mask)


def test_the_internal_ops_check_the_mask_too():
    q, k, v, _ = inputs(2, 32, 4, 4, 8, torch.float32, seed=10)
    bad = torch.zeros(2, 31, dtype=torch.bool)
    with pytest.raises(ValueError, match="key_padding_mask expected shape"):
        torch.ops.dilated_attention._dilated_attention_forward(q, k, v, [8], [1], 0.0, False, None,
                                                               bad)
    out, lse, rng = torch.ops.dilated_attention._dilated_attention_forward(
        q, k, v, [8], [1], 0.0, False, None, None)
    with pytest.raises(ValueError, match="key_padding_mask must be a bool tensor"):
        torch.ops.dilated_attention._dilated_attention_backward(
            out, q, k, v, out, lse, rng, [8], [1], 0.0, False, None, bad.float())


# ----- property-based: drawn shapes, layouts, masks, sharing ratios, core and 1-process ops -----

PROPERTY_OPS = ["dilated_attention"] + recommended_ops(signature="attention")


@st.composite
def problems(draw):
    num_groups = draw(st.integers(1, 3))
    key_heads = draw(st.integers(1, 2))
    heads = key_heads * max(draw(st.integers(1, 3)), math.ceil(num_groups / key_heads))
    segments, rates = [], []
    for g in range(num_groups):
        rate = draw(st.integers(1, 4))
        segments.append(draw(st.sampled_from([s for s in (1, 2, 4, 8) if s > g % rate])))
        rates.append(rate)
    seq_len = math.lcm(*segments) * draw(st.integers(0, max(0, 16 // math.lcm(*segments))))
    batch = draw(st.integers(0, 3))
    padding = draw(st.floats(0.0, 1.0))
    return (batch, seq_len, heads, key_heads, draw(st.sampled_from([1, 4, 8])), segments, rates,
            padding)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(problem=problems(), layout=st.sampled_from(sorted(LAYOUTS)),
       dtype=st.sampled_from([torch.float64, torch.float32]), causal=st.booleans(),
       op_name=st.sampled_from(PROPERTY_OPS), seed=st.integers(0, 2**16))
def test_property_forward_and_gradients_match_the_reference(problem, layout, dtype, causal,
                                                            op_name, seed):
    B, N, H, H_kv, D, segments, rates, padding = problem
    gen = torch.Generator().manual_seed(seed)
    shapes = [(B, N, H, D), (B, N, H_kv, D), (B, N, H_kv, D)]
    bases = [torch.randn(storage_size(s), dtype=torch.float64, generator=gen).requires_grad_(True)
             for s in shapes]
    views = [LAYOUTS[layout](b, s) for b, s in zip(bases, shapes)]
    mask = torch.rand(B, N, generator=gen) < padding
    grad_out = torch.randn(shapes[0], dtype=torch.float64, generator=gen)
    op_bases = [b.detach().to(dtype).requires_grad_(True) for b in bases]
    op_views = [LAYOUTS[layout](b, s) for b, s in zip(op_bases, shapes)]
    op = getattr(torch.ops.dilated_attention, op_name)
    extra = () if op_name == "dilated_attention" else ("",)
    out = op(*op_views, segments, rates, 0.0, causal, None, *extra, key_padding_mask=mask)
    ref = dilated_attention_reference(*views, segments, rates, causal, None, mask)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    if out.numel() == 0:
        return
    got = torch.autograd.grad(out, op_bases, grad_out.to(dtype))
    expected = (torch.autograd.grad(ref, bases, grad_out, allow_unused=True)
                if ref.requires_grad else (None, None, None))  # no row sees a key
    for name, g, e in zip("qkv", got, expected):
        e = torch.zeros_like(g, dtype=torch.float64) if e is None else e
        torch.testing.assert_close(g.double(), e, atol=atol * 10, rtol=rtol * 10,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


def test_the_projected_multihead_op_masks_the_keys():
    """_multihead_dilated_attention with a mask (one process) is its projections around the
    core op with the same mask."""
    E, H = 16, 4
    gen = torch.Generator().manual_seed(12)
    x, y = (torch.randn(2, 16, E, dtype=torch.float64, generator=gen) for _ in range(2))
    w = [torch.randn(E, E, dtype=torch.float64, generator=gen) / 4 for _ in range(4)]
    mask = masks(2, 16, 12)
    out = torch.ops.dilated_attention._multihead_dilated_attention(
        x, y, y, w[0], None, w[1], None, w[2], None, w[3], None, H, [8, 16], [1, 2], 0.0, True,
        None, "", "segment_ring", mask)
    heads = lambda t, i: torch.nn.functional.linear(t, w[i]).unflatten(-1, (H, E // H))
    attended = OP(heads(x, 0), heads(y, 1), heads(y, 2), [8, 16], [1, 2], 0.0, True, None, mask)
    torch.testing.assert_close(out, torch.nn.functional.linear(attended.flatten(-2), w[3]),
                               atol=1e-12, rtol=1e-12)


# ----- found by the adversarial pass -----

@pytest.mark.parametrize("op_name", ["dilated_attention"] + recommended_ops(signature="attention"))
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_padded_keys_get_zero_gradients_next_to_a_nan_row(op_name, causal):
    """A NaN key that rows see makes those rows (and their gradients) NaN, as in the reference,
    but a padded key is in no softmax: its gradients stay 0."""
    q = torch.randn(1, 4, 1, 2, dtype=torch.float64, requires_grad=True)
    k0 = torch.randn(1, 4, 1, 2, dtype=torch.float64)
    k0[0, 1, 0, 0] = float("nan")
    k = k0.requires_grad_()
    v = torch.randn(1, 4, 1, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[False, False, False, True]])
    op = getattr(torch.ops.dilated_attention, op_name)
    extra = () if op_name == "dilated_attention" else ("",)
    op(q, k, v, [4], [1], 0.0, causal, None, *extra, key_padding_mask=mask).sum().backward()
    assert torch.count_nonzero(k.grad[0, 3]) == 0 and torch.count_nonzero(v.grad[0, 3]) == 0
    assert torch.isnan(k.grad[0, 1]).any()  # the NaN key itself: NaN, as in the reference


@pytest.mark.parametrize("op_name", ["dilated_attention"] + recommended_ops(signature="attention"))
def test_a_non_finite_query_that_sees_no_key_gets_zero_gradients(op_name):
    q0 = torch.randn(1, 4, 1, 2, dtype=torch.float64)
    q0[0, 0] = float("nan")
    q = q0.requires_grad_()
    k = torch.randn(1, 4, 1, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 4, 1, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, False, False]])  # causal row 0 sees only key 0: padding
    op = getattr(torch.ops.dilated_attention, op_name)
    extra = () if op_name == "dilated_attention" else ("",)
    out = op(q, k, v, [4], [1], 0.0, True, None, *extra, key_padding_mask=mask)
    out.sum().backward()
    assert torch.count_nonzero(out[0, 0]) == 0
    assert torch.count_nonzero(q.grad[0, 0]) == 0 and torch.count_nonzero(k.grad[0, 0]) == 0
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
