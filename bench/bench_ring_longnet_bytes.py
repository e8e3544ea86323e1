"""Bytes each rank sends in ring_longnet_attention, against torchscale's sequence-parallel LongNet.

For each world size P a gloo world of P processes (127.0.0.1) runs ring_longnet_attention forward
and backward on this rank's N/P rows, and reads bytes_sent_by_last_call after each. torchscale
(torchscale/component/dilated_attention.py, `gather_kv`) all-gathers, for every branch whose
segment is longer than the shard, the dilated K and V rows of the whole shard (n/r rows of every
head) from every rank of the group, causal or not; an all_gather of M bytes per rank sends
M·(P−1) bytes from each rank (the ring algorithm's count, and this library's). Its backward sends
the same again through the gather's gradient (a reduce-scatter). That model is computed here, not
measured: torchscale needs flash_attn on a GPU.

    .venv/bin/python bench/bench_ring_longnet_bytes.py [--n 8192] [--world-sizes 2,4]
        [--out docs/benchmarks/ring_longnet_bytes.json]
"""

import argparse
import datetime
import json
import math
import os
import platform
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB",
                          REPO / "build" / "libdilated_attention_ops.so"))
B, H, D = 1, 8, 64
# At P = 4 (n = 2048) the 4096-segments span two shards and the 8192-segment all four.
SEGMENTS, RATES = [2048, 4096, 8192], [1, 2, 4]
ELEMENT = 4  # float32


def torchscale_bytes(n, world_size):
    """Forward bytes one rank sends: K and V, ceil(n / r) rows of H heads, to P - 1 ranks, for
    every branch whose segment is longer than the shard."""
    total = 0
    for s, r in zip(SEGMENTS, RATES):
        if s > n:
            total += 2 * B * math.ceil(n / r) * H * D * ELEMENT * (world_size - 1)
    return total


def _rank(rank, world_size, init_file, n_total, results):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    torch.ops.load_library(str(LIB))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    n = n_total // world_size
    gen = torch.Generator().manual_seed(rank)
    q, k, v = (torch.randn(B, n, H, D, generator=gen).requires_grad_(True) for _ in range(3))
    row = {}
    for causal in (False, True):
        out = torch.ops.dilated_attention.ring_longnet_attention(
            q, k, v, SEGMENTS, RATES, 0.0, causal, None, dist.group.WORLD.group_name)
        forward = torch.ops.dilated_attention.bytes_sent_by_last_call()
        out.sum().backward()
        backward = torch.ops.dilated_attention.bytes_sent_by_last_call()
        row["causal" if causal else "full"] = {"forward": forward, "backward": backward}
    gathered = [None] * world_size
    dist.all_gather_object(gathered, row)
    if rank == 0:
        results.put(gathered)
    dist.destroy_process_group()


def measure(n_total, world_size):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [ctx.Process(target=_rank, args=(r, world_size, init_file, n_total, results))
                 for r in range(world_size)]
        for p in procs:
            p.start()
        per_rank = results.get(timeout=600)
        for p in procs:
            p.join(timeout=60)
    return per_rank


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--world-sizes", default="2,4")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ring_longnet_bytes.json"))
    args = parser.parse_args()
    rows = []
    for world_size in [int(p) for p in args.world_sizes.split(",")]:
        per_rank = measure(args.n, world_size)
        model = torchscale_bytes(args.n // world_size, world_size)
        for mode in ("full", "causal"):
            forward = [r[mode]["forward"] for r in per_rank]
            backward = [r[mode]["backward"] for r in per_rank]
            rows.append({
                "world_size": world_size, "mode": mode,
                "ours_forward_bytes_per_rank": forward,
                "ours_backward_bytes_per_rank": backward,
                "torchscale_forward_bytes_per_rank": model,
                # Allgather's backward is a reduce-scatter of the gathered gradients: as many.
                "torchscale_backward_bytes_per_rank": model,
                "ratio_torchscale_over_ours_forward_max_rank": model / max(max(forward), 1),
                "ratio_torchscale_over_ours_forward_mean": model * len(forward) / max(sum(forward), 1),
            })
            mib = lambda x: x / 2**20
            print(f"P={world_size} {mode:6s} forward: ours max {mib(max(forward)):6.2f} MiB, "
                  f"mean {mib(sum(forward) / len(forward)):6.2f} MiB; torchscale {mib(model):6.2f}"
                  f" MiB | backward: ours max {mib(max(backward)):6.2f} MiB, torchscale "
                  f"{mib(model):6.2f} MiB (per rank)")
    report = {
        "bench": "ring_longnet_bytes",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "machine": {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count()},
        "torch": torch.__version__,
        "config": {"B": B, "N": args.n, "H": H, "D": D, "segment_lengths": SEGMENTS,
                   "dilation_rates": RATES, "dtype": "float32"},
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
