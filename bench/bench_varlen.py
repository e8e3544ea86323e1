"""A packed batch of documents (dilated_attention_varlen) against padding them to the longest
(dilated_attention with a key_padding_mask): real tokens per second.

Documents: --docs lengths drawn uniformly from [200, 16384] (seeded), B=1 per document, H=8,
D=64, float32, causal, segments [2048, 4096, 8192], rates [1, 2, 4]. The padded batch is
[docs, N_pad, H, D] with N_pad the longest length rounded up to a multiple of 8192 (what the core
op takes), the padding masked. Both compute the same function at the real rows (checked here
once, and in tests/python/test_varlen.py). Median of --repeats, forward and forward+backward.

    .venv/bin/python bench/bench_varlen.py [--docs 8] [--repeats 3]
Writes bench/results/varlen.json and prints a table.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
LIB = Path(os.environ.get("DILATED_ATTENTION_OPS_LIB", REPO / "build" / "libdilated_attention_ops.so"))
OUT = REPO / "bench" / "results" / "varlen.json"
H, D = 8, 64
SEGMENTS, RATES = [2048, 4096, 8192], [1, 2, 4]


def documents(count, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(200, 16385, (count,), generator=gen).tolist()


def packed_inputs(lengths, requires_grad):
    gen = torch.Generator().manual_seed(1)
    total = sum(lengths)
    q, k, v = (torch.randn(total, H, D, generator=gen) for _ in range(3))
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)], cu


def padded_inputs(lengths, packed, cu, requires_grad):
    n_pad = -(-max(lengths) // max(SEGMENTS)) * max(SEGMENTS)
    def pad(t):
        out = t.new_zeros(len(lengths), n_pad, H, D)
        for i, n in enumerate(lengths):
            out[i, :n] = t[int(cu[i]):int(cu[i + 1])]
        return out.requires_grad_(requires_grad)
    mask = torch.arange(n_pad)[None, :] >= torch.tensor(lengths)[:, None]
    return [pad(t.detach()) for t in packed], mask, n_pad


def run_packed(tensors, cu, lengths, backward):
    out = torch.ops.dilated_attention.dilated_attention_varlen(
        *tensors, cu, max(lengths), SEGMENTS, RATES, 0.0, True, None)
    if backward:
        out.sum().backward()
    return out


def run_padded(tensors, mask, backward):
    out = torch.ops.dilated_attention.dilated_attention(*tensors, SEGMENTS, RATES, 0.0, True, None,
                                                        mask)
    if backward:
        # Only real rows carry a loss, as in training on padded batches.
        out.masked_fill(mask[:, :, None, None], 0.0).sum().backward()
    return out


def median_seconds(fn, tensors, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        for t in tensors:
            t.grad = None
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.ops.load_library(str(LIB))
    lengths = documents(args.docs, args.seed)
    tokens = sum(lengths)

    packed, cu = packed_inputs(lengths, False)
    padded, mask, n_pad = padded_inputs(lengths, packed, cu, False)
    a = run_packed(packed, cu, lengths, False)
    b = run_padded(padded, mask, False)
    worst = max((a[int(cu[i]):int(cu[i + 1])] - b[i, :n]).abs().max().item()
                for i, n in enumerate(lengths))

    rows = []
    for backward in (False, True):
        packed, cu = packed_inputs(lengths, backward)
        padded, mask, _ = padded_inputs(lengths, packed, cu, backward)
        for method, fn, tensors in (
                ("packed (dilated_attention_varlen)",
                 lambda: run_packed(packed, cu, lengths, backward), packed),
                ("padded + key_padding_mask", lambda: run_padded(padded, mask, backward), padded)):
            seconds = median_seconds(fn, tensors, args.repeats)
            rows.append({"method": method, "pass": "forward+backward" if backward else "forward",
                         "median_s": seconds, "real_tokens_per_s": tokens / seconds})
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "config": dict(H=H, D=D, dtype="float32", causal=True, segment_lengths=SEGMENTS,
                       dilation_rates=RATES, lengths=lengths, padded_length=n_pad),
        "max_abs_difference_at_real_rows": worst, "repeats": args.repeats, "rows": rows,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"{args.docs} documents, lengths {lengths} ({tokens} tokens; padded to {n_pad} each), "
          f"H={H} D={D} float32 causal, {torch.get_num_threads()} threads, median of "
          f"{args.repeats}; packed vs padded max |diff| at real rows {worst:.1e}")
    print(f"{'method':36} {'pass':18} {'median s':>9} {'real tokens/s':>14}")
    for r in rows:
        print(f"{r['method']:36} {r['pass']:18} {r['median_s']:9.3f} {r['real_tokens_per_s']:14,.0f}")
    for p in ("forward", "forward+backward"):
        ours, padded_row = (r for r in rows if r["pass"] == p)
        print(f"{p}: packed / padded throughput {padded_row['median_s'] / ours['median_s']:.2f}x")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
