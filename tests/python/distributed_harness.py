"""Runs a worker function on P gloo ranks, one spawned process per rank, for the distributed tests.

    results = run_on_ranks(my_worker, world_size=2, args=(config,), timeout=120)

`my_worker` must be a module-level function (spawn pickles it by reference) taking a `RankContext`
and then `args`. Every rank loads the op library (DILATED_ATTENTION_OPS_LIB, or
<repo>/build/libdilated_attention_ops.so), runs with one intra-op thread, joins a gloo group on
127.0.0.1, and calls the worker. `run_on_ranks` returns the workers' return values in rank order
(keep them small and picklable: numbers, strings, lists, dicts). A worker that raises makes
`run_on_ranks` raise `DistributedWorkerError` carrying the worker's traceback; a rank that dies
without reporting, or a run that exceeds `timeout`, raises too, after every process is killed, so
a test never hangs.
"""

from __future__ import annotations

import dataclasses
import datetime
import multiprocessing as mp
import os
import queue as queue_module
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[2]

# Bounded waits inside the ops, so a rank that fails alone makes its peers fail soon, not hang.
DEFAULT_ENV = {"DILATED_ATTENTION_COMM_TIMEOUT_S": "30"}


def library_path() -> Path:
    default = REPO_ROOT / "build" / "libdilated_attention_ops.so"
    return Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", default)).resolve()


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class RankContext:
    """What a worker knows about its place in the group."""

    rank: int
    world_size: int
    group: Any  # the torch.distributed ProcessGroup (the default group)
    group_name: str  # group.group_name, what the ops take

    def store(self):
        """The rendezvous key-value store, for out-of-band synchronisation between ranks."""
        import torch.distributed.distributed_c10d as c10d

        return c10d._get_default_store()


class DistributedWorkerError(AssertionError):
    """One or more ranks raised; the message holds each failing rank's traceback."""


def _bootstrap(rank: int, world_size: int, port: int, worker: Callable, args: Sequence,
               env: Mapping[str, str], lib: str, result_queue, init_timeout_s: float) -> None:
    os.environ.update(env)
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)
        torch.ops.load_library(lib)
        try:
            dist.init_process_group(
                "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                timeout=datetime.timedelta(seconds=init_timeout_s),
            )
        except BaseException:  # noqa: BLE001
            result_queue.put((rank, "init_error", traceback.format_exc()))
            return
        group = dist.group.WORLD
        context = RankContext(rank, world_size, group, group.group_name)
        result = worker(context, *args)
        result_queue.put((rank, "ok", result))
    except BaseException:  # noqa: BLE001 - every failure must reach the test
        result_queue.put((rank, "error", traceback.format_exc()))
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except BaseException:  # noqa: BLE001 - teardown problems must not hide the result
            pass
        # Make sure the result left this process before it exits.
        result_queue.close()
        result_queue.join_thread()


def _stop(processes: List[mp.Process], grace_s: float) -> None:
    processes = [p for p in processes if p.pid is not None]  # started ones only
    deadline = time.monotonic() + grace_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(2.0)
        if p.is_alive():
            p.kill()
            p.join(2.0)


class _PortTaken(Exception):
    pass


def _port_taken(text: str) -> bool:
    text = text.lower()
    return "address already in use" in text or "eaddrinuse" in text


def run_on_ranks(worker: Callable, world_size: int, args: Sequence = (), *, timeout: float = 120.0,
                 env: Optional[Mapping[str, str]] = None, grace_s: float = 5.0,
                 peer_grace_s: float = 10.0, attempts: int = 3) -> List[Any]:
    """Runs worker(RankContext, *args) on `world_size` gloo ranks; returns the results by rank.

    timeout bounds each attempt (start-up included). grace_s: how long processes may take to exit
    after reporting before they are killed (teardown after a deliberate communication failure
    may not finish on its own). peer_grace_s: once a rank failed, how long the others may still
    take to report before they are stopped. A rendezvous port taken by someone else between choosing and
    binding it is retried with a new port, up to `attempts` times.
    """
    lib = library_path()
    if not lib.is_file():
        raise RuntimeError(f"op library not found at {lib}")
    child_env = dict(DEFAULT_ENV)
    child_env.update(env or {})
    for attempt in range(attempts):
        try:
            return _run_once(worker, world_size, tuple(args), timeout, child_env, str(lib),
                             grace_s, peer_grace_s)
        except _PortTaken:
            if attempt + 1 == attempts:
                raise RuntimeError(f"no free rendezvous port after {attempts} attempts") from None
    raise AssertionError("unreachable")


