"""Misuse of the distributed ops: unknown group names, head-parallel with H % P != 0, ranks that
disagree on the configuration (production op), and a peer that never answers (bounded waits)."""

from __future__ import annotations

import functools
import os
import time

import pytest
import torch

from distributed_harness import run_on_ranks
from helpers import deprecated_op, op_params, op_row, ops_with

# Every named op of this build, from the library's table.
ATTENTION_OPS = ops_with(signature="attention")
MULTIHEAD_OPS = ops_with(signature=("projected", "fused_self_attention"))
# The ops whose ranks each attend H / P heads.
HEAD_PARALLEL_OPS = ops_with(backend="replicated_heads")
BAD_GROUP = "no-such-group-42"
TIMEOUT_S = 3.0


def call_with_group(op_name: str, group_name: str, *, H=4, N=32, dtype=torch.float32):
    """Calls `op_name` on small valid inputs (a shard of N / P rows for sharded ops is fine: the
    inputs are valid for P = 1 and 2)."""
    op = getattr(torch.ops.dilated_attention, op_name)
    signature = op_row(op_name)["signature"]
    gen = torch.Generator().manual_seed(0)
    if signature in ("fused_self_attention", "projected"):
        E = 4 * H
        x = torch.randn(1, N, E, generator=gen, dtype=dtype)
        w = torch.randn(E, E, generator=gen, dtype=dtype)
        if signature == "fused_self_attention":
            return op(x, torch.cat([w, w, w]), None, w, None, H, [8, 16], [1, 2], 0.0, False, None,
                      group_name)
        return op(x, x, x, w, None, w, None, w, None, w, None, H, [8, 16], [1, 2], 0.0, False,
                  None, group_name)
    assert signature == "attention", signature
    q = torch.randn(1, N, H, 4, generator=gen, dtype=dtype)
    return op(q, q, q, [8, 16], [1, 2], 0.0, False, None, group_name)


