"""Two threads of one process on one process group: a call made while another is in flight on
that group raises ValueError at once (overlapping calls would match each other's messages), and
the call in flight still completes with the right result. Calls on distinct groups may overlap."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from distributed_harness import run_once_per_session

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
    group = dist.new_group(ranks=[0, 1], backend="gloo")
    other = dist.new_group(ranks=[0, 1], backend="gloo")
    if ctx.rank == 0:
        # Two threads call on one group at once; rank 1 joins only once one of them was
        # refused, so the other is surely in flight (whichever thread won the race).
        outcomes = {}

        def run(name):
            try:
                outcomes[name] = ("returned", _call(group.group_name, x))
            except ValueError as e:
                outcomes[name] = ("refused", str(e))

        threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while not any(o[0] == "refused" for o in outcomes.values()) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Meanwhile a distinct group is free: a call on it overlaps (rank 1 answers it first).
        results["other group"] = _call(other.group_name, x)
        store.set("refused-seen", "1")
        for t in threads:
            t.join(timeout=60)
        results["outcomes"] = sorted(outcomes.values(), key=lambda o: o[0])
    else:
        results["other group"] = _call(other.group_name, x)
        store.wait(["refused-seen"])
        results["outcomes"] = [("returned", _call(group.group_name, x))]
    # Every rank's expected output: the core op over both shards.
    both = [torch.randn(1, 8, 2, 4, generator=torch.Generator().manual_seed(r)) for r in (0, 1)]
    full = torch.cat(both, dim=1)
    expected = torch.ops.dilated_attention.dilated_attention(full, full, full, SEGS, RATES)
    results["expected"] = expected[:, ctx.rank * 8:(ctx.rank + 1) * 8]
    return results


def _results():
    return run_once_per_session(threads_worker, 2, timeout=120)


def test_second_call_on_a_group_in_use_is_refused():
    rank0, _ = _results()
    kinds = [o[0] for o in rank0["outcomes"]]
    assert kinds == ["refused", "returned"], rank0["outcomes"]
    assert IN_USE in rank0["outcomes"][0][1], rank0["outcomes"][0][1]


@pytest.mark.parametrize("rank", [0, 1])
def test_call_in_flight_completes_correctly(rank):
    res = _results()[rank]
    returned = [o[1] for o in res["outcomes"] if o[0] == "returned"]
    assert len(returned) == 1, res["outcomes"]
    torch.testing.assert_close(returned[0], res["expected"])


@pytest.mark.parametrize("rank", [0, 1])
def test_calls_on_distinct_groups_overlap(rank):
    res = _results()[rank]
    torch.testing.assert_close(res["other group"], res["expected"])
