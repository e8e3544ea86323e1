"""The CPU's dropout kernel has one build of its row loops per CPU capability (AVX-512, AVX2,
portable; kernels/cpu/row_kernels.h), picked once per process. This process runs the best one the
CPU has; each other build runs in a subprocess capped by DILATED_ATTENTION_CPU_CAPABILITY, and
every build must give the same outputs and gradients: the same dropout mask bit for bit (at p =
0.5 one differing weight shows far above the tolerance), the same softmax to rounding."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

# Lengths that are no multiple of any vector width, causal and not, key padding, grouped K/V.
CASES = [
    dict(dtype=torch.float32, causal=False, padding=False, kv_heads=3),
    dict(dtype=torch.float32, causal=True, padding=True, kv_heads=1),
    dict(dtype=torch.float64, causal=True, padding=False, kv_heads=3),
    dict(dtype=torch.bfloat16, causal=False, padding=True, kv_heads=1),
]


def run_cases():
    """Forward and input gradients of dropout attention (p = 0.5) for every case, in order."""
    results = []
    op = torch.ops.dilated_attention.dilated_attention
    for i, case in enumerate(CASES):
        gen = torch.Generator().manual_seed(100 + i)
        b, n, h, d = 2, 120, 3, 20
        q = torch.randn(b, n, h, d, generator=gen).to(case["dtype"]).requires_grad_()
        k = torch.randn(b, n, case["kv_heads"], d, generator=gen).to(case["dtype"]).requires_grad_()
        v = torch.randn(b, n, case["kv_heads"], d, generator=gen).to(case["dtype"]).requires_grad_()
        mask = (torch.rand(b, n, generator=gen) < 0.2) if case["padding"] else None
        torch.manual_seed(7)
        out = op(q, k, v, [24, 40], [1, 2], 0.5, case["causal"], None, mask)
        grad = torch.randn(out.shape, generator=gen).to(case["dtype"])
        out.backward(grad)
        results.append([t.detach().double() for t in (out, q.grad, k.grad, v.grad)])
    return results


def results_of_build(capability, tmp_path):
    """run_cases() in a fresh process whose row kernels are capped at `capability`."""
    out_file = tmp_path / f"{capability}.pt"
    script = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import conftest\n"
        "from test_cpu_capabilities import run_cases\n"
        f"torch.save(run_cases(), {str(out_file)!r})\n"
    )
    env = dict(os.environ, DILATED_ATTENTION_CPU_CAPABILITY=capability)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return torch.load(out_file)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_every_build_gives_the_same_dropout_attention(capability, tmp_path):
    ours = run_cases()
    theirs = results_of_build(capability, tmp_path)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2}
    for case, mine, other in zip(CASES, ours, theirs):
        for name, a, b in zip(("out", "dq", "dk", "dv"), mine, other):
            tol = tolerance[case["dtype"]]
            assert torch.allclose(a, b, rtol=tol, atol=tol), (capability, case, name,
                                                             (a - b).abs().max().item())
