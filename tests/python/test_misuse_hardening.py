"""Misuse that once crashed, aborted or answered wrongly: the internal ops' other tensors, double
backward, dilation rates near int64's limit, and the multi-head ops' projections. Each case
raises a ValueError (NotImplementedError for double backward) naming what is wrong, or computes
the reference's result."""

import pytest
import torch

from helpers import assert_close, op_params, recommended_ops
from reference import dilated_attention_reference

ops = torch.ops.dilated_attention
SHAPE = (1, 16, 4, 8)
SEGMENTS, RATES = [8, 16], [1, 2]


def _qkv(shape=SHAPE, dtype=torch.float32, requires_grad=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype).requires_grad_(requires_grad)
            for _ in range(3)]


# --- the internal backward ops check every tensor they take --------------------------------------

def _forward_results(dtype=torch.float32):
    q, k, v = _qkv(dtype=dtype)
    out, lse, rng = ops._dilated_attention_forward(q, k, v, SEGMENTS, RATES, 0.0, False, None)
    return q, k, v, out, lse, rng


def _core_backward(grad, q, k, v, out, lse, rng):
    return ops._dilated_attention_backward(grad, q, k, v, out, lse, rng, SEGMENTS, RATES, 0.0,
                                           False, None)


def _distributed_backward(grad, q, k, v, out, lse, rng):
    return ops._distributed_dilated_attention_backward(grad, q, k, v, out, lse, rng, SEGMENTS,
                                                       RATES, 0.0, False, None, "",
                                                       "segment_ring")


def _distributed_forward_results():
    q, k, v = _qkv()
    out, lse, rng = ops._distributed_dilated_attention_forward(
        q, k, v, SEGMENTS, RATES, 0.0, False, None, "", "segment_ring")
    return q, k, v, out, lse, rng


# (id, which argument to replace, its replacement from the valid ones, expected message)
BAD_BACKWARD_ARGUMENTS = [
    ("grad-one-row", 0, lambda q, lse, rng: q[:, :1].clone(),
     "Shape mismatch at dimension 1: query has size 16, grad_output has size 1"),
    ("grad-dtype", 0, lambda q, lse, rng: q.double(), "Dtype mismatch: query is Float, grad_output is Double"),
    ("grad-3d", 0, lambda q, lse, rng: q[0].clone(), "grad_output expected 4D tensor, got 3D"),
    ("output-heads", 4, lambda q, lse, rng: q[:, :, :2].clone(),
     "Shape mismatch at dimension 2: query has size 4, output has size 2"),
    ("lse-one-row", 5, lambda q, lse, rng: lse[:, :1].clone(),
     "softmax_lse expected shape [1, 16, 4], got [1, 1, 4]"),
    ("lse-dtype", 5, lambda q, lse, rng: lse.half(), "softmax_lse expected dtype Float, got Half"),
    ("rng-short", 6, lambda q, lse, rng: rng[:1].clone(), "rng_state expected 2 int64 values"),
    ("rng-dtype", 6, lambda q, lse, rng: rng.float(), "rng_state expected 2 int64 values"),
]


@pytest.mark.parametrize("position, replacement, message",
                         [pytest.param(*case[1:], id=case[0]) for case in BAD_BACKWARD_ARGUMENTS])
@pytest.mark.parametrize("which", ["core", "distributed"])
def test_internal_backward_rejects_bad_tensors(which, position, replacement, message):
    results = _forward_results() if which == "core" else _distributed_forward_results()
    q, k, v, out, lse, rng = results
    args = [torch.randn_like(q), q, k, v, out, lse, rng]
    args[position] = replacement(q, lse, rng)
    backward = _core_backward if which == "core" else _distributed_backward
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        backward(*args)


def test_internal_backward_rejects_bad_tensors_under_meta():
    q, k, v, out, lse, rng = (t.to("meta") for t in _forward_results())
    with pytest.raises(ValueError, match="softmax_lse expected shape"):
        _core_backward(torch.empty_like(q), q, k, v, out, lse[:, :1], rng)


def test_internal_backward_accepts_its_forward_results():
    q, k, v, out, lse, rng = _forward_results()
    grad = torch.randn_like(q)
    got = _core_backward(grad, q, k, v, out, lse, rng)
    assert all(g.shape == q.shape for g in got)


# --- double backward -------------------------------------------------------------------------------

DOUBLE_BACKWARD = "does not support double backward \\(create_graph=True\\)"


@pytest.mark.parametrize("dropout_p", [0.0, 0.3], ids=["no-dropout", "dropout"])
def test_core_double_backward_is_refused(dropout_p):
    q, k, v = _qkv(requires_grad=True)
    out = ops.dilated_attention(q, k, v, SEGMENTS, RATES, dropout_p)
    (grad_q,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="dilated_attention " + DOUBLE_BACKWARD):
        grad_q.sum().backward()


