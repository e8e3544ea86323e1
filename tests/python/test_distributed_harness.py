"""The multi-process harness itself: failures come back with their traceback, a rank blocked on
a failed peer is stopped, and a hung run is killed at the timeout. Never hangs."""

import os
import time

import pytest

from distributed_harness import DistributedWorkerError, run_on_ranks


def _raise_on_rank_one(ctx, pid_dir):
    with open(os.path.join(pid_dir, f"rank{ctx.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    if ctx.rank == 1:
        raise KeyError("deliberate failure on rank one")
    ctx.store().wait(["never-set"])  # blocks (up to the rendezvous timeout), whatever rank 1 does
    return "unreachable"


def _hang(ctx, pid_dir):
    with open(os.path.join(pid_dir, f"rank{ctx.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(3600)


def _pids(pid_dir):
    return [int(open(os.path.join(pid_dir, n)).read()) for n in sorted(os.listdir(pid_dir))]


def _assert_gone(pids):
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_results_come_back_in_rank_order():
    assert run_on_ranks(_rank_and_size, 2, timeout=60) == [(0, 2), (1, 2)]


def _rank_and_size(ctx):
    return ctx.rank, ctx.world_size


def test_worker_failure_is_reraised_with_traceback_and_blocked_peer_stopped(tmp_path):
    start = time.monotonic()
    with pytest.raises(DistributedWorkerError) as info:
        run_on_ranks(_raise_on_rank_one, 2, args=(str(tmp_path),), timeout=60,
                     peer_grace_s=2)
    message = str(info.value)
    assert "--- rank 1 ---" in message and "Traceback" in message
    assert "deliberate failure on rank one" in message and "_raise_on_rank_one" in message
    assert "ranks [0] had not finished and were stopped" in message
    assert time.monotonic() - start < 30  # stopped soon after the failure, not at the timeout
    _assert_gone(_pids(tmp_path))


def test_hung_worker_is_killed_at_the_timeout(tmp_path):
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0\] never reported"):
        run_on_ranks(_hang, 1, args=(str(tmp_path),), timeout=6)
    assert time.monotonic() - start < 15
    _assert_gone(_pids(tmp_path))
