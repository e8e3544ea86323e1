"""Dropout's cost: dilated_attention with dropout_p = 0.1 against the same call without dropout,
in float32 and bfloat16, forward and forward+backward, in one process.

Config (the CPU kernel issue's): B=1, N=16384, H=8, D=64, segments [2048, 4096, 8192], rates
[1, 2, 4], 2 threads. Where the CPU takes our fused kernel (kernels/cpu/flash_attention_cpu.h:
bfloat16 and float32 on AVX-512 CPUs without AMX) both calls run it, the mask drawn per key block;
elsewhere the call without dropout runs ATen's CPU flash kernel per head group and the one with
dropout our dropout kernel (kernels/cpu/dropout_attention_cpu.cpp). The row loops are the build
of DILATED_ATTENTION_CPU_CAPABILITY (the best the CPU has unless capped).
Time: one warm-up per (dtype, p, pass), then --repeats rounds, each running every (dtype, p,
pass) once in a fresh seeded random order; median per entry. GFLOP/s counts the dilated work
(4 * B * h_g * (N / r) * (s / r) * D per group; forward+backward as 3.5 times that); with
--peaks (the JSON of build/bench/peaks_bench) each rate is also given as a fraction of the
machine's fp32 FMA and bf16 dot-product peaks.

    .venv/bin/python bench/bench_dropout.py [--repeats 5] [--peaks bench/results/peaks.json]
Writes docs/benchmarks/dropout_N16384.json (--out) and prints a table.
"""

import argparse
import datetime
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_longnet import head_split_flops  # noqa: E402
from machine import cpu_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", REPO / "build" / "libdilated_attention_ops.so"))
OUT = REPO / "docs" / "benchmarks" / "dropout_N16384.json"
B, N, H, D = 1, 16384, 8, 64
SEGMENTS, RATES = [2048, 4096, 8192], [1, 2, 4]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
PASSES = ("forward", "forward+backward")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--peaks", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.ops.load_library(str(LIB))
    torch.set_num_threads(args.threads)
    op = torch.ops.dilated_attention.dilated_attention

    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(B, N, H, D, generator=gen) for _ in range(3)]
    inputs = {name: [t.to(dtype).requires_grad_() for t in base] for name, dtype in DTYPES.items()}
    grad = {name: torch.randn(B, N, H, D, generator=gen).to(dtype) for name, dtype in DTYPES.items()}

    def run(entry):
        name, p, which = entry
        q, k, v = inputs[name]
        for t in (q, k, v):
            t.grad = None
        if which == "forward":
            with torch.no_grad():
                op(q, k, v, SEGMENTS, RATES, p)
        else:
            op(q, k, v, SEGMENTS, RATES, p).backward(grad[name])

    entries = [(name, p, which) for name in DTYPES for p in (0.0, args.p) for which in PASSES]
    times = {e: [] for e in entries}
    for e in entries:
        run(e)
    order = random.Random(0)
    for _ in range(args.repeats):
        shuffled = entries[:]
        order.shuffle(shuffled)
        for e in shuffled:
            start = time.perf_counter()
            run(e)
            times[e].append(time.perf_counter() - start)

    flops = head_split_flops(B, N, H, D, SEGMENTS, RATES)
    peaks = json.loads(args.peaks.read_text()) if args.peaks else None
    rows = []
    for name, p, which in entries:
        median = statistics.median(times[(name, p, which)])
        rate = (flops if which == "forward" else 3.5 * flops) / median / 1e9
        row = {"dtype": name, "dropout_p": p, "pass": which, "median_s": median,
               "min_s": min(times[(name, p, which)]), "gflops": rate,
               "times_s": times[(name, p, which)]}
        if peaks:
            row["fraction_of_fp32_fma_peak"] = rate / peaks["fp32_fma"]["gflops_all_threads"]
            if peaks.get("bf16_dot"):
                row["fraction_of_bf16_dot_peak"] = rate / peaks["bf16_dot"]["gflops_all_threads"]
        rows.append(row)
    ratios = {f"{name} {which}": statistics.median(times[(name, args.p, which)]) /
              statistics.median(times[(name, 0.0, which)]) for name in DTYPES for which in PASSES}
    capability = os.environ.get("DILATED_ATTENTION_CPU_CAPABILITY", "best the CPU has")
    result = {
        "benchmark": "dropout cost of dilated_attention",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__},
        "config": {"B": B, "N": N, "H": H, "D": D, "segments": SEGMENTS, "rates": RATES,
                   "dropout_p": args.p, "repeats": args.repeats,
                   "row_kernels_capability": capability},
        "peaks": peaks,
        "rows": rows,
        "time_with_dropout_over_without": ratios,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"B={B} N={N} H={H} D={D} segments {SEGMENTS} rates {RATES}, {args.threads} threads, "
          f"median of {args.repeats} interleaved rounds; {cpu_model()}")
    print(f"{'dtype':10} {'p':>5} {'pass':18} {'median s':>9} {'GFLOP/s':>8}")
    for r in rows:
        print(f"{r['dtype']:10} {r['dropout_p']:5.2f} {r['pass']:18} {r['median_s']:9.3f} "
              f"{r['gflops']:8.1f}")
    for key, ratio in ratios.items():
        print(f"time with dropout / without, {key}: {ratio:.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
