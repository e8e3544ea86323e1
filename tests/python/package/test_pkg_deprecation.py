"""The deprecated all_gather classes warn on construction with the seed's exact notice, as a real
DeprecationWarning attributed to the caller, once per class per process; nothing else warns; and
both snippets of the seed's migration guide run verbatim.

The deprecated classes are those the library's table of named ops names for its deprecated ops
(none in a build without them); the notice's text is written out here, independently."""

import functools
import os
import subprocess
import sys
import warnings

import pytest
import torch

import dilated_attention_pytorch as dap
from helpers import deprecated_op, deprecated_ops, make_qkv, op_row
from pkg_helpers import PACKAGE_ROOT, api_params

NOTICE = ("{} is deprecated. This implementation uses all_gather which has poor performance "
          "characteristics. Please use RingDilatedAttentionHybridOptimizedV2 or other ring "
          "implementations that use isend/irecv for better performance.")

SEGS, RATES = [8, 16], [1, 2]


def construct(op_name, segs=SEGS, rates=RATES, embed_dim=32, num_heads=4):
    """The deprecated class of `op_name`, constructed here (the notice is attributed to here)."""
    row = op_row(op_name)
    # The arguments before segment_lengths and dilation_rates, by the inputs of the class's op.
    leading = {"attention": (), "projected": (embed_dim, num_heads)}[row["signature"]]
    return getattr(dap, row["deprecated_class"])(*leading, segs, rates)


def constructor_source(op_name):
    """The same construction as source for a fresh process (SEGS = [8], RATES = [1] there)."""
    row = op_row(op_name)
    leading = {"attention": "", "projected": "16, 2, "}[row["signature"]]
    return f"dap.{row['deprecated_class']}({leading}SEGS, RATES)"


# class name -> its constructor, for every deprecated op of this build.
DEPRECATED = {op_row(name)["deprecated_class"]: functools.partial(construct, name)
              for name in deprecated_ops()}

NOT_DEPRECATED = {
    "DilatedAttention": lambda: dap.DilatedAttention(SEGS, RATES),
    "ImprovedDilatedAttention": lambda: dap.ImprovedDilatedAttention(SEGS, RATES),
    "MultiheadDilatedAttention": lambda: dap.MultiheadDilatedAttention(32, 4, RATES, SEGS),
    "RingDilatedAttentionHybridOptimizedV2":
        lambda: dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES),
    "RingDilatedAttention": lambda: dap.RingDilatedAttention(SEGS, RATES),
    "RingDilatedAttentionHybridOptimized":
        lambda: dap.RingDilatedAttentionHybridOptimized(SEGS, RATES),
    "RingDilatedAttentionProduction":
        lambda: dap.RingDilatedAttentionProduction(dap.RingAttentionConfig(SEGS, RATES)),
    "create_production_ring_attention": lambda: dap.create_production_ring_attention(SEGS, RATES),
    "RingMultiheadDilatedAttention":
        lambda: dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES),
    "RingMultiheadDilatedAttention(layer_norm)":
        lambda: dap.RingMultiheadDilatedAttention(32, 4, SEGS, RATES, layer_norm=True),
    "create_dilated_attention": lambda: dap.create_dilated_attention("ring", SEGS, RATES),
    "create_multihead_dilated_attention":
        lambda: dap.create_multihead_dilated_attention("ring", 32, 4, SEGS, RATES),
}


def forward(module):
    """One forward of whatever input layout the module takes."""
    if hasattr(module, "qkv_proj") or hasattr(module, "q_proj"):
        out = module(torch.randn(1, 16, 32))
        return out[0] if isinstance(out, tuple) else out
    q, k, v = make_qkv((1, 16, 2, 8), torch.float32)
    return module(q, k, v)


