"""Plots the benchmark JSON in a results folder into report.png (next to the JSON).

Left: tokens/s against sequence length, forward and forward+backward, for ours, the per-group
gather + SDPA baseline and dense SDPA, float32 and bfloat16 (from seq_<N>*.json of the C++
benchmark).
Right: per-rank tokens/s for P = 1, 2, 4 over gloo (from distributed.json).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"ours": "C0", "gather_sdpa": "C1", "dense_sdpa": "C2"}


def load_sequence_runs(folder: Path):
    runs = [json.loads(p.read_text()) for p in folder.glob("seq_*.json")]
    return sorted(runs, key=lambda r: r["config"]["seq"])


# (line, marker) per (dtype, pass): float32 solid / dashed, bfloat16 dotted.
LINES = {("float32", "forward"): ("-", "o"), ("float32", "forward_backward"): ("--", "s"),
         ("bfloat16", "forward"): (":", "^"), ("bfloat16", "forward_backward"): ("-.", "v")}


def plot_sequence(ax, runs):
    for method, color in STYLE.items():
        for (dtype, pass_name), (line, marker) in LINES.items():
            points = sorted((r["config"]["seq"], row["tokens_per_s"]) for r in runs
                            if r["config"]["dtype"] == dtype for row in r["results"]
                            if row["method"] == method and row["pass"] == pass_name)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, line, marker=marker, color=color,
                        label=f"{method} {pass_name} {dtype}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("tokens / s")
    if runs:
        c, m = runs[0]["config"], runs[0]["machine"]
        ax.set_title(f"B={c['batch']} H={c['heads']} D={c['head_dim']} segments {c['segments']} "
                     f"rates {c['rates']}\n{m['cpu_model']}, {m['threads']} threads",
                     fontsize=8)
    ax.legend(fontsize=7)


def plot_distributed(ax, data):
    rows = data.get("rows", [])
    configs = sorted({r["config"] for r in rows})
    methods = sorted({r["op"] for r in rows})
    for ci, config in enumerate(configs):
        for op in methods:
            pts = sorted((r["world_size"], r["fwd_tokens_per_s"]) for r in rows
                         if r["config"] == config and r["op"] == op and r["rank"] == 0)
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, "-o" if ci == 0 else "--s", label=f"{op} ({config})")
    ax.set_xticks([1, 2, 4])
    ax.set_xlabel("processes P (gloo, sharing the machine's cores)")
    ax.set_ylabel("forward tokens / s per rank")
    ax.set_title("per-rank throughput", fontsize=8)
    ax.legend(fontsize=6)


def main(folder: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    plot_sequence(axes[0], load_sequence_runs(folder))
    distributed = folder / "distributed.json"
    if distributed.exists():
        plot_distributed(axes[1], json.loads(distributed.read_text()))
    fig.tight_layout()
    fig.savefig(folder / "report.png", dpi=110)
    print(f"wrote {folder / 'report.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results"))