@pytest.mark.parametrize("op_name", op_params(recommended_ops(signature="attention")))
def test_distributed_double_backward_is_refused(op_name):
    q, k, v = _qkv(requires_grad=True)
    out = getattr(ops, op_name)(q, k, v, SEGMENTS, RATES, 0.0, False, None, "")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v), create_graph=True)
    with pytest.raises(RuntimeError, match=DOUBLE_BACKWARD):
        torch.autograd.grad(sum(g.sum() for g in grads), (q, k, v))


def test_first_order_gradients_under_create_graph_are_exact():
    """create_graph=True alone (a gradient penalty through other paths) gets the gradients."""
    q, k, v = _qkv(requires_grad=True, dtype=torch.float64)
    loss = lambda q, k, v: ops.dilated_attention(q, k, v, SEGMENTS, RATES).square().sum()
    plain = torch.autograd.grad(loss(q, k, v), (q, k, v))
    recorded = torch.autograd.grad(loss(q, k, v), (q, k, v), create_graph=True)
    for a, b in zip(plain, recorded):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
        assert b.requires_grad  # the error node waits for a second differentiation


# --- dilation rates of any size the schema takes --------------------------------------------------

@pytest.mark.parametrize("rate", [2**59, 2**62, 2**63 - 1])
def test_huge_dilation_rates_match_the_reference(rate):
    q, k, v = _qkv(shape=(2, 8, 2, 4), dtype=torch.float64, requires_grad=True, seed=3)
    segments, rates = [4, 8], [1, rate]
    out = ops.dilated_attention(q, k, v, segments, rates)
    ref = dilated_attention_reference(q, k, v, segments, rates)
    assert_close(out, ref, torch.float64, f"rate {rate}")
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v))
    for got, expected in zip(grads, ref_grads):
        assert_close(got, expected, torch.float64, f"rate {rate} gradient")


@pytest.mark.parametrize("op_name", op_params(recommended_ops(signature="attention")))
def test_huge_dilation_rates_on_the_distributed_ops(op_name):
    q, k, v = _qkv(shape=(1, 8, 2, 4), dtype=torch.float64, seed=4)
    segments, rates = [8, 8], [2**62, 3]
    out = getattr(ops, op_name)(q, k, v, segments, rates, 0.0, False, None, "")
    assert_close(out, dilated_attention_reference(q, k, v, segments, rates), torch.float64,
                 op_name)


# --- the multi-head ops check their projections before any work ---------------------------------

E, HEADS = 16, 2


def _projected_call(**replace):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, E, generator=gen)
    tensors = dict(query=x, key=x, value=x)
    for name in ("q", "k", "v", "out"):
        tensors[f"{name}_weight"] = torch.randn(E, E, generator=gen)
        tensors[f"{name}_bias"] = torch.randn(E, generator=gen)
    tensors.update(replace)
    t = tensors
    return ops._multihead_dilated_attention(
        t["query"], t["key"], t["value"], t["q_weight"], t["q_bias"], t["k_weight"],
        t["k_bias"], t["v_weight"], t["v_bias"], t["out_weight"], t["out_bias"],
        t.get("num_heads", HEADS), [8, 16], [1, 2], 0.0, False, None, "", "segment_ring")


PROJECTION_MISUSE = [
    ("query-4d", dict(query=torch.randn(1, 16, 2, 8)),
     "Expected 3D tensors \\[B, N, E\\], got query with 4 dimensions"),
    ("value-2d", dict(value=torch.randn(16, E)),
     "Expected 3D tensors \\[B, N, E\\], got value with 2 dimensions"),
    ("key-embedding", dict(key=torch.randn(1, 16, 12)),
     "key has embedding dimension 12, expected 16 \\(the input size of k_weight\\)"),
    ("key-dtype", dict(key=torch.randn(1, 16, E, dtype=torch.float64)),
     "Dtype mismatch: query is Float, key is Double"),
    ("weight-1d", dict(q_weight=torch.randn(E)), "q_weight expected 2D tensor"),
    ("bias-shape", dict(v_bias=torch.randn(E + 1)), "v_bias expected shape \\[16\\], got \\[17\\]"),
    ("bias-dtype", dict(k_bias=torch.randn(E, dtype=torch.float64)),
     "Dtype mismatch: query is Float, k_bias is Double"),
    ("heads-split", dict(num_heads=3), "q_weight has 16 output features, which must be divisible"),
    ("num-heads", dict(num_heads=0), "num_heads must be positive, got 0"),
    ("k-features", dict(k_weight=torch.randn(8, E), k_bias=None),
     "q_weight, k_weight and v_weight must have the same number of output features"),
    ("out-input", dict(out_weight=torch.randn(E, 8)),
     "the merged heads has embedding dimension 16, expected 8"),
]


