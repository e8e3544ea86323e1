"""Per-rank timing of the distributed dilated attention ops on gloo over 127.0.0.1.

For each world size P (default 1, 2, 4) a fresh gloo world of P processes runs every op on two
layouts with the global N fixed, so per-rank work shrinks with P:
  local:    segments [512, 1024, 2048], rates [1, 2, 4]: every segment inside a shard (N/P >= 2048)
  spanning: segments [2048, 4096, 8192], rates [1, 2, 4]: segments cross shard boundaries
The machine's cores are SHARED by the P ranks: each rank gets max(1, cores // P) intra-op threads,
so P > 1 never has more hardware than P = 1; compare FLOP-normalised throughput, not raw speed.

head_parallel_dilated_attention is replicated: every rank passes the full sequence and computes
H/P heads. Its "per-rank tokens" is reported as N/P anyway, so its tokens/s compare with the
sharded ops (same share of the whole problem per rank).

Each world's rank 0 gathers every rank's rows; the launcher merges the worlds and writes
bench/results/distributed.json, then prints the table.
    .venv/bin/python bench/bench_distributed.py [--world-sizes 1,2,4] [--repeats 3]
"""

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", REPO / "build" / "libdilated_attention_ops.so"))
OUT = REPO / "bench" / "results" / "distributed.json"
CORES = os.cpu_count() or 1
B, H, D = 1, 8, 64
CONFIGS = {
    "local": ([512, 1024, 2048], [1, 2, 4]),
    "spanning": ([2048, 4096, 8192], [1, 2, 4]),
}
# (label, op name, sharded?): sharded ops take this rank's N/P rows; replicated ones all N rows.
OPS = [
    ("v2 (segment ring)", "ring_dilated_attention_hybrid_optimized_v2", True),
    ("full ring", "ring_dilated_attention_hybrid_optimized", True),
    ("v2_collective (all_gather)", "ring_dilated_attention_v2_collective", True),
    ("head_parallel (replicated)", "head_parallel_dilated_attention", False),
]


def head_groups(heads, segments, rates):
    """(first_head, num_heads, s, r) per group: the first H % G groups get one extra head
    (kernels/dilation_plan.cpp make_head_groups)."""
    groups, first = [], 0
    for g, (s, r) in enumerate(zip(segments, rates)):
        n = heads // len(segments) + (1 if g < heads % len(segments) else 0)
        groups.append((first, n, s, r))
        first += n
    return groups