@deprecated_op
@pytest.mark.parametrize("name", list(DEPRECATED))
def test_deprecated_class_warns_once(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = DEPRECATED[name]()
        DEPRECATED[name]()  # a second instance: no second notice in this process
    assert [str(w.message) for w in caught] == [NOTICE.format(name)]
    notice = caught[0]
    assert notice.category is DeprecationWarning
    assert notice.filename == __file__  # attributed to the code that constructs the module
    assert type(module).__name__ == name


@deprecated_op
@pytest.mark.parametrize("name", list(DEPRECATED))
def test_deprecated_class_forward_is_silent(name, capfd):
    """The notice is reported at construction only: forward neither warns in Python nor through
    the op's own deprecated-name notice on stderr."""
    with pytest.warns(DeprecationWarning):
        module = DEPRECATED[name]()
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = forward(module)
    assert torch.isfinite(out).all()
    captured = capfd.readouterr()
    assert "deprecated" not in captured.err + captured.out


@deprecated_op
def test_once_per_class_not_once_overall():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for build in DEPRECATED.values():
            build()
        for build in DEPRECATED.values():
            build()
    assert [str(w.message) for w in caught] == [NOTICE.format(n) for n in DEPRECATED]


@pytest.mark.parametrize("name", api_params(NOT_DEPRECATED))
def test_other_classes_never_warn(name, capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = NOT_DEPRECATED[name]()
        module.train()
        out = forward(module)
        out.sum().backward() if out.requires_grad else None
    captured = capfd.readouterr()
    assert "Warning" not in captured.err, captured.err


def _run_python(args, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = str(PACKAGE_ROOT)
    env["OMP_NUM_THREADS"] = "2"
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


FRESH_PROCESS = """
import warnings
warnings.simplefilter("always")
import dilated_attention_pytorch as dap
SEGS, RATES = [8], [1]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
{constructions}
for w in caught:
    print(w.category.__name__, "|", w.message)
"""


def _run_fresh_process(constructions, tmp_path):
    """Runs the constructions, three times each, in a fresh interpreter; its warnings' lines."""
    body = "\n".join(" " * 8 + c for c in constructions)
    result = _run_python(["-c", FRESH_PROCESS.format(constructions=body)], tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()


@deprecated_op
def test_once_per_class_per_process_in_fresh_process(tmp_path):
    # Deprecated and recommended classes interleaved: only the deprecated ones warn, once each.
    constructions = [constructor_source(name) for name in deprecated_ops()]
    constructions.append("dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES)")
    lines = _run_fresh_process(constructions, tmp_path)
    names = [op_row(name)["deprecated_class"] for name in deprecated_ops()]
    assert lines == [f"DeprecationWarning | {NOTICE.format(n)}" for n in names]


def test_recommended_classes_never_warn_in_fresh_process(tmp_path):
    lines = _run_fresh_process([
        "dap.RingDilatedAttentionHybridOptimizedV2(SEGS, RATES)",
        "dap.RingDilatedAttentionHybridOptimized(SEGS, RATES)",
        "dap.create_production_ring_attention(SEGS, RATES)",
        "dap.RingMultiheadDilatedAttention(16, 2, SEGS, RATES)",
        "dap.RingMultiheadDilatedAttention(16, 2, SEGS, RATES, layer_norm=True)",
        "dap.create_dilated_attention('ring', SEGS, RATES)",
    ], tmp_path)
    assert lines == []


OLD_SNIPPET = """\
# Old (deprecated)
from dilated_attention_pytorch import RingDilatedAttentionV2Collective
model = RingDilatedAttentionV2Collective(
    segment_lengths=[2048, 4096],
    dilation_rates=[1, 2],
    dropout=0.0,
)
"""

NEW_SNIPPET = """\
# New (recommended)
from dilated_attention_pytorch import RingDilatedAttentionHybridOptimizedV2
model = RingDilatedAttentionHybridOptimizedV2(
    segment_lengths=[2048, 4096],
    dilation_rates=[1, 2],
    dropout=0.0,
)
"""

# Appended after the verbatim snippet: one forward on a small valid input, checked against
# DilatedAttention on the same input.
FORWARD = """
import torch
from dilated_attention_pytorch import DilatedAttention
torch.set_num_threads(2)
q, k, v = (torch.randn(1, 4096, 2, 8, generator=torch.Generator().manual_seed(i))
           for i in range(3))
out = model(q, k, v)
assert out.shape == (1, 4096, 2, 8) and torch.isfinite(out).all()
torch.testing.assert_close(out, DilatedAttention([2048, 4096], [1, 2])(q, k, v))
print("FORWARD_OK", type(model).__name__)
"""


@pytest.mark.parametrize("snippet,deprecated", [
    pytest.param(OLD_SNIPPET, True, id="old", marks=deprecated_op),
    pytest.param(NEW_SNIPPET, False, id="new")])
@pytest.mark.parametrize("flags", [["-W", "always::DeprecationWarning"], []],
                         ids=["always", "default-filters"])
def test_migration_guide_snippet_runs_verbatim(tmp_path, snippet, deprecated, flags):
    """Run as a script (its own __main__): the old snippet's notice is visible even under
    Python's default filters, because it is attributed to the script's own line."""
    script = tmp_path / "migration.py"
    script.write_text(snippet + FORWARD)
    result = _run_python([*flags, str(script)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FORWARD_OK" in result.stdout
    notice = NOTICE.format("RingDilatedAttentionV2Collective")
    if deprecated:
        assert result.stderr.count(notice) == 1, result.stderr
        assert f"{script}:3: DeprecationWarning: {notice}" in result.stderr, result.stderr
    else:
        assert "is deprecated" not in result.stderr, result.stderr