@pytest.mark.parametrize("replace, message",
                         [pytest.param(*case[1:], id=case[0]) for case in PROJECTION_MISUSE])
def test_projected_op_rejects_bad_projections(replace, message):
    with pytest.raises(ValueError, match=message):
        _projected_call(**replace)


def test_projected_op_accepts_valid_projections():
    assert _projected_call().shape == (1, 16, E)


def test_fused_self_attention_rejects_bad_projections():
    x = torch.randn(1, 16, E)
    qkv_w, out_w = torch.randn(3 * E, E), torch.randn(E, E)
    call = lambda x, qkv_w, out_w, heads=HEADS: ops.ring_multihead_dilated_attention(
        x, qkv_w, None, out_w, None, heads, [8, 16], [1, 2], 0.0, False, None, "")
    assert call(x, qkv_w, out_w).shape == x.shape
    with pytest.raises(ValueError, match="Expected 3D tensors"):
        call(x[0], qkv_w, out_w)
    with pytest.raises(ValueError, match="x has embedding dimension 8, expected 16"):
        call(torch.randn(1, 16, 8), qkv_w, out_w)
    with pytest.raises(ValueError, match="the 16 of each of query, key and value must be "
                                         "divisible by num_heads \\(3\\)"):
        call(x, qkv_w, out_w, heads=3)
    with pytest.raises(ValueError, match="must be divisible by num_heads"):
        call(x, qkv_w, out_w, heads=6148914691236517206)  # 3 * heads wraps to 2 in int64
    with pytest.raises(ValueError, match="must be divisible by 3 \\(query, key and value\\)"):
        call(x, torch.randn(3 * E - 2, E), out_w)
    with pytest.raises(ValueError, match="the merged heads has embedding dimension 16, expected 12"):
        call(x, qkv_w, torch.randn(E, 12))


# --- the communication timeout (read when a call wraps its process group) -----------------------

TIMEOUT_VALUES = [
    ("9.3e9", "is longer than the longest timeout, 31536000 seconds (one year)"),
    ("1e17", "'1e17' is longer than the longest timeout"),
    ("abc", "is not a positive number of seconds"),
    ("31536000", None),
]


def timeout_worker(ctx):
    import os

    import torch.distributed as dist

    q = torch.randn(1, 16, 4, 8)
    outcomes = {}
    for value, _ in TIMEOUT_VALUES:
        os.environ["DILATED_ATTENTION_COMM_TIMEOUT_S"] = value
        try:
            ops.ring_dilated_attention_hybrid_optimized_v2(q, q, q, SEGMENTS, RATES, 0.0, False,
                                                           None, dist.group.WORLD.group_name)
            outcomes[value] = None
        except ValueError as e:
            outcomes[value] = str(e)
    return outcomes


def test_comm_timeout_out_of_range_is_refused():
    from distributed_harness import run_on_ranks

    (outcomes,) = run_on_ranks(timeout_worker, 1, timeout=120)
    for value, message in TIMEOUT_VALUES:
        if message is None:
            assert outcomes[value] is None, (value, outcomes[value])
        else:
            assert outcomes[value] is not None and message in outcomes[value], (value, outcomes)


# --- scales at the edges --------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_scale_matches_the_reference(dtype, causal):
    """Scale 0: every key a query sees weighs the same (once NaN under the causal mask)."""
    q, k, v = (t.to(torch.float64).requires_grad_(True) for t in _qkv(seed=6))
    inputs = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v)]
    out = ops.dilated_attention(*inputs, SEGMENTS, RATES, 0.0, causal, 0.0)
    ref = dilated_attention_reference(q, k, v, SEGMENTS, RATES, causal, 0.0)
    assert_close(out, ref, dtype, "scale 0 output")
    grad = torch.randn(SHAPE, dtype=torch.float64)
    got = torch.autograd.grad(out, inputs, grad.to(dtype))
    expected = torch.autograd.grad(ref, (q, k, v), grad)
    for name, g, e in zip("qkv", got, expected):
        assert_close(g, e, dtype, f"scale 0 grad {name}")


