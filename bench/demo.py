"""The README's main job: a real CPU demo of the dilated_attention ops.

1. Exactness: the op against the independent float64 reference on a small case, forward and
   gradients.
2. Speed: the C++ benchmark at B=1, N=16384, H=8, D=64, segments [2048, 4096, 8192],
   rates [1, 2, 4], float32: ours against the per-group gather + SDPA baseline and dense SDPA.
3. Two processes over gloo: the primary ring op and one deprecated op on the same sharded data,
   their equality with the single-process result, and the bytes each rank sent.
"""

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from reference import dilated_attention_reference  # noqa: E402

LIB = os.environ.get("DILATED_ATTENTION_OPS_LIB", str(ROOT / "build" / "libdilated_attention_ops.so"))


def check_exactness() -> None:
    torch.manual_seed(0)
    shape, segments, rates = (2, 96, 5, 16), [12, 24, 48], [1, 2, 3]
    q, k, v = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, dtype=torch.float64)
    print("== 1. exactness against the float64 reference (B=2, N=96, H=5, D=16, "
          "segments [12, 24, 48], rates [1, 2, 3])")
    for causal in (False, True):
        ours = torch.ops.dilated_attention.dilated_attention(q, k, v, segments, rates, 0.0, causal)
        ref = dilated_attention_reference(q, k, v, segments, rates, causal)
        ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
        ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
        errors = [(ours - ref).abs().max().item()] + [
            (a - b).abs().max().item() for a, b in zip(ours_grads, ref_grads)]
        print(f"   causal={causal!s:5}  max |error|  out {errors[0]:.1e}  dq {errors[1]:.1e}  "
              f"dk {errors[2]:.1e}  dv {errors[3]:.1e}")
        assert max(errors) < 1e-10, "the op disagrees with the reference"


def run_benchmark(bench: str, extra) -> None:
    print("\n== 2. speed on this CPU (C++ benchmark; JSON in bench/results/dilated_attention.json)")
    subprocess.run([bench, *extra], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ring_worker(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.ops.load_library(LIB)
    torch.set_num_threads(1)
    torch.manual_seed(0)  # same full tensors on every rank
    n, segments, rates = 4096, [512, 1024, 4096], [1, 2, 4]
    q, k, v = (torch.randn(1, n, 8, 64) for _ in range(3))
    full = torch.ops.dilated_attention.dilated_attention(q, k, v, segments, rates)
    rows = slice(rank * n // world, (rank + 1) * n // world)
    group = dist.group.WORLD.group_name
    report = []
    for name in ("ring_dilated_attention_hybrid_optimized_v2", "ring_dilated_attention_v2_collective"):
        op = getattr(torch.ops.dilated_attention, name)
        out = op(q[:, rows], k[:, rows], v[:, rows], segments, rates, group_name=group)
        sent = torch.ops.dilated_attention.bytes_sent_by_last_call()
        report.append((name, (out - full[:, rows]).abs().max().item(), sent))
    gathered = [None] * world
    dist.all_gather_object(gathered, report)
    if rank == 0:
        print(f"{'op':44} {'rank':>4} {'max |diff| vs 1 process':>24} {'bytes sent':>11}")
        for r, rows_report in enumerate(gathered):
            for name, diff, sent in rows_report:
                print(f"{name:44} {r:>4} {diff:>24.1e} {sent:>11,}")
    dist.destroy_process_group()


def run_two_processes() -> None:
    print("\n== 3. two processes over gloo: N=4096 sharded 2 ways, segments [512, 1024, 4096] "
          "(the 4096 segment spans both shards), rates [1, 2, 4]")
    print("   (the deprecated op prints its deprecation warning once per process below)")
    sys.stdout.flush()
    mp.spawn(ring_worker, args=(2, free_port()), nprocs=2, join=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=str(ROOT / "build" / "bench" / "dilated_attention_bench"))
    args, bench_args = parser.parse_known_args()
    torch.ops.load_library(LIB)
    torch.set_num_threads(os.cpu_count() or 1)
    check_exactness()
    run_benchmark(args.bench, bench_args)
    run_two_processes()


if __name__ == "__main__":
    main()
