"""Front ends of the distributed ops: deprecation warnings of the legacy names, opcheck,
TorchScript and torch.compile with a real process group name.

Deprecation warnings: in this torch, a C++ TORCH_WARN_DEPRECATION raised inside an op called
through torch.ops is NOT delivered to Python's `warnings` (torch.ops calls install no Python
warning handler); c10's default handler logs it to stderr as
    [W... named_ops.cpp:NN] Warning: <text> (function <the C++ function that warned>)
The test runs a fresh interpreter (the warnings are once per process), records Python warnings
and stderr, and checks whichever channel carries the warnings (if a future torch delivers them to
Python, they must be DeprecationWarnings there); the count must be right in that channel, and
the other channel must not duplicate them.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from typing import List, Optional

import pytest
import torch
import torch.distributed as dist

from distributed_harness import library_path, run_on_ranks
from helpers import (backends_with, deprecated_op, deprecated_ops, op_param, op_row,
                     recommended_ops)

# The names of this build, from the library's table: deprecated name -> its class.
DEPRECATED = {name: op_row(name)["deprecated_class"] for name in deprecated_ops()}
CANONICAL = recommended_ops()


def deprecation_text(cls: str) -> str:
    """The notice, written out here independently of the library's table."""
    return (f"{cls} is deprecated. This implementation uses all_gather which has poor performance "
            "characteristics. Please use RingDilatedAttentionHybridOptimizedV2 or other ring "
            "implementations that use isend/irecv for better performance.")


# ---------------------------------------------------------------------------------------------
# Deprecation warnings (single process, group_name "")
# ---------------------------------------------------------------------------------------------

WARNING_SCRIPT = textwrap.dedent(
    r"""
    import json, sys, warnings
    import torch

    lib, phases = sys.argv[1], json.loads(sys.argv[2])
    torch.ops.load_library(lib)
    torch.set_num_threads(1)
    ops = torch.ops.dilated_attention
    q = torch.randn(1, 16, 4, 4)
    x = torch.randn(1, 16, 16)
    w = torch.randn(16, 16) / 4

    def call(name, signature):
        op = getattr(ops, name)
        if signature == "fused_self_attention":
            return op(x, torch.cat([w, w, w]), None, w, None, 4, [8, 16], [1, 2])
        if signature == "projected":
            return op(x, x, x, w, None, w, None, w, None, w, None, 4, [8, 16], [1, 2])
        assert signature == "attention", signature
        return op(q, q, q, [8, 16], [1, 2], 0.0, False, None, "")

    report = {}
    for phase, warn_always, names in phases:
        torch.set_warn_always(warn_always)
        sys.stderr.write(f"@@PHASE {phase}\n")
        sys.stderr.flush()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name, signature in names:
                call(name, signature)
                call(name, signature)
        sys.stderr.flush()
        report[phase] = [[w.category.__name__, str(w.message)] for w in caught]
    sys.stderr.write("@@END\n")
    print(json.dumps(report))
    """
)

LOG_LINE = re.compile(r"Warning: (.*?) \(function \w+\)\s*$")


@functools.lru_cache(maxsize=None)
def warning_run():
    def with_signatures(names):
        return [(name, op_row(name)["signature"]) for name in names]

    # Every name of this build's table (a build without the deprecated ops has none of them in
    # the last two phases).
    phases = [
        # Canonical names first, under warn_always: they must never warn.
        ("canonical", True, with_signatures(CANONICAL)),
        # Each deprecated name called twice: one warning each per process.
        ("once", False, with_signatures(DEPRECATED)),
        # Under torch.set_warn_always(True): every call warns.
        ("always", True, with_signatures(DEPRECATED)),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", WARNING_SCRIPT, str(library_path()), json.dumps(phases)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TORCH_CPP_LOG_LEVEL": "WARNING"},
    )
    assert proc.returncode == 0, proc.stderr
    python_side = json.loads(proc.stdout.strip().splitlines()[-1])
    logged = {}
    sections = re.split(r"^@@PHASE (\w+)\n", proc.stderr.split("@@END")[0], flags=re.M)
    for phase, text in zip(sections[1::2], sections[2::2]):
        logged[phase] = [m.group(1) for line in text.splitlines()
                         if (m := LOG_LINE.search(line))]
    return python_side, logged


