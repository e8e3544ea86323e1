"""One decoding step (Nq = 1) of dilated_attention_with_kv_cache against the cache's length Nk,
next to the full-attention step users have now: SDPA of the one query over the whole cache.

Config: B=1, H=8, H_kv=2 (grouped-query), D=64, float32, segments [2048, 4096, 8192], rates
[1, 2, 4], Nk = 1024 * 2**i up to 256k (16k with --quick), 2 threads. Methods, each at every Nk:

  ours dilated, cache view     dilated_attention_with_kv_cache on key / value given as
                               transposed views of [B, H_kv, Nk, D] tensors (transformers' cache
                               layout): the op reads them in place, no copy of the cache
  ours dilated, contiguous     the same op on contiguous [B, Nk, H_kv, D] tensors
  ours longnet, cache view     longnet=True (every head in every branch), cache-layout views
  ours longnet, contiguous     longnet=True, contiguous [B, Nk, H_kv, D]
  SDPA full, enable_gqa        F.scaled_dot_product_attention of q [B, H, 1, D] over the whole
                               cache [B, H_kv, Nk, D] with enable_gqa=True (no mask: the query is
                               the last position, it sees every key)
  SDPA full, repeat_kv         the same over the cache's heads repeated to H (repeat_interleave
                               once, outside the timing)

Time: every (method, Nk) gets one warm-up call, then --repeats rounds, each calling every method at
every Nk once in a fresh seeded random order (interleaved, so load from other processes and the
caches the large SDPA calls evict spread over all of them); median and minimum per (method, Nk). The
ratio is SDPA / ours per Nk, against the faster of the two SDPA variants. Key rows read: per query
head, the dilated keys of the query's segment in every group (branch) covering it, from the segment
rule of kernels/kv_cache_attention_kernel.cpp (mirrored here, and checked against which heads of the
op's output are zero); SDPA reads Nk per head. Peak growth: one more call per (method, Nk), VmHWM
over VmRSS after a reset (/proc/self/clear_refs, 5), in this process: a copy of the cache would show
at large Nk (allocations over 32 MiB are fresh mappings), small ones may reuse freed heap and not
show; a control step that copies the cache inside it is measured the same way at the largest Nk.
Ours is checked once against the last row of dilated_attention_varlen / longnet_attention (causal)
over the whole sequence.

    .venv/bin/python bench/bench_kv_cache.py [--quick] [--repeats 60] [--out F] [--plot F]
Writes docs/benchmarks/kv_cache_decode.json and .png (with --quick: bench/results/
kv_cache_decode_quick.json and .png, unless --out / --plot say otherwise) and prints a table.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

from machine import cpu_model  # bench/machine.py

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", REPO / "build" / "libdilated_attention_ops.so"))
OUT = REPO / "docs" / "benchmarks" / "kv_cache_decode.json"
QUICK_OUT = REPO / "bench" / "results" / "kv_cache_decode_quick.json"
B, H, H_KV, D = 1, 8, 2, 64
SEGMENTS, RATES = [2048, 4096, 8192], [1, 2, 4]

OURS_DILATED = "ours dilated, cache view"
OURS_DILATED_CONTIGUOUS = "ours dilated, contiguous"
OURS_LONGNET = "ours longnet, cache view"
OURS_LONGNET_CONTIGUOUS = "ours longnet, contiguous"
SDPA_GQA = "SDPA full, enable_gqa"
SDPA_REPEAT = "SDPA full, repeat_kv"
METHODS = (OURS_DILATED, OURS_DILATED_CONTIGUOUS, OURS_LONGNET, OURS_LONGNET_CONTIGUOUS,
           SDPA_GQA, SDPA_REPEAT)
SDPA = (SDPA_GQA, SDPA_REPEAT)


# --- key rows a step reads: kernels/kv_cache_attention_kernel.cpp's parts_in_window, Nq = 1 ---

def subset_length(segment, rate, offset):
    """kernels/index/dilation_plan.cpp's dilated_subset_length: |{o + j*r < s}|."""
    return 0 if offset >= segment else (segment - offset + rate - 1) // rate


def head_groups(longnet, length):
    """(first_head, num_heads, segment, rate, offset) per group, as make_head_groups (dilated)
    and make_longnet_groups (longnet=True) build them."""
    groups = []
    if not longnet:
        first = 0
        for g, (s, r) in enumerate(zip(SEGMENTS, RATES)):
            heads = H // len(SEGMENTS) + (1 if g < H % len(SEGMENTS) else 0)
            groups.append((first, heads, s, min(r, s), g % r))
            first += heads
        return groups
    for s, r in zip(SEGMENTS, RATES):
        segment, per_offset = min(s, length), (H - 1) // r + 1
        for offset in range(min(r, segment)):
            if offset * per_offset >= H:
                break
            groups.append((offset * per_offset, min(per_offset, H - offset * per_offset),
                           segment, min(r, segment), offset))
    return groups


