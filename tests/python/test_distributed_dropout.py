"""Dropout across processes: the mask is a pure function of (seed, batch, head, query position,
key position) in global coordinates, so with the same seed on every rank each distributed
schedule reproduces the single-device op's dropout exactly, forward and backward."""

import functools
import traceback

import pytest
import torch

from distributed_harness import run_on_ranks
from helpers import backends_with, deprecated_op, op_param

SEGMENTS, RATES, P_DROP = [8, 16, 48], [1, 2, 3], 0.3
# Every backend of this build, from the library's table (the build without the deprecated ops
# has none of the backends only they use).
SHARDED = backends_with(contract="sharded")
REPLICATED = backends_with(contract="replicated")


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
            try:
                torch.manual_seed(7)
                ref = ops.dilated_attention(q, k, v, SEGMENTS, RATES, P_DROP, causal)
                ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
                sharded = backend not in REPLICATED
                pick = (lambda t: t[:, rows]) if sharded else (lambda t: t)
                inputs = [pick(t.detach()).clone().requires_grad_() for t in (q, k, v)]
                torch.manual_seed(7)  # the same seed as the single-device call, on every rank
                out = ops._distributed_dilated_attention(*inputs, SEGMENTS, RATES, P_DROP,
                                                         causal, None, group, backend)
                grads = torch.autograd.grad(out, inputs, pick(grad))
                errors[(backend, causal)] = max(
                    [(out - pick(ref)).abs().max().item()]
                    + [(a - pick(b)).abs().max().item() for a, b in zip(grads, ref_grads)])
            except Exception:  # noqa: BLE001 - reported by the test of this backend
                errors[(backend, causal)] = traceback.format_exc()
    return errors


@functools.lru_cache(maxsize=None)
def _run(world_size, contract):
    """One spawn per world size and contract runs every backend of that contract."""
    backends, heads = (SHARDED, 5) if contract == "sharded" else (REPLICATED, 4)
    try:
        return run_on_ranks(dropout_worker, world_size, (backends, heads), timeout=150)
    except Exception as e:  # noqa: BLE001 - re-raised by every test that needs this run
        return e


def assert_dropout_equal(world_size, contract, backend):
    outcome = _run(world_size, contract)
    if isinstance(outcome, Exception):
        raise outcome
    for rank, per_rank in enumerate(outcome):
        for causal in (False, True):
            error = per_rank[(backend, causal)]
            assert not isinstance(error, str), f"rank {rank}, causal={causal}:\n{error}"
            assert error < 1e-12, (rank, backend, causal, error)


@pytest.mark.parametrize("backend", [op_param(b, backend=b, id=b) for b in SHARDED])
@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_dropout_equals_single_device(world_size, backend):
    assert_dropout_equal(world_size, "sharded", backend)


@deprecated_op  # only deprecated names use the replicated backends
@pytest.mark.parametrize("backend", [op_param(b, backend=b, id=b) for b in REPLICATED])
def test_replicated_dropout_equals_single_device(backend):
    assert_dropout_equal(2, "replicated", backend)
