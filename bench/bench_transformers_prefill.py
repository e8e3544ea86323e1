"""Prefill throughput of a tiny Llama (transformers) with dilated attention against "sdpa".

One forward of B = 1, N tokens (default 16384) through a 2-layer Llama (hidden 256, 4 heads of
64, 2 key/value heads: GQA), no grad, float32, on the CPU: the same weights under
attn_implementation "sdpa" (causal flash attention over the whole sequence, ATen's CPU kernel)
and under our registrations, dilated (segments [2048, 4096, 8192], rates [1, 2, 4],
dilated_attention_varlen) and LongNet (longnet_attention). Medians of --repeats calls after one
warm-up, all variants in one run; tokens/s and the ratio to sdpa in JSON.

    python bench/bench_transformers_prefill.py [--tokens 16384] [--repeats 3] [--json PATH]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from machine import cpu_model  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DILATED_ATTENTION_OPS_LIB", str(ROOT / "build" / "libdilated_attention_ops.so"))
sys.path.insert(0, str(ROOT / "python"))

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from dilated_attention_pytorch.transformers import register  # noqa: E402

SEGMENTS, RATES = [2048, 4096, 8192], [1, 2, 4]



def seconds(model, ids, repeats):
    with torch.no_grad():
        model(ids)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "docs" / "benchmarks" / "transformers_prefill.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    register("bench_dilated", segment_lengths=SEGMENTS, dilation_rates=RATES)
    register("bench_longnet", segment_lengths=SEGMENTS, dilation_rates=RATES, longnet=True)
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=512,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=args.tokens)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (1, args.tokens))
    rows = {}
    for name in ("sdpa", "bench_dilated", "bench_longnet"):
        model.set_attn_implementation(name)
        rows[name] = seconds(model, ids, args.repeats)
    result = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "model": "LlamaForCausalLM, 2 layers, hidden 256, 4 heads (D = 64), 2 key/value heads",
        "tokens": args.tokens, "segment_lengths": SEGMENTS, "dilation_rates": RATES,
        "note": f"float32, no grad, median of {args.repeats} forwards after a warm-up",
        "seconds": rows,
        "tokens_per_s": {name: args.tokens / t for name, t in rows.items()},
        "speedup_vs_sdpa": {name: rows["sdpa"] / t for name, t in rows.items()},
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"prefill of {args.tokens} tokens ({result['machine']})")
    for name, t in rows.items():
        print(f"  {name:14} {t:8.3f} s  {args.tokens / t:9.0f} tokens/s  {rows['sdpa'] / t:5.2f}x sdpa")


if __name__ == "__main__":
    main()