def key_rows_per_query_head(longnet, length):
    """Key rows each query head reads for the query at position length - 1: the dilated keys of
    its segment (up to itself) in every group covering that position for the head."""
    position, rows = length - 1, [0] * H
    for first_head, heads, s, r, offset in head_groups(longnet, length):
        begin = position // s * s
        segment = min(s, length - begin)
        rate = min(r, segment)
        keys = subset_length(segment, rate, offset)
        before = position - (begin + offset)
        first_query = 0 if before <= 0 else (before + rate - 1) // rate
        if keys == 0 or first_query >= keys:
            continue  # the position is not on this group's dilated grid
        for h in range(first_head, first_head + heads):
            rows[h] += keys  # the query is the segment's last row: it sees all its keys
    return rows


# --- inputs and methods ---

def inputs(nk, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, 1, H, D, generator=gen)
    cache_k, cache_v = (torch.randn(B, H_KV, nk, D, generator=gen) for _ in range(2))
    k, v = cache_k.transpose(1, 2), cache_v.transpose(1, 2)  # [B, Nk, H_kv, D] views
    return {"q": q, "q_heads_first": q.transpose(1, 2), "cache_k": cache_k, "cache_v": cache_v,
            "k": k, "v": v, "k_contiguous": k.contiguous(), "v_contiguous": v.contiguous(),
            "k_repeated": cache_k.repeat_interleave(H // H_KV, dim=1),
            "v_repeated": cache_v.repeat_interleave(H // H_KV, dim=1)}


def step(method, x):
    op = torch.ops.dilated_attention.dilated_attention_with_kv_cache
    if method == OURS_DILATED:
        return op(x["q"], x["k"], x["v"], SEGMENTS, RATES)
    if method == OURS_DILATED_CONTIGUOUS:
        return op(x["q"], x["k_contiguous"], x["v_contiguous"], SEGMENTS, RATES)
    if method == OURS_LONGNET:
        return op(x["q"], x["k"], x["v"], SEGMENTS, RATES, longnet=True)
    if method == OURS_LONGNET_CONTIGUOUS:
        return op(x["q"], x["k_contiguous"], x["v_contiguous"], SEGMENTS, RATES, longnet=True)
    if method == SDPA_GQA:
        return F.scaled_dot_product_attention(x["q_heads_first"], x["cache_k"], x["cache_v"],
                                              enable_gqa=True)
    if method == SDPA_REPEAT:
        return F.scaled_dot_product_attention(x["q_heads_first"], x["k_repeated"],
                                              x["v_repeated"])
    raise ValueError(method)


def agreement(nk):
    """max |ours - the training op's last row| over the whole sequence, both modes."""
    x = inputs(nk, seed=1)
    q_full = torch.randn(B, nk, H, D, generator=torch.Generator().manual_seed(2))
    q_full[:, -1] = x["q"][:, 0]
    cu = torch.tensor([0, nk], dtype=torch.int32)
    varlen = torch.ops.dilated_attention.dilated_attention_varlen(
        q_full[0], x["k"][0], x["v"][0], cu, nk, SEGMENTS, RATES, 0.0, True, None)[-1]
    longnet = torch.ops.dilated_attention.longnet_attention(
        q_full, x["k"], x["v"], SEGMENTS, RATES, 0.0, True, None)[0, -1]
    return {"dilated_vs_dilated_attention_varlen":
            (step(OURS_DILATED, x)[0, 0] - varlen).abs().max().item(),
            "longnet_vs_longnet_attention":
            (step(OURS_LONGNET, x)[0, 0] - longnet).abs().max().item()}


def zero_heads_match_rule(x, nk):
    """The heads the segment rule says read no key are exactly the op's all-zero output heads."""
    ok = True
    for method, longnet in ((OURS_DILATED, False), (OURS_LONGNET, True)):
        zero = (step(method, x)[0, 0] == 0).all(dim=-1).tolist()
        ok &= zero == [r == 0 for r in key_rows_per_query_head(longnet, nk)]
    return ok


def status_bytes(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_growth(method, x, fn=None):
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    before = status_bytes("VmRSS")
    fn() if fn else step(method, x)
    return status_bytes("VmHWM") - before



# --- plot ---

STYLE = {OURS_DILATED: ("C0", "o", "-"), OURS_DILATED_CONTIGUOUS: ("C0", "s", "--"),
         OURS_LONGNET: ("C3", "o", "-"), OURS_LONGNET_CONTIGUOUS: ("C3", "s", "--"),
         SDPA_GQA: ("C2", "o", "-"), SDPA_REPEAT: ("C2", "s", "--")}


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    xs = [r["Nk"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    for method in METHODS:
        color, marker, line = STYLE[method]
        ax.plot(xs, [r["median_s"][method] * 1e3 for r in rows], line, marker=marker,
                color=color, label=method)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("keys in the cache Nk")
    ax.set_ylabel("one decode step (Nq = 1), median ms")
    c = report["config"]
    ax.set_title(f"B={c['B']} H={c['H']} H_kv={c['H_kv']} D={c['D']} segments "
                 f"{c['segment_lengths']} rates {c['dilation_rates']} {c['dtype']}\n"
                 f"{report['cpu']}, {report['threads']} threads, median of {report['repeats']}",
                 fontsize=8)
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(xs, [r["key_rows_read"]["dilated_total_over_query_heads"] for r in rows], "-o",
            color="C0", label="ours dilated")
    ax.plot(xs, [r["key_rows_read"]["longnet_total_over_query_heads"] for r in rows], "-o",
            color="C3", label="ours longnet")
    ax.plot(xs, [r["key_rows_read"]["sdpa_total_over_query_heads"] for r in rows], "-o",
            color="C2", label="SDPA full")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("keys in the cache Nk")
    ax.set_ylabel("key rows read, summed over the query heads")
    ax.set_title("key rows one step reads (segment rule)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ---

def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true",
                        help="Nk up to 16k, 5 repeats, output to bench/results/ (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (default 60; quick 5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="the JSON (default docs/benchmarks/"
                        "kv_cache_decode.json; quick: bench/results/kv_cache_decode_quick.json)")
    parser.add_argument("--plot", default=None, help="the figure (default: the JSON's path, .png)")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 60)
    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else OUT)
    figure = Path(args.plot) if args.plot else out.with_suffix(".png")
    lengths = [1024 * 2 ** i for i in range(5 if args.quick else 9)]
    torch.set_num_threads(args.threads)
    torch.ops.load_library(str(LIB))
    load_at_start = os.getloadavg()

    with torch.no_grad():
        checked_at = 8192
        agree = agreement(checked_at)
        data = {nk: inputs(nk, seed=0) for nk in lengths}
        zero_heads_ok = all(zero_heads_match_rule(data[nk], nk) for nk in lengths)
        for nk in lengths:
            for m in METHODS:
                step(m, data[nk])  # warm-up
        times = {(m, nk): [] for m in METHODS for nk in lengths}
        pairs, order = list(times), random.Random(0)
        gc.disable()
        try:
            for _ in range(repeats):
                order.shuffle(pairs)  # no method always runs right after the largest SDPA
                for m, nk in pairs:
                    start = time.perf_counter()
                    step(m, data[nk])
                    times[m, nk].append(time.perf_counter() - start)
        finally:
            gc.enable()
        growth = {(m, nk): peak_growth(m, data[nk]) for nk in lengths for m in METHODS}
        # The measurement's control: the same step on a copy of the cache made inside it.
        largest = data[lengths[-1]]
        copied = {"q": largest["q"], "k": largest["k"], "v": largest["v"]}
        copy_control = peak_growth(
            None, None, lambda: step(OURS_DILATED_CONTIGUOUS, dict(
                copied, k_contiguous=copied["k"].contiguous(),
                v_contiguous=copied["v"].contiguous())))
        del data
    load_at_end = os.getloadavg()

    rows = []
    for nk in lengths:
        median = {m: statistics.median(times[m, nk]) for m in METHODS}
        best_sdpa = min(SDPA, key=lambda m: median[m])
        dilated_rows = key_rows_per_query_head(False, nk)
        longnet_rows = key_rows_per_query_head(True, nk)
        rows.append({
            "Nk": nk,
            "median_s": median,
            "min_s": {m: min(times[m, nk]) for m in METHODS},
            "times_s": {m: times[m, nk] for m in METHODS},
            "baseline": best_sdpa,
            "ratio_baseline_over_ours": {
                "dilated": median[best_sdpa] / median[OURS_DILATED],
                "longnet": median[best_sdpa] / median[OURS_LONGNET]},
            "ratio_sdpa_over_ours": {s: {o: median[s] / median[o] for o in METHODS[:4]}
                                     for s in SDPA},
            "key_rows_read": {
                "dilated_per_query_head": dilated_rows,
                "dilated_total_over_query_heads": sum(dilated_rows),
                "longnet_per_query_head": longnet_rows,
                "longnet_total_over_query_heads": sum(longnet_rows),
                "sdpa_total_over_query_heads": H * nk},
            "peak_growth_bytes": {m: growth[m, nk] for m in METHODS},
        })
    first, last = rows[0], rows[-1]
    flatness = {m: {"median": last["median_s"][m] / first["median_s"][m],
                    "min": last["min_s"][m] / first["min_s"][m]} for m in METHODS}
    # From the first Nk where every segment is whole (Nk >= max s_g), ours reads a constant count.
    full = next((r for r in rows if r["Nk"] >= max(SEGMENTS)), first)
    flatness_full = {m: {"median": last["median_s"][m] / full["median_s"][m],
                         "min": last["min_s"][m] / full["min_s"][m]} for m in METHODS}
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(), "cpu": cpu_model(),
        "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_average_at_start": load_at_start, "load_average_at_end": load_at_end,
        "config": dict(B=B, H=H, H_kv=H_KV, D=D, Nq=1, dtype="float32",
                       segment_lengths=SEGMENTS, dilation_rates=RATES, Nk=lengths,
                       quick=args.quick),
        "methods": list(METHODS), "repeats": repeats, "interleaved": True,
        "max_abs_difference_vs_training_ops": {"Nk": checked_at, **agree},
        "zero_output_heads_match_segment_rule": zero_heads_ok,
        "rows": rows,
        f"time_at_{last['Nk']}_over_time_at_{first['Nk']}": flatness,
        f"time_at_{last['Nk']}_over_time_at_{full['Nk']}": flatness_full,
        "peak_growth_bytes_control_copying_the_cache": {"Nk": lengths[-1],
                                                        "bytes": copy_control},
        "notes": [
            "one decode step: query [B, 1, H, D], the last position of key / value "
            "[B, Nk, H_kv, D]",
            "cache view: key / value are cache_k.transpose(1, 2) of a [B, H_kv, Nk, D] tensor",
            "baseline = the faster SDPA variant at that Nk (median); ratio = its median / ours",
            "key_rows_read: kernels/kv_cache_attention_kernel.cpp's segment rule, mirrored in "
            "this script; a head with 0 rows outputs 0 (the position is off its group's grid)",
            "peak_growth_bytes: VmHWM rise over VmRSS for one more call, in this process; a copy "
            "of the cache would show at large Nk"],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, figure)

    print(f"B={B} Nq=1 H={H} H_kv={H_KV} D={D} float32, segments {SEGMENTS} rates {RATES}, "
          f"{torch.get_num_threads()} threads, median of {repeats} interleaved rounds; "
          f"{report['cpu']}; load {load_at_start[0]:.2f} -> {load_at_end[0]:.2f}")
    print(f"agreement at Nk={checked_at}: {agree}; zero heads match the segment rule: "
          f"{zero_heads_ok}")
    short = {OURS_DILATED: "dil view", OURS_DILATED_CONTIGUOUS: "dil contig",
             OURS_LONGNET: "ln view", OURS_LONGNET_CONTIGUOUS: "ln contig",
             SDPA_GQA: "sdpa gqa", SDPA_REPEAT: "sdpa rep"}
    print(f"{'Nk':>7} " + " ".join(f"{short[m] + ' ms':>13}" for m in METHODS)
          + f" {'base/dil':>9} {'base/ln':>8} {'rows dil':>9} {'rows ln':>8}")
    for r in rows:
        print(f"{r['Nk']:>7} " + " ".join(f"{r['median_s'][m] * 1e3:13.3f}" for m in METHODS)
              + f" {r['ratio_baseline_over_ours']['dilated']:9.2f}"
              f" {r['ratio_baseline_over_ours']['longnet']:8.2f}"
              f" {r['key_rows_read']['dilated_total_over_query_heads']:9d}"
              f" {r['key_rows_read']['longnet_total_over_query_heads']:8d}")
    print(f"time at Nk={last['Nk']} / at Nk={first['Nk']} (median; min): " + ", ".join(
        f"{short[m]} {flatness[m]['median']:.2f}; {flatness[m]['min']:.2f}" for m in METHODS))
    if full is not first:
        print(f"time at Nk={last['Nk']} / at Nk={full['Nk']} (median; min): " + ", ".join(
            f"{short[m]} {flatness_full[m]['median']:.2f}; {flatness_full[m]['min']:.2f}"
            for m in METHODS))
    print(f"peak growth at Nk={last['Nk']} (MiB): " + ", ".join(
        f"{short[m]} {(last['peak_growth_bytes'][m] or 0) / 2**20:.1f}" for m in METHODS)
        + f"; control (cache copied inside the step) {(copy_control or 0) / 2**20:.1f}")
    print(f"wrote {out} and {figure}")


if __name__ == "__main__":
    main()
