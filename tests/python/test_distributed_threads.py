"""Two threads of one process on one process group: a call made while another is in flight on
that group raises ValueError at once (overlapping calls would match each other's messages), and
the call in flight still completes with the right result. Calls on distinct groups may overlap."""

from __future__ import annotations

import functools
import threading
import time

import pytest
import torch

from distributed_harness import run_on_ranks

IN_USE = "is in use by another dilated attention call in this process"
SEGS, RATES = [16], [1]  # one segment over both shards: every call needs the peer


def _call(group_name, x):
    return torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2(
        x, x, x, SEGS, RATES, 0.0, False, None, group_name)


def threads_worker(ctx):
    import torch.distributed as dist

    store = ctx.store()
    gen = torch.Generator().manual_seed(ctx.rank)
    x = torch.randn(1, 8, 2, 4, generator=gen)
    results = {}

    # Rank 0's thread holds the group (rank 1 joins only later), and a second call on the same
    # group from this rank's main thread must be refused, not interleaved.
    group = dist.new_group(ranks=[0, 1], backend="gloo")
    held = {}
    if ctx.rank == 0:
        thread = threading.Thread(target=lambda: held.setdefault("out", _call(group.group_name, x)))
        thread.start()
        time.sleep(1.0)  # the thread is inside the call, waiting for rank 1
        try:
            _call(group.group_name, x)
            results["second call"] = "returned"
        except ValueError as e:
            results["second call"] = str(e)
        # A distinct group is not held: a call on it overlaps freely (rank 1 answers it).
        other = dist.new_group(ranks=[0, 1], backend="gloo")
        results["other group"] = _call(other.group_name, x)
        store.set("second-call-done", "1")
        thread.join(timeout=60)
        results["held call"] = held.get("out")
    else:
        other = dist.new_group(ranks=[0, 1], backend="gloo")
        results["other group"] = _call(other.group_name, x)
        store.wait(["second-call-done"])
        results["held call"] = _call(group.group_name, x)
    # Every rank's expected output: the core op over both shards.
    both = [torch.randn(1, 8, 2, 4, generator=torch.Generator().manual_seed(r)) for r in (0, 1)]
    full = torch.cat(both, dim=1)
    expected = torch.ops.dilated_attention.dilated_attention(full, full, full, SEGS, RATES)
    results["expected"] = expected[:, ctx.rank * 8:(ctx.rank + 1) * 8]
    return results


@functools.lru_cache(maxsize=None)
def _results():
    return run_on_ranks(threads_worker, 2, timeout=120)


def test_second_call_on_a_group_in_use_is_refused():
    rank0, _ = _results()
    assert IN_USE in rank0["second call"], rank0["second call"]


@pytest.mark.parametrize("rank", [0, 1])
def test_call_in_flight_completes_correctly(rank):
    res = _results()[rank]
    assert res["held call"] is not None
    torch.testing.assert_close(res["held call"], res["expected"])


@pytest.mark.parametrize("rank", [0, 1])
def test_calls_on_distinct_groups_overlap(rank):
    res = _results()[rank]
    torch.testing.assert_close(res["other group"], res["expected"])