@pytest.mark.parametrize("op_name", op_params(recommended_ops(signature="attention")))
def test_zero_scale_on_the_distributed_ops(op_name):
    q, k, v = _qkv(dtype=torch.float64, seed=7)
    out = getattr(ops, op_name)(q, k, v, SEGMENTS, RATES, 0.0, True, 0.0, "")
    assert_close(out, dilated_attention_reference(q, k, v, SEGMENTS, RATES, True, 0.0),
                 torch.float64, op_name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_scale_beyond_float32_is_refused(dtype):
    q, k, v = _qkv(dtype=dtype)
    with pytest.raises(ValueError, match="scale \\(1e\\+39\\) cannot be represented in float32"):
        ops.dilated_attention(q, k, v, SEGMENTS, RATES, 0.0, False, 1e39)
    with pytest.raises(ValueError, match="cannot be represented in float32"):
        ops.ring_dilated_attention_hybrid_optimized_v2(q, k, v, SEGMENTS, RATES, 0.0, False,
                                                       -1e39, "")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scale_below_float32_is_zero_there(dtype):
    """1e-50 is 0 in float32: the kernels see scale 0 (once NaN under the causal mask)."""
    q, k, v = _qkv(dtype=dtype, seed=8)
    out = ops.dilated_attention(q, k, v, SEGMENTS, RATES, 0.0, True, 1e-50)
    ref = dilated_attention_reference(q.double(), k.double(), v.double(), SEGMENTS, RATES, True,
                                      1e-50)
    assert_close(out, ref, dtype, "scale 1e-50")


def test_scale_beyond_float32_is_taken_by_float64():
    q, k, v = _qkv(dtype=torch.float64)
    assert ops.dilated_attention(q, k, v, SEGMENTS, RATES, 0.0, False, 1e39).shape == SHAPE


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_scale_whose_scores_overflow_float32_is_refused(dtype):
    """3e38 is a float32 value, but scale * q.k is not: the softmax once returned NaN."""
    q, k, v = _qkv(dtype=dtype)
    with pytest.raises(ValueError, match="scale \\(3e\\+38\\) can make the scores overflow float32"):
        ops.dilated_attention(q, k, v, SEGMENTS, RATES, 0.0, False, 3e38)
    with pytest.raises(ValueError, match="can make the scores overflow float32"):
        ops.ring_dilated_attention_hybrid_optimized_v2(q, k, v, SEGMENTS, RATES, 0.0, True, 3e38,
                                                       "")


def test_a_huge_scale_whose_scores_fit_is_computed_exactly():
    """The check bounds the scores, it does not refuse large scales as such."""
    q, k, v = (t * 1e-16 for t in _qkv(seed=4))
    out = ops.dilated_attention(q, k, v, SEGMENTS, RATES, 0.0, True, 1e33)
    ref = dilated_attention_reference(q.double(), k.double(), v.double(), SEGMENTS, RATES, True,
                                      1e33)
    assert out.isfinite().all()
    assert_close(out, ref, torch.float32, "scale 1e33")
    q64, k64, v64 = _qkv(dtype=torch.float64, seed=4)
    out = ops.dilated_attention(q64, k64, v64, SEGMENTS, RATES, 0.0, False, 3e38)
    ref = dilated_attention_reference(q64, k64, v64, SEGMENTS, RATES, False, 3e38)
    assert out.isfinite().all()
    assert_close(out, ref, torch.float64, "float64 at scale 3e38")


# --- non-finite queries ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("segments", [[8], [16], [4, 8]], ids=["s8", "s16", "s4-8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_non_finite_query_row_gives_a_nan_output_row_only(dtype, segments, value):
    """As in the float64 reference: that row's scores are NaN or infinite, so its attention is
    NaN, and no other row changes (ATen's float32 kernel once returned 0 for it)."""
    q, k, v = _qkv(shape=(1, 16, 4, 4), dtype=torch.float64, seed=9)
    q[0, 3, 0, 1] = value
    rates = [1] * len(segments)
    out = ops.dilated_attention(q.to(dtype), k.to(dtype), v.to(dtype), segments, rates)
    ref = dilated_attention_reference(q, k, v, segments, rates)
    assert torch.equal(torch.isnan(out), torch.isnan(ref)), "NaN where the reference has none"
    finite = ~torch.isnan(ref)
    assert_close(out[finite], ref[finite], dtype, "the other rows")


@pytest.mark.parametrize("op_name", op_params(recommended_ops(signature="attention")))
def test_a_nan_query_row_on_the_distributed_ops(op_name):
    q, k, v = _qkv(shape=(1, 16, 4, 4), seed=10)
    q[0, 5, 1, 0] = float("nan")
    out = getattr(ops, op_name)(q, k, v, [8], [1], 0.0, False, None, "")
    ref = dilated_attention_reference(q.double(), k.double(), v.double(), [8], [1])
    assert torch.equal(torch.isnan(out), torch.isnan(ref))