def deprecation_messages(phase: str) -> List[str]:
    """The deprecation warnings of a phase, from whichever channel carries them."""
    python_side, logged = warning_run()
    from_python = [m for _, m in python_side[phase] if "is deprecated" in m]
    from_log = [m for m in logged.get(phase, []) if "is deprecated" in m]
    if from_python:
        categories = {c for c, m in python_side[phase] if "is deprecated" in m}
        assert categories == {"DeprecationWarning"}, categories
        assert not from_log, f"delivered to Python and logged as well: {from_log}"
        return from_python
    return from_log


@deprecated_op
def test_warning_channel_carries_the_deprecations(record_property):
    python_side, logged = warning_run()
    in_python = any("is deprecated" in m for _, m in python_side["once"])
    record_property("deprecation_channel", "python warnings" if in_python else "c10 log (stderr)")
    assert deprecation_messages("once"), (python_side, logged)


@deprecated_op
def test_deprecated_names_warn_once_per_process_with_the_exact_text():
    messages = deprecation_messages("once")
    # Each deprecated name was called twice; each warns exactly once; canonical names never.
    assert sorted(messages) == sorted(deprecation_text(cls) for cls in DEPRECATED.values())


@deprecated_op
def test_every_call_warns_under_warn_always():
    messages = deprecation_messages("always")
    assert sorted(messages) == sorted(2 * [deprecation_text(cls) for cls in DEPRECATED.values()])


def test_canonical_names_never_warn():
    python_side, logged = warning_run()
    assert python_side["canonical"] == [], python_side["canonical"]
    assert logged["canonical"] == [], logged["canonical"]


@deprecated_op
def test_nothing_else_warns():
    python_side, logged = warning_run()
    allowed = {deprecation_text(cls) for cls in DEPRECATED.values()}
    for phase in ("once", "always"):
        everything = [m for _, m in python_side[phase]] + logged[phase]
        assert set(everything) <= allowed, everything


