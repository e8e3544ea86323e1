"""What the ranks' agreement check costs each call: two gloo ranks over 127.0.0.1.

Every distributed op's forward and backward first compares a fixed-size fingerprint across the
ranks (ops/config_agreement.h): two small messages through rank 0. This measures, in one run:
  attention:  the forward of ring_dilated_attention_hybrid_optimized_v2 at N = 8192 (4096 rows
              per rank, B=1, H=8, D=64, segments [512, 1024, 2048], rates [1, 2, 4]: every
              segment inside a shard, so the call's only messages are the agreement's)
  tiny call:  the same op on a [1, 1, 1, 1] shard (fixed cost of a call, the check included)
  two small messages: rank 1 sends its 17-value int64 fingerprint to rank 0 and receives the
              2 x 15 table back (torch.distributed send / recv), what the check moves
and writes bench/results/agreement.json.
    .venv/bin/python bench/bench_agreement.py [--repeats 50] [--lib build/libdilated_attention_ops.so]
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "agreement.json"
SEGS, RATES = [512, 1024, 2048], [1, 2, 4]


def _median_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _rank(rank, world, init_file, lib, repeats, queue):
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    torch.ops.load_library(lib)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    group = dist.group.WORLD.group_name
    op = torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2
    q = torch.randn(1, 8192 // world, 8, 64)
    tiny = torch.randn(1, 1, 1, 1)
    fingerprint = torch.zeros(16, dtype=torch.long)
    table = torch.zeros(world, 16, dtype=torch.long)

    def round_trip():
        if rank == 0:
            dist.recv(table[1], 1)
            dist.send(table, 1)
        else:
            dist.send(fingerprint, 0)
            dist.recv(table, 0)

    row = {
        "attention_ms": _median_ms(lambda: op(q, q, q, SEGS, RATES, 0.0, False, None, group),
                                   repeats),
        "tiny_call_ms": _median_ms(lambda: op(tiny, tiny, tiny, [1], [1], 0.0, False, None, group),
                                   repeats),
        "two_small_messages_ms": _median_ms(round_trip, repeats),
    }
    queue.put((rank, row))
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--lib", default=os.environ.get(
        "DILATED_ATTENTION_OPS_LIB", str(REPO / "build" / "libdilated_attention_ops.so")))
    args = parser.parse_args()
    world = 2
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank, args=(r, world, init_file, args.lib, args.repeats, queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        rows = dict(queue.get(timeout=600) for _ in procs)
        for p in procs:
            p.join(timeout=60)
    result = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} cores, shared by {world} ranks)",
        "torch": torch.__version__, "world_size": world, "repeats": args.repeats,
        "ranks": rows,
        "agreement_share_of_attention": rows[0]["two_small_messages_ms"] / rows[0]["attention_ms"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'rank':>4} {'attention ms':>13} {'tiny call ms':>13} {'2 small msgs ms':>16}")
    for rank in sorted(rows):
        r = rows[rank]
        print(f"{rank:>4} {r['attention_ms']:>13.3f} {r['tiny_call_ms']:>13.3f} "
              f"{r['two_small_messages_ms']:>16.3f}")
    print(f"agreement (two small messages) / attention call at N=8192: "
          f"{result['agreement_share_of_attention']:.2%}  -> {OUT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
