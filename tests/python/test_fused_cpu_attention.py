"""Our fused CPU attention forward and backward (kernels/cpu/flash_attention_cpu.h) against the
float64 reference, in every build of its row loops, and the whole suites with them forced.

Which kernels a process uses is picked once: this process takes the measured choice (the fused
kernel on AVX-512 CPUs, for bfloat16 where they have AVX512-BF16, but the bfloat16 forward on AMX
CPUs; ATen's elsewhere: flash_attention_cpu.cpp), so the checks
here run in subprocesses with DILATED_ATTENTION_CPU_ATTENTION=fused (the kernel wherever it can
run: float32 and float16 everywhere, bfloat16 where oneDNN's bf16 microkernel runs),
=fused-backward (ATen's
forward with our backward) or =aten."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

# Shapes that leave partial query and key blocks (64 x 128); head dims below a vector (6), odd
# (7: bfloat16's microkernel needs pairs, so ATen's kernel takes it there) and of whole vectors
# plus a tail (40); grouped K/V, several groups, causal and padding (scattered, whole key blocks,
# whole sequences). (B, N, H, H_kv, D, segments, rates)
SHAPES = [
    (1, 256, 4, 4, 64, [64, 128, 256], [1, 2, 4]),
    (2, 384, 6, 2, 32, [128, 384], [1, 3]),
    (1, 400, 3, 3, 16, [400], [1]),
    (1, 272, 2, 1, 6, [136, 272], [1, 2]),
    (1, 200, 2, 2, 40, [100, 200], [1, 2]),
    (1, 130, 3, 1, 7, [130], [1]),
    (2, 640, 2, 2, 128, [640], [1]),
]
# float16 runs float32 products (its inputs widened as they are packed): only its rounding of
# results (2^-11 relative) and of the gradients the op sums is left.
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cases():
    """(dtype, shape, causal, padding, q, k, v, mask) for every case, the same in every process."""
    gen = torch.Generator().manual_seed(3)
    for dtype in DTYPES:
        for b, n, h, h_kv, d, segments, rates in SHAPES:
            for causal in (False, True):
                for padding in (False, True):
                    q = torch.randn(b, n, h, d, generator=gen).to(dtype)
                    k = torch.randn(b, n, h_kv, d, generator=gen).to(dtype)
                    v = torch.randn(b, n, h_kv, d, generator=gen).to(dtype)
                    mask = None
                    if padding:
                        mask = torch.rand(b, n, generator=gen) < 0.3
                        mask[0, n // 2:] = True  # right padding: whole key blocks are skipped
                        if b > 1:
                            mask[-1] = True  # padding only: no row sees a key
                        v[mask] = float("nan")  # a padded key's value must never be read
                    yield dtype, (segments, rates), causal, padding, q, k, v, mask


def grad_output(shape, dtype):
    """The same output gradient in every process, rounded to the case's dtype."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(11)).to(dtype)


def op_outputs():
    """(out, dq, dk, dv) of the op for every case."""
    op = torch.ops.dilated_attention.dilated_attention
    results = []
    for _, pattern, causal, _, q, k, v, mask in cases():
        q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
        out = op(q, k, v, *pattern, 0.0, causal, None, mask)
        out.backward(grad_output(out.shape, out.dtype))
        results.append([t.detach() for t in (out, q.grad, k.grad, v.grad)])
    return results


@functools.cache
def reference_outputs():
    from reference import dilated_attention_reference

    results = []
    for dtype, pattern, causal, _, q, k, v, mask in cases():
        q, k, v = (t.double().requires_grad_() for t in (q, k, v))
        out = dilated_attention_reference(q, k, v, *pattern, is_causal=causal,
                                          key_padding_mask=mask)
        out.backward(grad_output(out.shape, dtype).double())
        results.append([t.detach() for t in (out, q.grad, k.grad, v.grad)])
    return results


def run_in_subprocess(code, **env):
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def run_suites_in_subprocess(suites, **env):
    """These test files of this folder, run by pytest in a fresh process under `env`."""
    run_in_subprocess(
        "import sys, pytest\n"
        f"sys.exit(pytest.main(['-q', '-x', '-p', 'no:cacheprovider', "
        f"*[{str(HERE)!r} + '/' + f for f in {list(suites)!r}]]))\n", **env)


def results_in_subprocess(function, out_file, **env):
    """What this module's `function`() returns, computed in a fresh process under `env`."""
    run_in_subprocess(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "import conftest\n"
        f"from test_fused_cpu_attention import {function}\n"
        f"torch.save({function}(), {str(out_file)!r})\n", **env)
    return torch.load(out_file)


def assert_match_the_reference(outputs, label):
    for (dtype, pattern, causal, padding, *_), ours, theirs in zip(cases(), outputs,
                                                                  reference_outputs()):
        for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
            case = (label, dtype, pattern, causal, padding, name)
            assert torch.equal(a.isnan(), b.isnan()), case
            # Relative to the largest value: gradients of hundreds of summed terms.
            err = (a.double() - b).nan_to_num(0.0).abs().max().item()
            assert err <= TOLERANCE[dtype] * max(1.0, b.nan_to_num(0.0).abs().max().item()), (
                case, err)


@pytest.mark.parametrize("capability", ["avx512", "avx2", "default"])
def test_fused_forward_matches_the_reference(capability, tmp_path):
    outputs = results_in_subprocess("op_outputs", tmp_path / "outputs.pt",
                                    DILATED_ATTENTION_CPU_ATTENTION="fused",
                                    DILATED_ATTENTION_CPU_CAPABILITY=capability)
    assert_match_the_reference(outputs, capability)


