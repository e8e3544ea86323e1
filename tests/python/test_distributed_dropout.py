"""Dropout across processes: the mask is a pure function of (seed, batch, head, query position,
key position) in global coordinates, so with the same seed on every rank each distributed
schedule reproduces the single-device op's dropout exactly, forward and backward."""

import pytest
import torch

from distributed_harness import run_on_ranks

SEGMENTS, RATES, P_DROP = [8, 16, 48], [1, 2, 3], 0.3
# all_gather serves only the deprecated ops, which a build may leave out.
LEGACY_BUILT = hasattr(torch.ops.dilated_attention, "ring_dilated_attention_v2_collective")
SHARDED = ["segment_ring", "full_ring", "segment_ring_checked"] + (["all_gather"] if LEGACY_BUILT else [])
REPLICATED = ["replicated_rows", "replicated_heads"]


def dropout_worker(ctx, backends, heads):
    import torch.distributed as dist

    ops = torch.ops.dilated_attention
    group = dist.group.WORLD.group_name
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 48, heads, 8, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(1, 48, heads, 8, dtype=torch.float64)
    n = 48 // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    errors = {}
    for backend in backends:
        for causal in (False, True):
            torch.manual_seed(7)
            ref = ops.dilated_attention(q, k, v, SEGMENTS, RATES, P_DROP, causal)
            ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
            sharded = backend not in REPLICATED
            pick = (lambda t: t[:, rows]) if sharded else (lambda t: t)
            inputs = [pick(t.detach()).clone().requires_grad_() for t in (q, k, v)]
            torch.manual_seed(7)  # the same seed as the single-device call, on every rank
            out = ops._distributed_dilated_attention(*inputs, SEGMENTS, RATES, P_DROP, causal,
                                                     None, group, backend)
            grads = torch.autograd.grad(out, inputs, pick(grad))
            errors[(backend, causal)] = max(
                [(out - pick(ref)).abs().max().item()]
                + [(a - pick(b)).abs().max().item() for a, b in zip(grads, ref_grads)])
    return errors


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_dropout_equals_single_device(world_size):
    for per_rank in run_on_ranks(dropout_worker, world_size, (SHARDED, 5), timeout=150):
        for key, error in per_rank.items():
            assert error < 1e-12, key


def test_replicated_dropout_equals_single_device():
    for per_rank in run_on_ranks(dropout_worker, 2, (REPLICATED, 4), timeout=150):
        for key, error in per_rank.items():
            assert error < 1e-12, key