# ---------------------------------------------------------------------------------------------
# opcheck with a world-size-1 gloo group in this process
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gloo_group_name(tmp_path_factory):
    if dist.is_initialized():
        pytest.skip("a default process group is already initialised in this process")
    store = dist.FileStore(str(tmp_path_factory.mktemp("gloo") / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield dist.group.WORLD.group_name
    finally:
        dist.destroy_process_group()


# Every backend of this build, marked when only deprecated names use it.
BACKENDS = [op_param(backend, backend=backend, id=backend) for backend in backends_with()]


def _qkv(requires_grad, dtype=torch.float64, shape=(2, 16, 4, 4)):
    gen = torch.Generator().manual_seed(3)
    return [torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(requires_grad)
            for _ in range(3)]


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_internal_op_with_gloo_group(gloo_group_name, backend, requires_grad):
    q, k, v = _qkv(requires_grad)
    args = (q, k, v, [8, 16], [1, 2], 0.0, True, 0.5, gloo_group_name, backend)
    torch.library.opcheck(torch.ops.dilated_attention._distributed_dilated_attention.default, args)


@pytest.mark.parametrize("which", ["empty", "gloo"])
def test_opcheck_v2(gloo_group_name, which):
    group_name = "" if which == "empty" else gloo_group_name
    q, k, v = _qkv(True, torch.float32, (1, 24, 5, 4))
    args = (q, k, v, [8, 24], [1, 3], 0.0, False, None, group_name)
    torch.library.opcheck(
        torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2.default, args)


def test_opcheck_ring_multihead(gloo_group_name):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 16, 8, generator=gen, requires_grad=True)
    qkv_w = torch.randn(24, 8, generator=gen, requires_grad=True)
    qkv_b = torch.randn(24, generator=gen, requires_grad=True)
    out_w = torch.randn(8, 8, generator=gen, requires_grad=True)
    args = (x, qkv_w, qkv_b, out_w, None, 2, [8, 16], [1, 2], 0.0, True, None, gloo_group_name)
    torch.library.opcheck(torch.ops.dilated_attention.ring_multihead_dilated_attention.default,
                          args)


def test_world_size_one_group_equals_core_op(gloo_group_name):
    q, k, v = _qkv(False)
    expected = torch.ops.dilated_attention.dilated_attention(q, k, v, [8, 16], [1, 2], 0.0, True,
                                                             None)
    for name in ("ring_dilated_attention_hybrid_optimized_v2", "ring_dilated_attention_production"):
        got = getattr(torch.ops.dilated_attention, name)(q, k, v, [8, 16], [1, 2], 0.0, True,
                                                         None, gloo_group_name)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# TorchScript and torch.compile on two ranks
# ---------------------------------------------------------------------------------------------

SEGMENTS, RATES = [8, 32], [1, 2]


class RingAttention(torch.nn.Module):
    """Calls the v2 op with the group name held as a string attribute."""

    def __init__(self, segment_lengths: List[int], dilation_rates: List[int], is_causal: bool,
                 scale: Optional[float], group_name: str):
        super().__init__()
        self.segment_lengths = segment_lengths
        self.dilation_rates = dilation_rates
        self.is_causal = is_causal
        self.scale = scale
        self.group_name = group_name

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2(
            q, k, v, self.segment_lengths, self.dilation_rates, 0.0, self.is_causal, self.scale,
            self.group_name)


def attention_block(q, k, v, group_name: str):
    """A little computation around the op, so the graph has more than one node."""
    out = torch.ops.dilated_attention.ring_dilated_attention_hybrid_optimized_v2(
        q * 1.5, k, v, SEGMENTS, RATES, 0.0, True, None, group_name)
    return torch.tanh(out) + v


def multihead_block(x, qkv_w, qkv_b, out_w, group_name: str):
    out = torch.ops.dilated_attention.ring_multihead_dilated_attention(
        x, qkv_w, qkv_b, out_w, None, 2, SEGMENTS, RATES, 0.0, False, None, group_name)
    return out.relu().sum(-1)


def _shard_inputs(ctx, seed, n_full=32, shape_tail=(2, 4)):
    gen = torch.Generator().manual_seed(seed)
    full = [torch.randn(1, n_full, *shape_tail, generator=gen, dtype=torch.float64)
            for _ in range(4)]
    n = n_full // ctx.world_size
    rows = slice(ctx.rank * n, (ctx.rank + 1) * n)
    return [t[:, rows].clone() for t in full]


def _run_and_grads(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _max_differences(a, b):
    return [float((x - y).abs().max()) if x is not None and y is not None else None
            for x, y in zip(a, b)]


def frontends_worker(ctx):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    results = {}
    # TorchScript: scripted module with a group-name attribute, and after a save/load round trip.
    q, k, v, grad = _shard_inputs(ctx, 0)
    eager_module = RingAttention(SEGMENTS, RATES, True, 0.4, ctx.group_name)
    scripted = torch.jit.script(eager_module)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    eager = _run_and_grads(eager_module, (q, k, v), grad)
    results["script_graph_has_op"] = (
        "dilated_attention::ring_dilated_attention_hybrid_optimized_v2" in scripted.graph.str())
    results["script_group_name"] = scripted.group_name == ctx.group_name
    results["script"] = _max_differences(_run_and_grads(scripted, (q, k, v), grad), eager)
    results["script_loaded"] = _max_differences(_run_and_grads(loaded, (q, k, v), grad), eager)

    # torch.compile(fullgraph=True, backend="aot_eager") with the group name as an argument.
    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(attention_block, backend=counter, fullgraph=True)
    fn = lambda a, b, c: attention_block(a, b, c, ctx.group_name)  # noqa: E731
    cfn = lambda a, b, c: compiled(a, b, c, ctx.group_name)  # noqa: E731
    results["compile"] = _max_differences(_run_and_grads(cfn, (q, k, v), grad),
                                          _run_and_grads(fn, (q, k, v), grad))
    # A second call with new values reuses the graph.
    q2, k2, v2, grad2 = _shard_inputs(ctx, 1)
    results["compile_second_call"] = _max_differences(_run_and_grads(cfn, (q2, k2, v2), grad2),
                                                      _run_and_grads(fn, (q2, k2, v2), grad2))
    results["compile_frames"] = counter.frame_count
    results["compile_ops"] = counter.op_count

    counter_mh = CompileCounterWithBackend("aot_eager")
    compiled_mh = torch.compile(multihead_block, backend=counter_mh, fullgraph=True)
    gen = torch.Generator().manual_seed(5)
    x_full = torch.randn(1, 32, 8, generator=gen, dtype=torch.float64)
    n = 32 // ctx.world_size
    x = x_full[:, ctx.rank * n:(ctx.rank + 1) * n].clone()
    weights = [torch.randn(24, 8, generator=gen, dtype=torch.float64) / 3,
               torch.randn(24, generator=gen, dtype=torch.float64) / 10,
               torch.randn(8, 8, generator=gen, dtype=torch.float64) / 3]
    mh_grad = torch.randn(1, n, generator=gen, dtype=torch.float64)
    results["compile_multihead"] = _max_differences(
        _run_and_grads(lambda *a: compiled_mh(*a, ctx.group_name), (x, *weights), mh_grad),
        _run_and_grads(lambda *a: multihead_block(*a, ctx.group_name), (x, *weights), mh_grad))
    results["compile_multihead_frames"] = counter_mh.frame_count
    results["graph_breaks"] = {str(k): v for k, v in counters["graph_break"].items()}
    return results


@functools.lru_cache(maxsize=None)
def _frontends_run():
    try:
        return run_on_ranks(frontends_worker, 2, timeout=180)
    except Exception as e:  # noqa: BLE001
        return e


def frontends_results():
    outcome = _frontends_run()
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _assert_equal_results(diffs, what, tol=0.0):
    names = ["output", "grad 0", "grad 1", "grad 2", "grad 3"]
    for name, d in zip(names, diffs):
        assert d is not None, f"{what}: {name} missing (no gradient flowed)"
        assert d <= tol, f"{what}: {name} differs by {d}"


def test_torchscript_module_with_group_name_attribute():
    for rank, res in enumerate(frontends_results()):
        assert res["script_graph_has_op"], f"rank {rank}"
        assert res["script_group_name"], f"rank {rank}"
        _assert_equal_results(res["script"], f"rank {rank} scripted")
        _assert_equal_results(res["script_loaded"], f"rank {rank} saved and loaded")


def test_compile_fullgraph_aot_eager_matches_eager():
    for rank, res in enumerate(frontends_results()):
        _assert_equal_results(res["compile"], f"rank {rank} compiled", tol=1e-12)
        _assert_equal_results(res["compile_second_call"], f"rank {rank} compiled, 2nd call",
                              tol=1e-12)
        assert res["compile_frames"] == 1, res
        assert res["compile_ops"] >= 3, res
        assert not res["graph_breaks"], res["graph_breaks"]


def test_compile_ring_multihead_matches_eager():
    for rank, res in enumerate(frontends_results()):
        _assert_equal_results(res["compile_multihead"], f"rank {rank} multihead", tol=1e-12)
        assert res["compile_multihead_frames"] == 1, res
