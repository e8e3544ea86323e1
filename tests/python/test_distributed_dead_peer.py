"""A peer that is gone: rank 1 leaves (its process ends) while rank 0 calls every named
distributed op on their group. Rank 0 must raise a clear error naming the missing rank within
DILATED_ATTENTION_COMM_TIMEOUT_S, never hang or abort."""

from __future__ import annotations

import time

import pytest
import torch

from distributed_harness import run_once_per_session
from helpers import op_params, op_row, ops_with

TIMEOUT_S = 5


def dead_peer_worker(ctx):
    if ctx.rank == 1:
        return {}  # leaves: its process ends while rank 0 waits for it
    time.sleep(2.0)
    results = {}
    for op_name in ops_with(signature="attention"):
        rows = 32 if op_row(op_name)["contract"] == "replicated" else 16
        q = torch.randn(1, rows, 4, 4)
        start = time.monotonic()
        try:
            getattr(torch.ops.dilated_attention, op_name)(q, q, q, [32], [1], 0.0, False, None,
                                                          ctx.group_name)
            outcome = None
        except Exception as e:  # noqa: BLE001 - the test checks kind and message
            outcome = (type(e).__name__, str(e))
        results[op_name] = {"outcome": outcome, "seconds": time.monotonic() - start}
    return results


def _rank0():
    return run_once_per_session(dead_peer_worker, 2, timeout=120,
                                env={"DILATED_ATTENTION_COMM_TIMEOUT_S": str(TIMEOUT_S)})[0]


@pytest.mark.parametrize("op_name", op_params(ops_with(signature="attention")))
def test_gone_peer_gives_a_clear_error_within_the_timeout(op_name):
    got = _rank0()[op_name]
    assert got["outcome"] is not None, f"{op_name} returned although rank 1 is gone"
    kind, message = got["outcome"]
    assert kind in ("RuntimeError", "ValueError"), got
    assert "rank 1" in message, message
    assert got["seconds"] < TIMEOUT_S + 10, got