_session_runs: Dict[Any, Any] = {}


def run_once_per_session(worker: Callable, world_size: int, **kwargs) -> List[Any]:
    """run_on_ranks(worker, world_size, **kwargs) once per test session: the tests that read the
    same run share it, and each of them re-raises its error if it failed."""
    key = (worker.__module__, worker.__qualname__, world_size)
    if key not in _session_runs:
        try:
            _session_runs[key] = run_on_ranks(worker, world_size, **kwargs)
        except Exception as e:  # noqa: BLE001 - re-raised by every test that reads the run
            _session_runs[key] = e
    outcome = _session_runs[key]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _run_once(worker, world_size, args, timeout, child_env, lib, grace_s, peer_grace_s):
    name = getattr(worker, "__name__", repr(worker))
    ctx = mp.get_context("spawn")
    result_queue = ctx.Queue()
    port = free_port()
    processes = [
        ctx.Process(
            target=_bootstrap,
            args=(rank, world_size, port, worker, args, child_env, lib, result_queue,
                  max(10.0, timeout)),
            name=f"dilated-attention-rank{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    ]
    results: Dict[int, Any] = {}
    errors: Dict[int, str] = {}
    deadline = time.monotonic() + timeout
    dead_since: Dict[int, float] = {}
    aborted = False
    try:
        for p in processes:
            p.start()
        while len(results) + len(errors) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(results) - set(errors))
                details = "".join(f"\n--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items()))
                aborted = True
                if errors:  # the peers of a failed rank were given a short while, then stopped
                    break
                raise TimeoutError(
                    f"distributed run of {name} on {world_size} ranks exceeded {timeout:.0f} s; "
                    f"ranks {missing} never reported{details}"
                )
            try:
                rank, status, payload = result_queue.get(timeout=min(remaining, 0.25))
            except queue_module.Empty:
                now = time.monotonic()
                for rank, p in enumerate(processes):
                    if rank in results or rank in errors or p.is_alive():
                        continue
                    # A result put just before exiting may still be in the pipe: wait a moment.
                    first = dead_since.setdefault(rank, now)
                    if now - first > 2.0:
                        errors[rank] = f"rank {rank} exited with code {p.exitcode} without reporting"
                continue
            if status == "ok":
                results[rank] = payload
                continue
            if status == "init_error" and _port_taken(payload):
                aborted = True
                raise _PortTaken(payload)
            errors[rank] = payload
            # Peers of a failed rank may wait on it until their communication timeout: give them
            # a short while to report, then stop them.
            deadline = min(deadline, time.monotonic() + peer_grace_s)
    finally:
        _stop(processes, 1.0 if errors or aborted else grace_s)
        result_queue.close()
    if errors:
        missing = sorted(set(range(world_size)) - set(results) - set(errors))
        details = "".join(f"\n--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items()))
        still = f" (ranks {missing} had not finished and were stopped)" if missing else ""
        raise DistributedWorkerError(
            f"{len(errors)} of {world_size} ranks of {name} failed{still}:{details}")
    return [results[r] for r in range(world_size)]


class SharedRun:
    """One spawn of `worker` per world size, shared by every test that reads its results (process
    start-up dominates the cost): the first test to ask runs it, the others reuse its results, and
    a failed run fails each of them with the same error.

        RUN = SharedRun(my_worker, timeout=240)
        per_rank = RUN.results(world_size)
    """

    def __init__(self, worker: Callable, *, timeout: float = 120.0):
        self._worker, self._timeout = worker, timeout
        self._outcomes: Dict[int, Any] = {}

    def results(self, world_size: int) -> List[Any]:
        if world_size not in self._outcomes:
            try:
                self._outcomes[world_size] = run_on_ranks(self._worker, world_size,
                                                          timeout=self._timeout)
            except Exception as error:  # noqa: BLE001 - re-raised by every test that asks
                self._outcomes[world_size] = error
        outcome = self._outcomes[world_size]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
