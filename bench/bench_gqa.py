"""Grouped-query attention: our op reading the H_kv shared heads in place, against transformers'
way (repeat_kv to H heads, then the op), in time and in peak memory.

Config (the issue's): B=1, H=32, H_kv=8, D=64, float32, segments [2048, 4096, 8192], rates
[1, 2, 4], N=8192 by default. Time: median of --repeats warm runs, forward and forward+backward,
both methods in this one process. Peak memory: each (method, pass) runs once more in a fresh
process, which resets its peak resident set (Linux: /proc/self/clear_refs, 5) once the inputs
exist and reports how far the peak (VmHWM) then rises above the resident set at that moment: the
op's own temporaries, the output, repeat_kv's copies and the gradients, nothing else.

    .venv/bin/python bench/bench_gqa.py [--seq 8192] [--repeats 5]
Writes bench/results/gqa.json and prints a table.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", REPO / "build" / "libdilated_attention_ops.so"))
OUT = REPO / "bench" / "results" / "gqa.json"
B, H, H_KV, D = 1, 32, 8, 64
SEGMENTS, RATES = [2048, 4096, 8192], [1, 2, 4]


def repeat_kv(x, heads):
    """transformers' repeat_kv on [B, N, H_kv, D] (it copies: expand + reshape)."""
    b, n, kv, d = x.shape
    return x[:, :, :, None, :].expand(b, n, kv, heads // kv, d).reshape(b, n, heads, d)


def inputs(seq, requires_grad):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, seq, H, D, generator=gen)
    k, v = (torch.randn(B, seq, H_KV, D, generator=gen) for _ in range(2))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def run(method, q, k, v, backward, segments=SEGMENTS, rates=RATES):
    op = torch.ops.dilated_attention.dilated_attention
    if method == "repeat_kv + op":
        k, v = repeat_kv(k, H), repeat_kv(v, H)
    out = op(q, k, v, segments, rates, 0.0, True, None)
    if backward:
        out.sum().backward()
    return out


def status_bytes(field):
    """A "VmRSS:" / "VmHWM:" line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_child(method, seq, backward):
    """In a fresh process: peak RSS growth (bytes) of one call over the inputs' footprint."""
    torch.ops.load_library(str(LIB))
    run(method, *inputs(64, backward), backward, [16, 32, 64], RATES)  # loads the kernels, small
    q, k, v = inputs(seq, backward)
    Path("/proc/self/clear_refs").write_text("5")  # peak := current resident set
    before = status_bytes("VmRSS")
    run(method, q, k, v, backward)
    print(json.dumps({"peak_growth_bytes": status_bytes("VmHWM") - before}))


def measure_peak(method, seq, backward):
    result = subprocess.run(
        [sys.executable, __file__, "--child", method, "--seq", str(seq)] +
        (["--backward"] if backward else []), capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_growth_bytes"]


def median_seconds(method, seq, backward, repeats):
    q, k, v = inputs(seq, backward)
    run(method, q, k, v, backward)  # warm-up
    times = []
    for _ in range(repeats):
        for t in (q, k, v):
            t.grad = None
        start = time.perf_counter()
        run(method, q, k, v, backward)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", default=None)
    parser.add_argument("--backward", action="store_true")
    args = parser.parse_args()
    if args.child:
        peak_child(args.child, args.seq, args.backward)
        return
    torch.ops.load_library(str(LIB))
    rows = []
    for backward in (False, True):
        for method in ("ours (shared heads in place)", "repeat_kv + op"):
            rows.append({
                "method": method, "pass": "forward+backward" if backward else "forward",
                "median_s": median_seconds(method, args.seq, backward, args.repeats),
                "peak_growth_bytes": measure_peak(method, args.seq, backward),
            })
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "config": dict(B=B, N=args.seq, H=H, H_kv=H_KV, D=D, dtype="float32", causal=True,
                       segment_lengths=SEGMENTS, dilation_rates=RATES),
        "repeats": args.repeats, "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"N={args.seq} B={B} H={H} H_kv={H_KV} D={D} float32 causal, {torch.get_num_threads()} "
          f"threads, median of {args.repeats}")
    print(f"{'method':32} {'pass':18} {'median s':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['method']:32} {r['pass']:18} {r['median_s']:9.3f} "
              f"{r['peak_growth_bytes'] / 2**20:9.1f}")
    for p in ("forward", "forward+backward"):
        ours, theirs = (r for r in rows if r["pass"] == p)
        print(f"{p}: time ratio repeat_kv/ours {theirs['median_s'] / ours['median_s']:.2f}x, "
              f"peak memory ratio {theirs['peak_growth_bytes'] / max(1, ours['peak_growth_bytes']):.2f}x")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
