"""GPU checks of the dilated_attention ops (run by bench/gpu_check.sh on a CUDA machine).

correctness: forward and gradients against the float64 reference for float32 / float16 /
             bfloat16, causal and not, uneven head groups, r > 1; the fused LSE merge kernel
             against the ATen formulation.
memcheck:    a few small calls, for compute-sanitizer.
timing:      ours vs the per-group gather + scaled_dot_product_attention baseline, CUDA events
             after warm-up, medians over fresh random inputs; JSON and a table.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from reference import dilated_attention_reference, head_groups, segment_positions  # noqa: E402

torch.ops.load_library(os.environ.get("DILATED_ATTENTION_OPS_LIB", str(ROOT / "build" / "libdilated_attention_ops.so")))
OP = torch.ops.dilated_attention.dilated_attention
KV_CACHE = torch.ops.dilated_attention.dilated_attention_with_kv_cache
TOLERANCE = {torch.float32: 2e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
CASES = [((2, 96, 5, 64), [12, 24, 48], [1, 2, 3]), ((1, 128, 4, 128), [32, 64], [2, 4]),
         ((2, 64, 3, 32), [16, 64], [1, 2])]


def correctness(args):
    rows = []
    for shape, segments, rates in CASES:
        for dtype in TOLERANCE:
            for causal in (False, True):
                q, k, v = (torch.randn(shape, dtype=torch.float64, device="cuda") for _ in range(3))
                grad = torch.randn(shape, dtype=torch.float64, device="cuda")
                leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
                out = OP(*leaves, segments, rates, 0.0, causal)
                out.backward(grad.to(dtype))
                ref_in = [t.cpu().requires_grad_() for t in (q, k, v)]
                ref = dilated_attention_reference(*ref_in, segments, rates, causal)
                ref.backward(grad.cpu())
                errors = [(out.double().cpu() - ref).abs().max().item()] + [
                    (a.grad.double().cpu() - b.grad).abs().max().item() for a, b in zip(leaves, ref_in)]
                ok = max(errors) < TOLERANCE[dtype]
                rows.append({"shape": shape, "dtype": str(dtype), "causal": causal, "errors": errors, "ok": ok})
                print(f"{str(shape):18} {str(dtype):15} causal={causal!s:5} max err {max(errors):.2e} {'ok' if ok else 'FAIL'}")
    rows += kv_cache_correctness()
    Path(args.json).write_text(json.dumps(rows, indent=1))
    if not all(r["ok"] for r in rows):
        sys.exit("GPU correctness FAILED")


def kv_cache_correctness():
    """The decoding op on CUDA (cache as transposed views, left-padded rows) against the same op
    in float64 on the CPU, which tests/python/test_kv_cache.py checks against the reference."""
    rows = []
    for longnet in (False, True):
        for dtype in TOLERANCE:
            k, v = (torch.randn(2, 4, 300, 64, dtype=torch.float64, device="cuda").transpose(1, 2)
                    for _ in range(2))
            q = torch.randn(2, 3, 8, 64, dtype=torch.float64, device="cuda")
            starts = torch.tensor([0, 17], device="cuda")
            args = ([64, 128], [1, 2], None, None)
            out = KV_CACHE(*(t.to(dtype) for t in (q, k, v)), *args, starts, longnet)
            ref = KV_CACHE(*(t.cpu() for t in (q, k, v)), *args, starts.cpu(), longnet)
            error = (out.double().cpu() - ref).abs().max().item()
            ok = error < TOLERANCE[dtype]
            rows.append({"op": "kv_cache", "longnet": longnet, "dtype": str(dtype), "errors": [error], "ok": ok})
            print(f"kv_cache longnet={longnet!s:5} {str(dtype):15} max err {error:.2e} {'ok' if ok else 'FAIL'}")
    return rows


def memcheck(_):
    for shape, segments, rates in CASES[:2]:
        q = torch.randn(shape, device="cuda", dtype=torch.float16, requires_grad=True)
        OP(q, q, q, segments, rates, 0.0, True).sum().backward()
    for dtype in (torch.float16, torch.float32):  # grouped-query K/V: flash, memory-efficient
        q = torch.randn(1, 64, 4, 64, device="cuda", dtype=dtype, requires_grad=True)
        kv = torch.randn(1, 64, 2, 64, device="cuda", dtype=dtype, requires_grad=True)
        OP(q, kv, kv, [16, 64], [1, 2], 0.0, True).sum().backward()
    k = torch.randn(1, 2, 200, 64, device="cuda", dtype=torch.float16).transpose(1, 2)
    KV_CACHE(torch.randn(1, 1, 4, 64, device="cuda", dtype=torch.float16), k, k, [64, 128], [1, 2])
    torch.cuda.synchronize()
    print("memcheck calls done")


def make_baseline(n, h, segments, rates, device):
    """Per-group gather + SDPA + scatter: what users do today. The index tensors are built here,
    once, outside the timed calls."""
    groups = []
    for g, heads in enumerate(head_groups(h, len(segments))):
        s, r = segments[g], rates[g]
        idx = torch.tensor([p for t in range(n // s) for p in segment_positions(t, s, r, g % r)],
                           device=device)
        groups.append((idx, slice(heads.start, heads.stop), len(heads), n // s))

    def baseline(q, k, v):
        b, _, _, d = q.shape
        out = torch.zeros_like(q)
        for idx, hs, nh, segs in groups:
            gather = lambda x: x[:, idx, hs].reshape(b * segs, -1, nh, d).transpose(1, 2)  # noqa: E731
            o = F.scaled_dot_product_attention(gather(q), gather(k), gather(v))
            out[:, idx, hs] = o.transpose(1, 2).reshape(b, -1, nh, d)
        return out / len(groups)

    return baseline


def time_ms(fn, inputs, warmup=3, repeats=10):
    """Median milliseconds of fn(*inputs[i % len(inputs)]): inputs are made before timing."""
    times = []
    for i in range(warmup + repeats):
        args = inputs[i % len(inputs)]
        for t in args:
            t.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def flops(b, n, h, d, segments, rates):
    return sum(4 * b * len(heads) * (n / rates[g]) * (segments[g] / rates[g]) * d
               for g, heads in enumerate(head_groups(h, len(segments))))


def timing(args):
    segments, rates = [2048, 4096, 8192], [1, 2, 4]
    rows = []
    for b, n, h, d in [(1, 8192, 8, 64), (4, 32768, 16, 128)]:
        inputs = [[torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3)] for _ in range(2)]
        work = flops(b, n, h, d, segments, rates)
        baseline = make_baseline(n, h, segments, rates, "cuda")
        for name, fn in (("ours", lambda q, k, v: OP(q, k, v, segments, rates)),
                         ("gather_sdpa", baseline)):
            with torch.no_grad():
                fwd = time_ms(fn, inputs)
            fwd_bwd = time_ms(lambda q, k, v: fn(q, k, v).sum().backward(), inputs)
            rows.append({"config": [b, n, h, d], "method": name, "forward_ms": fwd, "fwd_bwd_ms": fwd_bwd,
                         "forward_tflops": work / fwd / 1e9, "fwd_bwd_tflops": 3.5 * work / fwd_bwd / 1e9,
                         "tokens_per_s": b * n / fwd * 1e3})
    decode = decode_timing(segments, rates)
    Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                           "decode": decode,
                                           "note": "medians over 10 calls after 3 warm-ups, two sets of random inputs alternating", "rows": rows}, indent=1))
    print(f"{'config':22} {'method':12} {'fwd ms':>8} {'fwd TF/s':>9} {'f+b ms':>8} {'f+b TF/s':>9} {'vs base':>8}")
    for row in rows:
        base = next(r for r in rows if r["config"] == row["config"] and r["method"] == "gather_sdpa")
        print(f"{str(row['config']):22} {row['method']:12} {row['forward_ms']:8.2f} {row['forward_tflops']:9.1f} "
              f"{row['fwd_bwd_ms']:8.2f} {row['fwd_bwd_tflops']:9.1f} {base['forward_ms'] / row['forward_ms']:7.2f}x")


def decode_timing(segments, rates):
    """One decode step (B = 8, one new token, H = 32, H_kv = 8, D = 128, bf16) against the
    cache's length: ours reads only the token's segments, SDPA the whole cache."""
    rows = []
    for n in (4096, 65536, 262144):
        k, v = (torch.randn(8, 8, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        q = torch.randn(8, 32, 1, 128, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            ours = time_ms(lambda q, k, v: KV_CACHE(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), segments, rates),
                           [[q, k, v]])
            sdpa = time_ms(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), [[q, k, v]])
        rows.append({"cache": n, "ours_ms": ours, "sdpa_ms": sdpa})
        print(f"decode step, cache {n:7}: ours {ours:7.3f} ms, SDPA over the cache {sdpa:7.3f} ms ({sdpa / ours:5.2f}x)")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["correctness", "memcheck", "timing"])
    parser.add_argument("--json", default="bench/results/gpu.json")
    args = parser.parse_args()
    {"correctness": correctness, "memcheck": memcheck, "timing": timing}[args.mode](args)