def rank_forward_flops(seq, segments, rates, world, rank, sharded):
    """Effective forward FLOPs 4*B*h_g*(N/r_g)*(s_g/r_g)*D of the work this rank does: the sum over
    groups divided by P for sharded ops; for head-parallel, the groups' heads in this rank's slice."""
    lo, hi = (0, H) if sharded else (rank * H // world, (rank + 1) * H // world)
    flops = 0.0
    for first, n, s, r in head_groups(H, segments, rates):
        heads = max(0, min(first + n, hi) - max(first, lo))
        flops += 4.0 * B * heads * (seq / r) * (s / r) * D
    return flops / world if sharded else flops


def timed(fn):
    """Seconds of fn on this rank; the barrier first makes every rank start the call together."""
    dist.barrier()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(op, sharded, seq, segments, rates, args, world, rank, group_name):
    bytes_sent = torch.ops.dilated_attention.bytes_sent_by_last_call
    rows = seq // world if sharded else seq
    # Replicated ops need the same full tensors everywhere: seed by rank only when sharded.
    gen = torch.Generator().manual_seed(1000 + (rank if sharded else 0))
    q, k, v, grad = (torch.randn(B, rows, H, D, generator=gen) for _ in range(4))
    call = lambda *t: op(*t, segments, rates, group_name=group_name)  # noqa: E731
    seen = {}

    def forward():
        with torch.no_grad():
            call(q, k, v)
        seen["fwd_only"] = bytes_sent()

    def forward_backward():
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out = call(*leaves)
        seen["fwd"] = bytes_sent()  # read right after forward, before backward overwrites it
        out.backward(grad)
        seen["bwd"] = bytes_sent()

    times, fastest = {}, {}
    for name, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
        for _ in range(args.warmup):
            timed(fn)
        samples = [timed(fn) for _ in range(args.repeats)]
        # The median is the headline; the minimum is kept because on a shared machine it is the
        # least disturbed sample.
        times[name], fastest[name] = statistics.median(samples), min(samples)
    flops = rank_forward_flops(seq, segments, rates, world, rank, sharded)
    tokens = seq // world  # per-rank share, also for the replicated op (see the module docstring)
    return {
        "rank": rank, "per_rank_tokens": tokens,
        "fwd_s": times["fwd"], "fwd_bwd_s": times["fwd_bwd"],
        "fwd_min_s": fastest["fwd"], "fwd_bwd_min_s": fastest["fwd_bwd"],
        "fwd_tokens_per_s": tokens / times["fwd"], "fwd_bwd_tokens_per_s": tokens / times["fwd_bwd"],
        "fwd_bytes": seen["fwd"], "bwd_bytes": seen["bwd"], "fwd_only_bytes": seen["fwd_only"],
        "rank_fwd_flops": flops,
        "fwd_gflops_per_s": flops / times["fwd"] / 1e9,
        "fwd_bwd_gflops_per_s": 3.5 * flops / times["fwd_bwd"] / 1e9,  # backward = 2.5x forward
    }


def worker(rank, world, port, args, part_path):
    torch.set_num_threads(max(1, CORES // world))  # the cores are shared by the P ranks
    # The deprecated names warn once per process (c10 prints it to stderr); that is expected.
    warnings.filterwarnings("ignore", message=".*is deprecated.*")
    torch.ops.load_library(str(LIB))
    # A world of one is a real gloo group too, so P = 1 runs the same code path as P > 1.
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    group_name = dist.group.WORLD.group_name
    rows = []
    for config, (segments, rates) in CONFIGS.items():
        for label, name, sharded in OPS:
            op = getattr(torch.ops.dilated_attention, name)
            row = measure(op, sharded, args.seq_len, segments, rates, args, world, rank, group_name)
            rows.append({"config": config, "op": label, "op_name": name, "world_size": world,
                         "threads_per_rank": torch.get_num_threads(), **row})
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(rows, gathered, dst=0)
    if rank == 0:
        Path(part_path).write_text(json.dumps([r for part in gathered for r in part]))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def summarise(rows, worlds):
    """Throughput of v2 at each P relative to P = 1, bounded by the slowest rank (a step ends when
    every rank is done). Per-rank tokens/s shrinks with the work; FLOP-normalised does not."""
    out = []
    if 1 not in worlds:
        return out
    for config in CONFIGS:
        def slowest(world, key):
            return min(r[key] for r in rows if r["config"] == config and r["op"] == OPS[0][0]
                       and r["world_size"] == world)
        keys = ("fwd_tokens_per_s", "fwd_gflops_per_s", "fwd_bwd_gflops_per_s")
        base = {k: slowest(1, k) for k in keys}
        for w in worlds:
            tok, gf, gfb = (slowest(w, k) / base[k] for k in keys)
            out.append({"config": config, "world_size": w, "per_rank_tokens_per_s_vs_p1": tok,
                        "per_rank_fwd_gflops_vs_p1": gf, "aggregate_fwd_gflops_vs_p1": w * gf,
                        "aggregate_fwd_bwd_gflops_vs_p1": w * gfb})
    return out


def print_table(rows, summary):
    print(f"\nper-rank medians, slowest rank shown; bytes = max over ranks (MB); cores={CORES} shared by P ranks")
    head = f"{'config':9} {'op':27} {'P':>2} {'tok/rank':>8} {'fwd ms':>8} {'f+b ms':>8} " \
           f"{'fwd tok/s':>10} {'fwd GF/s':>8} {'fwdMB':>7} {'bwdMB':>7}"
    print(head + "\n" + "-" * len(head))
    keys = sorted({(r["config"], r["op"], r["world_size"]) for r in rows},
                  key=lambda k: (list(CONFIGS).index(k[0]), [o[0] for o in OPS].index(k[1]), k[2]))
    for config, op, world in keys:
        sel = [r for r in rows if (r["config"], r["op"], r["world_size"]) == (config, op, world)]
        slow = max(sel, key=lambda r: r["fwd_s"])
        slow_fb = max(r["fwd_bwd_s"] for r in sel)
        print(f"{config:9} {op:27} {world:>2} {slow['per_rank_tokens']:>8} {1e3 * slow['fwd_s']:>8.1f} "
              f"{1e3 * slow_fb:>8.1f} {slow['fwd_tokens_per_s']:>10.0f} {slow['fwd_gflops_per_s']:>8.2f} "
              f"{max(r['fwd_bytes'] for r in sel) / 1e6:>7.2f} {max(r['bwd_bytes'] for r in sel) / 1e6:>7.2f}")
    print("\nv2 relative to P=1 (slowest rank): per-rank tok/s | per-rank fwd GFLOP/s | "
          "aggregate fwd GFLOP/s | aggregate fwd+bwd GFLOP/s")
    for s in summary:
        print(f"  {s['config']:9} P={s['world_size']}: {s['per_rank_tokens_per_s_vs_p1']:.3f} | "
              f"{s['per_rank_fwd_gflops_vs_p1']:.3f} | {s['aggregate_fwd_gflops_vs_p1']:.3f} | "
              f"{s['aggregate_fwd_bwd_gflops_vs_p1']:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-sizes", default="1,2,4")
    parser.add_argument("--seq-len", type=int, default=8192, help="global N, fixed across P")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    worlds = [int(w) for w in args.world_sizes.split(",")]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # keep gloo on loopback
    # Other work on the machine distorts timings: record the load around the run.
    load_at_start = os.getloadavg()
    start, rows = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        for world in worlds:
            part = os.path.join(tmp, f"p{world}.json")
            mp.spawn(worker, args=(world, free_port(), args, part), nprocs=world, join=True)
            rows += json.loads(Path(part).read_text())
            print(f"P={world} done after {time.time() - start:.0f} s", flush=True)
    summary = summarise(rows, worlds)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "benchmark": "distributed_dilated_attention",
        "config": {"batch": B, "heads": H, "head_dim": D, "dtype": "float32", "seq_len": args.seq_len,
                   "layouts": {k: {"segments": s, "rates": r} for k, (s, r) in CONFIGS.items()},
                   "world_sizes": worlds, "warmup": args.warmup, "repeats": args.repeats,
                   "backend": "gloo on 127.0.0.1", "threads_per_rank": "max(1, cores // P)",
                   "notes": ["cores are shared by the P ranks of one world",
                             "head_parallel is replicated (full sequence on every rank); "
                             "per_rank_tokens = N/P for comparability",
                             "rank_fwd_flops = 4*B*h_g*(N/r_g)*(s_g/r_g)*D summed over groups, "
                             "/P for sharded ops, this rank's heads for head_parallel; "
                             "fwd+bwd = 3.5x forward"]},
        "machine": {"cpu_model": cpu_model(), "logical_cpus": CORES, "torch_version": torch.__version__,
                    "load_average_1_5_15min_at_start": load_at_start,
                    "load_average_1_5_15min_at_end": os.getloadavg(),
                    "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
        "wall_s": time.time() - start,
        "rows": rows,
        "v2_relative_to_p1": summary,
    }, indent=2))
    print(f"wrote {OUT} ({time.time() - start:.0f} s)")
    print_table(rows, summary)


if __name__ == "__main__":
    main()
