"""Property-based tests (hypothesis): drawn shapes (0 and 1 included), layouts, dtypes, segment
and rate configurations, causal and scale; the op's forward and gradients against the float64
reference, for the core op and the single-process distributed ops.

Profiles: "ci" (the default: a bounded run of a few minutes on two cores) and "long"
(HYPOTHESIS_PROFILE=long, for runs by hand). Failing examples hypothesis finds are kept below as
@example regression cases once fixed.
"""

import math
import os

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import TOLERANCES, recommended_ops
from layouts import LAYOUTS, storage_size
from reference import dilated_attention_reference

settings.register_profile("ci", max_examples=1000, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

OPS = ["dilated_attention"] + recommended_ops(signature="attention")
DTYPES = [torch.float64, torch.float32]


@st.composite
def problems(draw):
    """(shape, segment_lengths, dilation_rates) that the op accepts."""
    num_groups = draw(st.integers(1, 3))
    heads = draw(st.integers(num_groups, 5))
    segments, rates = [], []
    for g in range(num_groups):
        rate = draw(st.one_of(st.integers(1, 4), st.just(2**62)))
        # The group's offset g % rate must lie inside its segment.
        segment = draw(st.sampled_from([s for s in (1, 2, 3, 4, 6, 8) if s > g % rate]))
        segments.append(segment)
        rates.append(rate)
    unit = 1
    for s in segments:
        unit = unit * s // math.gcd(unit, s)
    seq_len = unit * draw(st.integers(0, max(0, 12 // unit)))
    batch = draw(st.integers(0, 2))
    head_dim = draw(st.sampled_from([0, 1, 2, 4, 8]))
    return (batch, seq_len, heads, head_dim), segments, rates


@given(problem=problems(), layout=st.sampled_from(sorted(LAYOUTS)),
       dtype=st.sampled_from(DTYPES), causal=st.booleans(),
       scale=st.one_of(st.none(), st.just(0.0), st.floats(0.01, 4.0)),
       op_name=st.sampled_from(OPS), seed=st.integers(0, 2**16))
@example(problem=((2, 1, 2, 4), [1], [1]), layout="sequence_first", dtype=torch.float32,
         causal=False, scale=None, op_name="ring_dilated_attention_hybrid_optimized_v2", seed=0)
@example(problem=((2, 4, 2, 4), [4], [1]), layout="overlapping_heads", dtype=torch.float64,
         causal=True, scale=0.0, op_name="dilated_attention", seed=1)
def test_forward_and_gradients_match_the_reference(problem, layout, dtype, causal, scale,
                                                   op_name, seed):
    shape, segments, rates = problem
    gen = torch.Generator().manual_seed(seed)
    bases = [torch.randn(storage_size(shape), dtype=torch.float64, generator=gen)
             .requires_grad_(True) for _ in range(3)]
    views = [LAYOUTS[layout](b, shape) for b in bases]
    grad_out = torch.randn(shape, dtype=torch.float64, generator=gen)

    op_bases = [b.detach().to(dtype).requires_grad_(True) for b in bases]
    op_views = [LAYOUTS[layout](b, shape) for b in op_bases]
    op = getattr(torch.ops.dilated_attention, op_name)
    extra = () if op_name == "dilated_attention" else ("",)
    out = op(*op_views, segments, rates, 0.0, causal, scale, *extra)
    assert out.shape == torch.Size(shape) and out.dtype == dtype
    if out.numel() == 0:
        grads = torch.autograd.grad(out, op_bases, grad_out.to(dtype))
        assert all(not g.any() for g in grads)  # nothing reaches the storage
        return

    ref = dilated_attention_reference(*views, segments, rates, causal, scale)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    got = torch.autograd.grad(out, op_bases, grad_out.to(dtype))
    expected = torch.autograd.grad(ref, bases, grad_out)
    for name, g, e in zip("qkv", got, expected):
        torch.testing.assert_close(g.double(), e, atol=atol * 10, rtol=rtol * 10,
                                   msg=lambda m, name=name: f"grad {name}: {m}")


@settings(max_examples=500)
@given(problem=problems(), layout=st.sampled_from(sorted(LAYOUTS)),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]), causal=st.booleans(),
       scale=st.one_of(st.none(), st.just(0.0), st.floats(0.01, 4.0)),
       seed=st.integers(0, 2**16))
def test_reduced_precision_matches_the_reference_of_its_rounded_inputs(problem, layout, dtype,
                                                                      causal, scale, seed):
    """bfloat16 and float16 through every layout: against the float64 reference of the inputs
    as the op sees them (rounded to the dtype), so only the op's own rounding counts."""
    shape, segments, rates = problem
    gen = torch.Generator().manual_seed(seed)
    op_bases = [torch.randn(storage_size(shape), generator=gen).to(dtype).requires_grad_(True)
                for _ in range(3)]
    bases = [b.detach().double().requires_grad_(True) for b in op_bases]
    grad_out = torch.randn(shape, generator=gen).to(dtype)
    op_views = [LAYOUTS[layout](b, shape) for b in op_bases]
    out = torch.ops.dilated_attention.dilated_attention(*op_views, segments, rates, 0.0, causal,
                                                        scale)
    assert out.shape == torch.Size(shape) and out.dtype == dtype
    if out.numel() == 0:
        return
    ref = dilated_attention_reference(*[LAYOUTS[layout](b, shape) for b in bases], segments,
                                      rates, causal, scale)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.double(), ref.detach(), atol=atol, rtol=rtol)
    got = torch.autograd.grad(out, op_bases, grad_out)
    expected = torch.autograd.grad(ref, bases, grad_out.double())
    for name, g, e in zip("qkv", got, expected):
        torch.testing.assert_close(g.double(), e, atol=atol * 10, rtol=rtol * 10,
                                   msg=lambda m, name=name: f"grad {name}: {m}")