def test_fused_kernel_on_one_thread_matches_the_reference(tmp_path):
    """On one thread every call has a (view batch, key head) unit per thread, so the fused
    backward takes the shapes it declines on two (one unit: D=7, D=6's second group)."""
    outputs = results_in_subprocess("op_outputs", tmp_path / "outputs.pt",
                                    DILATED_ATTENTION_CPU_ATTENTION="fused",
                                    DILATED_ATTENTION_TEST_THREADS="1")
    assert_match_the_reference(outputs, "one thread")


def test_aten_forward_with_fused_backward_matches_the_reference(tmp_path):
    """The pairing the measured choice makes for bfloat16 on AMX CPUs: ATen's forward (its
    output and log-sum-exp) feeding our backward."""
    outputs = results_in_subprocess("op_outputs", tmp_path / "outputs.pt",
                                    DILATED_ATTENTION_CPU_ATTENTION="fused-backward")
    assert_match_the_reference(outputs, "fused-backward")


def switch_probe():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1024, 2, 64, generator=g) for _ in range(3))
    return torch.ops.dilated_attention.dilated_attention(q, k, v, [1024], [1])


def test_forcing_switches_the_kernel(tmp_path):
    """The switch is real: over one 1024-key block ATen's kernel and ours round differently in
    float32 (both within the reference's tolerance), so the forced runs test our kernel."""
    outputs = {choice: results_in_subprocess("switch_probe", tmp_path / f"{choice}.pt",
                                             DILATED_ATTENTION_CPU_ATTENTION=choice)
               for choice in ("aten", "fused")}
    assert not torch.equal(outputs["aten"], outputs["fused"])
    torch.testing.assert_close(outputs["aten"], outputs["fused"], rtol=1e-5, atol=1e-6)


def dropout_results():
    """Output and input gradients of dropout attention (p = 0.5) on partial blocks, causal or
    not, padded or not, grouped K/V."""
    op = torch.ops.dilated_attention.dilated_attention
    results = []
    for dtype in DTYPES:
        for causal in (False, True):
            for padding in (False, True):
                gen = torch.Generator().manual_seed(1)
                q = torch.randn(2, 384, 4, 32, generator=gen).to(dtype).requires_grad_()
                k, v = (torch.randn(2, 384, 2, 32, generator=gen).to(dtype).requires_grad_()
                        for _ in range(2))
                mask = (torch.rand(2, 384, generator=gen) < 0.2) if padding else None
                torch.manual_seed(5)
                out = op(q, k, v, [128, 384], [1, 3], 0.5, causal, None, mask)
                out.backward(torch.randn(out.shape, generator=gen).to(dtype))
                results.append([t.detach().double() for t in (out, q.grad, k.grad, v.grad)])
    return results


def test_fused_dropout_draws_the_dropout_kernels_mask(tmp_path):
    """With dropout the fused forward must draw exactly the mask our dropout kernel draws, and
    the fused backward recompute it: at p = 0.5 one differing weight shows far above float32's
    tolerance. The reference here is the dropout kernel, forward and backward (=aten)."""
    results = {choice: results_in_subprocess("dropout_results", tmp_path / f"{choice}.pt",
                                             DILATED_ATTENTION_CPU_ATTENTION=choice)
               for choice in ("aten", "fused", "fused-backward")}
    for choice in ("fused", "fused-backward"):
        for i, (ours, theirs) in enumerate(zip(results[choice], results["aten"])):
            tol = TOLERANCE[DTYPES[i // 4]]  # four cases a dtype; bf16 weights round to bf16
            for name, a, b in zip(("out", "dq", "dk", "dv"), ours, theirs):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol,
                                           msg=f"{choice} case {i} {name}")


# The suites whose forward runs through the CPU's kernel table (test_cpu_capabilities compares
# the row-loop builds with dropout, each subprocess inheriting the forced choice).
FORWARD_SUITES = ["test_forward_backward.py", "test_key_padding_mask.py", "test_gqa.py",
                  "test_non_finite.py", "test_layouts.py", "test_properties.py",
                  "test_varlen.py", "test_longnet.py", "test_kv_cache.py", "test_dropout.py",
                  "test_cpu_capabilities.py"]


def test_forward_suites_pass_with_the_fused_forward_forced():
    run_suites_in_subprocess(FORWARD_SUITES, DILATED_ATTENTION_CPU_ATTENTION="fused")


# On one thread every call has a unit per thread, so the fused backward takes the small shapes
# of these suites (one view batch, one key head) that it leaves to ATen's kernel on two.
ONE_THREAD_SUITES = ["test_properties.py", "test_layouts.py", "test_gqa.py",
                     "test_key_padding_mask.py", "test_varlen.py", "test_longnet.py"]


def test_suites_pass_forced_fused_on_one_thread():
    run_suites_in_subprocess(ONE_THREAD_SUITES, DILATED_ATTENTION_CPU_ATTENTION="fused",
                             DILATED_ATTENTION_TEST_THREADS="1")


def test_packed_parts_shorter_than_the_threads_pass_forced_fused():
    """With more threads than a short part's (view batch, key head) units, the parts still share
    one backward region when their units together cover the threads (a tail part rides along),
    and each group runs its own where grouped-query key heads accumulate."""
    run_suites_in_subprocess(["test_varlen.py", "test_gqa.py"],
                             DILATED_ATTENTION_CPU_ATTENTION="fused",
                             DILATED_ATTENTION_TEST_THREADS="12")
