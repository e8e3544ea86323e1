"""Interleaved A/B of library builds or kernel choices, each round in fresh processes.

On a noisy machine (a VM whose runs of one binary move by 10-20%) one run per variant compares
the noise; alternating the variants round by round, each in a new process, and taking medians
compares the variants. A variant is a name, a library and environment variables:

    LIB=build/libdilated_attention_ops.so
    .venv/bin/python bench/bench_ab.py --variant before=/tmp/old.so --variant after=$LIB \
        --workload varlen --docs 200,3000,32
    .venv/bin/python bench/bench_ab.py --dtype float16 \
        --variant aten=$LIB,DILATED_ATTENTION_CPU_ATTENTION=aten \
        --variant fused=$LIB,DILATED_ATTENTION_CPU_ATTENTION=fused

Workloads: `dilated` (dilated_attention, B=1, N=16384, H=8, D=64, segments [2048, 4096, 8192],
rates [1, 2, 4], not causal: the README's bench config) and `varlen` (dilated_attention_varlen
on --docs lo,hi,count documents with lengths drawn from [lo, hi], float32, causal, same
segments). Per process: the median of 7 forwards (no grad) and of 4 forward+backwards.
Prints medians with ranges over rounds; --out writes every round as JSON.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

CHILD = r'''
import os, sys, time, torch
torch.ops.load_library(os.environ["DILATED_ATTENTION_OPS_LIB"])
workload, dtype, docs = sys.argv[1], getattr(torch, sys.argv[2]), sys.argv[3]
g = torch.Generator().manual_seed(0)
segments, rates = [2048, 4096, 8192], [1, 2, 4]
if workload == "dilated":
    q, k, v = (torch.randn(1, 16384, 8, 64, generator=g).to(dtype).requires_grad_()
               for _ in range(3))
    run = lambda: torch.ops.dilated_attention.dilated_attention(q, k, v, segments, rates, 0.0,
                                                                False, None, None)
else:
    lo, hi, count = map(int, docs.split(","))
    lengths = torch.randint(lo, hi + 1, (count,), generator=g).tolist()
    q, k, v = (torch.randn(sum(lengths), 8, 64, generator=g).to(dtype).requires_grad_()
               for _ in range(3))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    run = lambda: torch.ops.dilated_attention.dilated_attention_varlen(
        q, k, v, cu, max(lengths), segments, rates, 0.0, True, None)
def median(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter(); fn(); times.append(time.perf_counter() - start)
    return sorted(times)[repeats // 2]
with torch.no_grad():
    run()
    forward = median(run, 7)
def forward_backward():
    out = run()
    out.backward(torch.ones_like(out))
print(forward, median(forward_backward, 4))
'''


def parse_variant(text):
    name, _, rest = text.partition("=")
    library, *settings = rest.split(",")
    env = {"DILATED_ATTENTION_OPS_LIB": os.path.abspath(library)}
    for setting in settings:
        key, _, value = setting.partition("=")
        env[key] = value
    return name, env


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", required=True,
                        help="NAME=LIBRARY[,VAR=VALUE...] (twice or more)")
    parser.add_argument("--workload", choices=("dilated", "varlen"), default="dilated")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--docs", default="200,16384,8", help="varlen: lo,hi,count")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="JSON file for every round")
    args = parser.parse_args()
    variants = dict(parse_variant(v) for v in args.variant)
    rounds = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, env in variants.items():
            done = subprocess.run([sys.executable, "-c", CHILD, args.workload, args.dtype, args.docs],
                                  env=dict(os.environ, **env), capture_output=True, text=True,
                                  check=False)
            if done.returncode != 0:
                sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
            forward, forward_backward = map(float, done.stdout.split())
            rounds[name].append({"forward_s": forward, "forward_backward_s": forward_backward})
    summary = {}
    for name, runs in rounds.items():
        summary[name] = {}
        for key in ("forward_s", "forward_backward_s"):
            values = [run[key] for run in runs]
            summary[name][key] = {"median": statistics.median(values), "min": min(values),
                                  "max": max(values)}
        f, fb = summary[name]["forward_s"], summary[name]["forward_backward_s"]
        print(f"{name:12s} forward {f['median']:.4f} s ({f['min']:.4f}-{f['max']:.4f})  "
              f"forward+backward {fb['median']:.4f} s ({fb['min']:.4f}-{fb['max']:.4f})")
    if args.out:
        report = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                  "machine": platform.processor() or platform.machine(),
                  "cores": os.cpu_count(), "workload": args.workload, "dtype": args.dtype,
                  "docs": args.docs if args.workload == "varlen" else None,
                  "variants": {name: dict(env, DILATED_ATTENTION_OPS_LIB=os.path.basename(
                                   env["DILATED_ATTENTION_OPS_LIB"]))
                               for name, env in variants.items()},
                  "rounds": rounds, "summary": summary}
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
