"""LongNet's combination (longnet_attention: every head in every branch, branches combined by
their log-sum-exp) against (a) dilated_attention, the head-split op on the same segments and
rates, which does about G = len(segments) times less work, and (b) torchscale's algorithm in
plain PyTorch (bench/torchscale_longnet.py: per branch, dense gathered copies of the dilated rows,
SDPA, scatter back through diag_embed, lse-weighted sum), with its lse computed apart
(lse="separate", one extra q k^T per branch) and, as a third baseline, taken from ATen's CPU flash
kernel (lse="kernel", torchscale's cost without that extra product).

Config: B=1, N=8192, H=8, D=64, float32, segments [512, 1024, 2048], rates [1, 2, 4], not
causal, 2 threads (flags change each). Time: forward and forward+backward (out.sum().backward()),
every method in this one process, the repetitions interleaved (method 1, 2, 3, 4, then again),
median of --repeats after one warm-up each. Peak memory: each (method, pass) runs once more in a
fresh process, which resets its peak resident set (/proc/self/clear_refs, 5) once the inputs exist
and reports how far the peak (VmHWM) then rises above the resident set at that moment. Effective
FLOPs: the dilated count 4*B*h*(N/r)*(s/r)*D per branch (h = H for LongNet and torchscale, the
group's heads for dilated_attention; causal masking not discounted), 3.5x for forward+backward.

torchscale treats the branch weights as constants in backward (computed under no_grad), so its
gradients are not those of the function; longnet_attention differentiates it exactly.

    .venv/bin/python bench/bench_longnet.py [--seq 8192] [--segments 512 1024 2048]
        [--rates 1 2 4] [--causal] [--repeats 5] [--out bench/results/longnet.json]
Prints a table (stderr) and the JSON (stdout, or to --out).
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py

import torch

REPO = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", REPO / "build" / "libdilated_attention_ops.so"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from torchscale_longnet import longnet_forward_flops, torchscale_longnet  # noqa: E402

OURS = "longnet_attention (ours)"
HEAD_SPLIT = "dilated_attention (head split)"
TORCHSCALE = "torchscale_longnet (SDPA on gathered copies, lse apart)"
TORCHSCALE_KERNEL = "torchscale_longnet (gathered copies, lse from ATen's flash kernel)"
METHODS = (OURS, HEAD_SPLIT, TORCHSCALE, TORCHSCALE_KERNEL)
PASSES = ("forward", "forward+backward")


def call(method, q, k, v, segments, rates, causal):
    if method == OURS:
        return torch.ops.dilated_attention.longnet_attention(q, k, v, segments, rates, 0.0, causal,
                                                             None)
    if method == HEAD_SPLIT:
        return torch.ops.dilated_attention.dilated_attention(q, k, v, segments, rates, 0.0, causal,
                                                             None)
    if method == TORCHSCALE:
        return torchscale_longnet(q, k, v, segments, rates, causal, lse="separate")
    if method == TORCHSCALE_KERNEL:
        return torchscale_longnet(q, k, v, segments, rates, causal, lse="kernel")
    raise ValueError(method)


def run(method, q, k, v, backward, segments, rates, causal):
    out = call(method, q, k, v, segments, rates, causal)
    if backward:
        out.sum().backward()
    return out


def inputs(batch, seq, heads, dim, requires_grad, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, heads, dim, generator=gen).requires_grad_(requires_grad)
            for _ in range(3)]


def head_split_flops(batch, seq, heads, dim, segments, rates):
    """dilated_attention's count: group g has H // G heads, plus one for g < H % G."""
    g = len(segments)
    return sum(4.0 * batch * (heads // g + (1 if i < heads % g else 0)) * (seq / r) *
               (min(w, seq) / r) * dim for i, (w, r) in enumerate(zip(segments, rates)))


def status_bytes(field):
    """A "VmRSS:" / "VmHWM:" line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_child(args):
    """In a fresh process: peak RSS growth (bytes) of one call over the inputs' footprint."""
    torch.ops.load_library(str(LIB))
    small = [8 * r for r in args.rates]  # loads the kernels and code paths, on a small problem
    run(args.child, *inputs(1, math.lcm(*small), args.heads, args.dim, args.backward),
        args.backward, small, args.rates, args.causal)
    q, k, v = inputs(args.batch, args.seq, args.heads, args.dim, args.backward)
    Path("/proc/self/clear_refs").write_text("5")  # peak := current resident set
    before = status_bytes("VmRSS")
    run(args.child, q, k, v, args.backward, args.segments, args.rates, args.causal)
    print(json.dumps({"peak_growth_bytes": status_bytes("VmHWM") - before}))


def config_flags(args):
    return ["--batch", str(args.batch), "--seq", str(args.seq), "--heads", str(args.heads),
            "--dim", str(args.dim), "--threads", str(args.threads), "--segments",
            *map(str, args.segments), "--rates", *map(str, args.rates)] + \
        (["--causal"] if args.causal else [])


def measure_peak(args, method, backward):
    result = subprocess.run(
        [sys.executable, __file__, "--child", method, *config_flags(args)] +
        (["--backward"] if backward else []), capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_growth_bytes"]


def interleaved_medians(args, backward):
    """{method: median seconds}: one warm-up each, then --repeats rounds over all methods."""
    q, k, v = inputs(args.batch, args.seq, args.heads, args.dim, backward)
    go = lambda m: run(m, q, k, v, backward, args.segments, args.rates, args.causal)
    times = {m: [] for m in METHODS}
    for m in METHODS:
        go(m)
    for _ in range(args.repeats):
        for m in METHODS:
            for t in (q, k, v):
                t.grad = None
            start = time.perf_counter()
            go(m)
            times[m].append(time.perf_counter() - start)
    return {m: statistics.median(t) for m, t in times.items()}, times


def gemm_gflops(n=4096, repeats=3):
    """Measured fp32 GEMM rate (torch.mm n^3, best of repeats), the machine's practical peak."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start



def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--segments", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--rates", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backward", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        peak_child(args)
        return
    load_at_start = os.getloadavg()[0]
    torch.ops.load_library(str(LIB))
    log = lambda *a: print(*a, file=sys.stderr, flush=True)

    shape = (args.batch, args.seq, args.heads, args.dim)
    padded = any(args.seq % min(w, args.seq) or min(w, args.seq) % r
                 for w, r in zip(args.segments, args.rates))
    with torch.no_grad():
        q, k, v = inputs(*shape, False)
        ours = call(OURS, q, k, v, args.segments, args.rates, args.causal)
        agreement = {m: (ours - call(m, q, k, v, args.segments, args.rates, args.causal))
                     .abs().max().item() for m in (TORCHSCALE, TORCHSCALE_KERNEL)}
        del q, k, v, ours
    log(f"max |ours - torchscale| (float32 forward): {agreement}"
        + (" (torchscale pads here: they differ by design)" if padded else ""))

    gemm = gemm_gflops()
    flops = {m: longnet_forward_flops(*shape, args.segments, args.rates) for m in METHODS}
    flops[HEAD_SPLIT] = head_split_flops(*shape, args.segments, args.rates)
    tokens = args.batch * args.seq

    rows, raw = [], {}
    for backward, p in zip((False, True), PASSES):
        log(f"timing {p} ...")
        medians, raw[p] = interleaved_medians(args, backward)
        for m in METHODS:
            work = flops[m] * (3.5 if backward else 1.0)
            rows.append({"method": m, "pass": p, "median_s": medians[m],
                         "times_s": raw[p][m], "tokens_per_s": tokens / medians[m],
                         "effective_flops": work,
                         "effective_gflops_per_s": work / medians[m] / 1e9})
    if not args.no_memory:
        for r in rows:
            log(f"peak memory {r['method']} {r['pass']} ...")
            r["peak_growth_bytes"] = measure_peak(args, r["method"], r["pass"] != "forward")

    def row(m, p):
        return next(r for r in rows if r["method"] == m and r["pass"] == p)

    ratios = {}
    for p in PASSES:
        ours = row(OURS, p)
        for m in METHODS[1:]:
            theirs = row(m, p)
            entry = {"time_theirs_over_ours": theirs["median_s"] / ours["median_s"],
                     "effective_gflops_ours_over_theirs":
                         ours["effective_gflops_per_s"] / theirs["effective_gflops_per_s"]}
            if "peak_growth_bytes" in ours:
                entry["peak_memory_theirs_over_ours"] = (theirs["peak_growth_bytes"] /
                                                         max(1, ours["peak_growth_bytes"]))
            ratios.setdefault(p, {})[m] = entry

    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(), "cpu": cpu_model(),
        "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average_1min_at_start": load_at_start,
        "gemm_fp32_gflops_per_s": gemm,
        "config": dict(B=args.batch, N=args.seq, H=args.heads, D=args.dim, dtype="float32",
                       causal=args.causal, segment_lengths=args.segments,
                       dilation_rates=args.rates, torchscale_pads=bool(padded)),
        "repeats": args.repeats, "interleaved": True,
        "max_abs_difference_vs_ours_forward": agreement,
        "rows": rows, "ratios": ratios,
        "notes": ["tokens_per_s = B*N / median seconds",
                  "effective FLOPs: 4*B*h*(N/r)*(s/r)*D per branch, h = H (LongNet, torchscale) "
                  "or the group's heads (dilated_attention); forward+backward 3.5x",
                  "peak_growth_bytes: VmHWM rise over VmRSS after the inputs exist, one fresh "
                  "process per row",
                  "torchscale's backward treats the branch weights as constants (no_grad), so its "
                  "gradients are not the function's; ours are exact"],
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    else:
        print(text)

    log(f"B={args.batch} N={args.seq} H={args.heads} D={args.dim} float32 "
        f"{'causal' if args.causal else 'not causal'}, segments {args.segments}, rates "
        f"{args.rates}, {torch.get_num_threads()} threads, median of {args.repeats}; "
        f"GEMM {gemm:.0f} GFLOP/s")
    log(f"{'method':68} {'pass':17} {'median s':>9} {'tokens/s':>10} {'GFLOP/s':>8} {'peak MiB':>9}")
    for r in rows:
        peak = r.get("peak_growth_bytes")
        log(f"{r['method']:68} {r['pass']:17} {r['median_s']:9.4f} {r['tokens_per_s']:10.0f} "
            f"{r['effective_gflops_per_s']:8.1f} "
            f"{'' if peak is None else format(peak / 2**20, '9.1f')}")
    for p in PASSES:
        for m, e in ratios[p].items():
            mem = e.get("peak_memory_theirs_over_ours")
            log(f"{p}: {m}: time theirs/ours {e['time_theirs_over_ours']:.2f}x"
                + ("" if mem is None else f", peak memory theirs/ours {mem:.2f}x"))
    if args.out:
        log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
