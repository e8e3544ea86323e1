"""RingLongNetDilatedAttention: on two gloo processes (process_group left at its default, the
world group) every rank's rows of the output and gradients equal LongNetDilatedAttention on the
whole sequence; in one process it is LongNetDilatedAttention. Uses
tests/python/distributed_harness.py; the worker is a module-level function, imported by name in
each spawned rank."""

import pytest
import torch

import dilated_attention_pytorch as dap
from distributed_harness import run_on_ranks

# The 20-long segments span the two 24-row shards and the last one is truncated at N = 48.
B, N, H, D = 2, 48, 3, 4
SEGS, RATES = [8, 20], [1, 2]
TOL = dict(atol=1e-10, rtol=1e-10)


def _inputs():
    gen = torch.Generator().manual_seed(4)
    return [torch.randn(B, N, H, D, dtype=torch.float64, generator=gen) for _ in range(4)]


def _leaf(x):
    return x.detach().clone().requires_grad_(True)


def _run(module, tensors, grad, causal):
    leaves = [_leaf(t) for t in tensors]
    out = module(*leaves, is_causal=causal)
    out.backward(grad)
    return [out.detach(), *(t.grad for t in leaves)]


def ring_worker(ctx):
    q, k, v, grad = _inputs()
    n = N // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    failures = []
    for causal in (False, True):
        full = _run(dap.LongNetDilatedAttention(SEGS, RATES), (q, k, v), grad, causal)
        mine = _run(dap.RingLongNetDilatedAttention(SEGS, RATES),
                    [t[:, rows] for t in (q, k, v)], grad[:, rows], causal)
        for name, got, want in zip(("out", "dq", "dk", "dv"), mine, full):
            try:
                torch.testing.assert_close(got, want[:, rows], **TOL)
            except AssertionError as error:
                failures.append(f"causal={causal} {name}: {error}")
    return failures


def test_ring_longnet_module_rows_equal_the_whole_sequence_module():
    for rank, failures in enumerate(run_on_ranks(ring_worker, 2, timeout=150)):
        assert failures == [], f"rank {rank}"


def test_ring_longnet_module_in_one_process_is_the_single_device_module():
    q, k, v, grad = _inputs()
    for causal in (False, True):
        for got, want in zip(_run(dap.RingLongNetDilatedAttention(SEGS, RATES), (q, k, v), grad,
                                  causal),
                             _run(dap.LongNetDilatedAttention(SEGS, RATES), (q, k, v), grad,
                                  causal)):
            torch.testing.assert_close(got, want, **TOL)


def test_ring_longnet_module_checks_ring_size_and_config():
    with pytest.raises(ValueError, match="ring_size"):
        dap.RingLongNetDilatedAttention(SEGS, RATES, ring_size=2)
    with pytest.raises(ValueError, match="segment_lengths cannot be empty"):
        dap.RingLongNetDilatedAttention([], [])
    assert "group_name=''" in repr(dap.RingLongNetDilatedAttention(SEGS, RATES))