def outcome(fn):
    """(exception type name, message) of fn(), or None when it returned."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return type(e).__name__, str(e)
    return None


# ---------------------------------------------------------------------------------------------
# Unknown group name, in this (non-distributed) process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op_name", op_params(ATTENTION_OPS + MULTIHEAD_OPS))
def test_unknown_group_name_in_a_plain_process(op_name):
    with pytest.raises(ValueError, match=f"'{BAD_GROUP}' is not a registered process group"):
        call_with_group(op_name, BAD_GROUP)


# ---------------------------------------------------------------------------------------------
# Two ranks: unknown group, head-parallel divisibility, disagreeing production calls
# ---------------------------------------------------------------------------------------------

# (label, what rank 0 passes, what rank 1 passes, the field the error must name)
DISAGREEMENTS = [
    ("dilation_rates", dict(rates=[1, 2]), dict(rates=[1, 4]), "dilation_rates"),
    ("is_causal", dict(causal=False), dict(causal=True), "is_causal"),
    ("scale", dict(scale=None), dict(scale=0.5), "scale"),
    ("segment_lengths", dict(segs=[8, 16]), dict(segs=[16, 8]), "segment_lengths"),
    ("dtype", dict(dtype=torch.float32), dict(dtype=torch.float64), "dtype"),
]


def _production(ctx, segs=(8, 16), rates=(1, 2), causal=False, scale=None,
                dtype=torch.float32):
    gen = torch.Generator().manual_seed(ctx.rank)
    q = torch.randn(1, 16, 4, 4, generator=gen).to(dtype)
    return torch.ops.dilated_attention.ring_dilated_attention_production(
        q, q, q, list(segs), list(rates), 0.0, causal, scale, ctx.group_name)


def misuse_worker(ctx):
    ops = torch.ops.dilated_attention
    results = {"bad_group": {}, "disagree": {}}
    for op_name in ATTENTION_OPS + MULTIHEAD_OPS:
        results["bad_group"][op_name] = outcome(lambda: call_with_group(op_name, BAD_GROUP))

    q5 = torch.randn(1, 16, 5, 4)
    results["head_parallel"] = {
        op_name: outcome(lambda: getattr(ops, op_name)(q5, q5, q5, [8, 16], [1, 2], 0.0, False,
                                                       None, ctx.group_name))
        for op_name in HEAD_PARALLEL_OPS}

    for label, mine0, mine1, _ in DISAGREEMENTS:
        mine = mine0 if ctx.rank == 0 else mine1
        kwargs = {"segs": mine.get("segs", (8, 16)), "rates": mine.get("rates", (1, 2)),
                  "causal": mine.get("causal", False), "scale": mine.get("scale"),
                  "dtype": mine.get("dtype", torch.float32)}
        results["disagree"][label] = outcome(lambda: _production(ctx, **kwargs))

    # After all that, the group still works: an agreeing call equals the v2 op.
    gen = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 16, 4, 4, generator=gen) for _ in range(3))
    args = (q, k, v, [8, 32], [1, 2], 0.0, True, None, ctx.group_name)
    produced = ops.ring_dilated_attention_production(*args)
    reference = ops.ring_dilated_attention_hybrid_optimized_v2(*args)
    results["agree_after_errors"] = bool(torch.equal(produced, reference))
    return results


@functools.lru_cache(maxsize=None)
def _misuse_run():
    try:
        return run_on_ranks(misuse_worker, 2, timeout=90)
    except Exception as e:  # noqa: BLE001
        return e


def misuse_results():
    outcome_ = _misuse_run()
    if isinstance(outcome_, Exception):
        raise outcome_
    return outcome_


@pytest.mark.parametrize("op_name", op_params(ATTENTION_OPS + MULTIHEAD_OPS))
def test_unknown_group_name_with_a_live_group(op_name):
    for rank, res in enumerate(misuse_results()):
        got = res["bad_group"][op_name]
        assert got is not None, f"rank {rank}: {op_name} accepted group '{BAD_GROUP}'"
        kind, message = got
        assert kind == "ValueError", f"rank {rank}: {got}"
        assert f"'{BAD_GROUP}' is not a registered process group" in message, message


@deprecated_op  # only deprecated names use the head-parallel backend
@pytest.mark.parametrize("op_name", op_params(HEAD_PARALLEL_OPS))
def test_head_parallel_needs_heads_divisible_by_world_size(op_name):
    for rank, res in enumerate(misuse_results()):
        got = res["head_parallel"][op_name]
        assert got is not None, f"rank {rank}: no error"
        kind, message = got
        assert kind == "ValueError", got
        assert ("num_heads (5) must be divisible by the world size (2) for head-parallel "
                "attention") in message


@pytest.mark.parametrize("label, field", [(d[0], d[3]) for d in DISAGREEMENTS],
                         ids=[d[0] for d in DISAGREEMENTS])
def test_production_raises_on_every_rank_when_ranks_disagree(label, field):
    for rank, res in enumerate(misuse_results()):
        got = res["disagree"][label]
        assert got is not None, f"rank {rank} did not raise although ranks disagree on {label}"
        kind, message = got
        assert kind == "ValueError", f"rank {rank}: {got}"
        assert f"ranks disagree on {field}" in message, f"rank {rank}: {message}"


def test_group_still_usable_after_disagreement_errors():
    assert all(res["agree_after_errors"] for res in misuse_results())


# ---------------------------------------------------------------------------------------------
# A peer that never answers: the wait is bounded by DILATED_ATTENTION_COMM_TIMEOUT_S
# ---------------------------------------------------------------------------------------------

# (label, rank that calls the op, op, is_causal). Segments of 32 over a sequence of 32 split in
# two shards of 16: every call needs the other rank.
SILENT_PEER_SCENARIOS = [
    ("v2-rank0-alone", 0, "ring_dilated_attention_hybrid_optimized_v2", False),
    ("v2-causal-rank1-alone", 1, "ring_dilated_attention_hybrid_optimized_v2", True),
    ("full-ring-rank0-alone", 0, "ring_dilated_attention_hybrid_optimized", False),
    ("production-rank0-alone", 0, "ring_dilated_attention_production", False),
]


def silent_peer_worker(ctx):
    import torch.distributed as dist

    assert os.environ["DILATED_ATTENTION_COMM_TIMEOUT_S"] == str(TIMEOUT_S)
    store = ctx.store()
    results = {}
    for label, caller, op_name, causal in SILENT_PEER_SCENARIOS:
        # A fresh group per scenario: the unanswered transfer of one must not meet the next.
        group = dist.new_group(ranks=[0, 1], backend="gloo")
        if ctx.rank == caller:
            q = torch.randn(1, 16, 2, 4)
            start = time.monotonic()
            got = outcome(lambda: getattr(torch.ops.dilated_attention, op_name)(
                q, q, q, [32], [1], 0.0, causal, None, group.group_name))
            results[label] = {"outcome": got, "seconds": time.monotonic() - start}
            store.set(f"{label}-done", "1")
        else:
            # Stay alive and silent until the caller gave up.
            store.wait([f"{label}-done"])

    # Production checks agreement on every call. Both ranks agree on one configuration; then
    # rank 0 repeats it while rank 1 switches is_causal: both must raise "ranks disagree".
    group = dist.new_group(ranks=[0, 1], backend="gloo")
    q = torch.randn(1, 16, 2, 4)
    run = lambda causal: torch.ops.dilated_attention.ring_dilated_attention_production(  # noqa
        q, q, q, [32], [1], 0.0, causal, None, group.group_name)
    run(False)
    start = time.monotonic()
    got = outcome(lambda: run(ctx.rank == 1))
    results["disagree-after-agreement"] = {"outcome": got, "seconds": time.monotonic() - start}
    return results


@functools.lru_cache(maxsize=None)
def _silent_run():
    try:
        return run_on_ranks(silent_peer_worker, 2, timeout=120,
                            env={"DILATED_ATTENTION_COMM_TIMEOUT_S": str(TIMEOUT_S)})
    except Exception as e:  # noqa: BLE001
        return e


def silent_result(label, caller):
    per_rank = _silent_run()
    if isinstance(per_rank, Exception):
        raise per_rank
    return per_rank[caller][label]


SCENARIO_IDS = [s[0] for s in SILENT_PEER_SCENARIOS]


@pytest.mark.parametrize("label, caller, op_name, causal", SILENT_PEER_SCENARIOS, ids=SCENARIO_IDS)
def test_silent_peer_fails_within_the_timeout(label, caller, op_name, causal):
    res = silent_result(label, caller)
    assert res["outcome"] is not None, f"{op_name} returned although the peer never called it"
    kind, message = res["outcome"]
    assert "timed out" in message, message
    assert f"rank {caller} timed out after {int(TIMEOUT_S * 1000)} ms" in message, message
    # Bounded: about the configured timeout, far below the 300 s default.
    assert TIMEOUT_S - 0.5 <= res["seconds"] <= TIMEOUT_S + 10, res


@pytest.mark.parametrize(
    "label, caller, op_name, causal",
    [pytest.param(*s) for s in SILENT_PEER_SCENARIOS],
    ids=SCENARIO_IDS,
)
def test_silent_peer_error_names_the_peer(label, caller, op_name, causal):
    res = silent_result(label, caller)
    assert res["outcome"] is not None
    message = res["outcome"][1]
    peer = 1 - caller
    assert f"rank {peer}" in message, f"the error does not name the silent peer: {message}"


def test_disagreement_after_an_agreed_configuration_raises_on_every_rank():
    """Agreement is checked on every call, so a rank that switches configuration after an agreed
    call is caught at once on both ranks with the 'ranks disagree' ValueError, not a timeout."""
    per_rank = _silent_run()
    if isinstance(per_rank, Exception):
        raise per_rank
    for rank, res in enumerate(per_rank):
        res = res["disagree-after-agreement"]
        assert res["outcome"] is not None, f"rank {rank} returned although the ranks disagree"
        kind, message = res["outcome"]
        assert kind == "ValueError" and "ranks disagree on is_causal" in message, res
        assert res["seconds"] < TIMEOUT_S, res
