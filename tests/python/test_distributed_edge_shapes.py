"""Every named distributed op on two gloo ranks, on the shapes that once crashed or answered
wrongly: shards of one row (N = P, in sequence-first storage too: is_contiguous() ignores the
strides of size-1 dimensions) and empty batch, sequence or head dimensions. Each is compared,
output and gradients, with the core op on the whole sequence (itself checked against the float64
reference elsewhere)."""

from __future__ import annotations

import traceback

import pytest
import torch

from distributed_harness import run_once_per_session
from helpers import op_params, op_row, ops_with

# name -> (B, N, H, D, segment_lengths, dilation_rates, is_causal, layout of each rank's input)
CASES = {
    "one-row-shards": (2, 2, 2, 4, [2], [1], True, "contiguous"),
    "one-row-shards-sequence-first": (2, 2, 2, 4, [2, 1], [2, 1], False, "sequence_first"),
    "one-row-shards-one-batch": (1, 2, 2, 4, [2], [1], True, "sequence_first"),
    "empty-batch": (0, 4, 2, 4, [2], [1], False, "contiguous"),
    "empty-sequence": (1, 0, 2, 4, [2], [1], True, "contiguous"),
    "empty-head-dim": (1, 4, 2, 0, [2], [1], False, "contiguous"),
}


def _stored_as(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "sequence_first":
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    return x.contiguous()


def _check(ctx, op_name, case):
    B, N, H, D, segs, rates, causal, layout = CASES[case]
    gen = torch.Generator().manual_seed(len(case))
    q, k, v, grad = (torch.randn(B, N, H, D, dtype=torch.float64, generator=gen)
                     for _ in range(4))
    full = [t.clone().requires_grad_(True) for t in (q, k, v)]
    ref = torch.ops.dilated_attention.dilated_attention(*full, segs, rates, 0.0, causal)
    ref.backward(grad)

    rows = slice(None)
    if op_row(op_name)["contract"] == "sharded":
        n = N // ctx.world_size
        rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    inputs = [_stored_as(t[:, rows], layout).requires_grad_(True) for t in (q, k, v)]
    out = getattr(torch.ops.dilated_attention, op_name)(*inputs, segs, rates, 0.0, causal, None,
                                                        ctx.group_name)
    out.backward(grad[:, rows])
    failures = []
    for what, got, expected in [("output", out, ref[:, rows])] + [
            (f"grad {n}", t.grad, r.grad[:, rows]) for n, t, r in zip("qkv", inputs, full)]:
        try:
            torch.testing.assert_close(got, expected.detach(), atol=1e-10, rtol=1e-10)
        except (AssertionError, TypeError) as e:
            failures.append(f"{what}: {e}")
    return failures


def edge_worker(ctx):
    results = {}
    for op_name in ops_with(signature="attention"):
        for case in CASES:
            try:
                results[(op_name, case)] = _check(ctx, op_name, case)
            except Exception:  # noqa: BLE001 - reported by the test of this pair
                results[(op_name, case)] = [f"raised:\n{traceback.format_exc()}"]
    return results


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("op_name", op_params(ops_with(signature="attention")))
def test_edge_shapes_match_the_core_op(op_name, case):
    per_rank = run_once_per_session(edge_worker, 2, timeout=150)
    failures = {rank: res[(op_name, case)] for rank, res in enumerate(per_rank)
                if res[(op_name, case)]}
    assert not failures, failures
