"""The deprecated all_gather classes warn on construction with the seed's exact notice, as a real
DeprecationWarning attributed to the caller, once per class per process; nothing else warns; and
both snippets of the seed's migration guide run verbatim."""

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import dilated_attention_pytorch as dap
from helpers import make_qkv
from pkg_helpers import PACKAGE_ROOT

NOTICE = ("{} is deprecated. This implementation uses all_gather which has poor performance "
          "characteristics. Please use RingDilatedAttentionHybridOptimizedV2 or other ring "
          "implementations that use isend/irecv for better performance.")

SEGS, RATES = [8, 16], [1, 2]

DEPRECATED = {
    "RingDilatedAttentionV2Collective": lambda: dap.RingDilatedAttentionV2Collective(SEGS, RATES),
    "HilbertRingDilatedAttention": lambda: dap.HilbertRingDilatedAttention(SEGS, RATES),
    "HeadParallelDilatedAttention": lambda: dap.HeadParallelDilatedAttention(SEGS, RATES),
    "DistributedImprovedDilatedAttention":
        lambda: dap.DistributedImprovedDilatedAttention(SEGS, RATES),
    "DistributedImprovedMultiheadDilatedAttention":
        lambda: dap.DistributedImprovedMultiheadDilatedAttention(32, 4, SEGS, RATES),
}

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


def test_once_per_class_not_once_overall():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for build in DEPRECATED.values():
            build()
        for build in DEPRECATED.values():
            build()
    assert [str(w.message) for w in caught] == [NOTICE.format(n) for n in DEPRECATED]


@pytest.mark.parametrize("name", list(NOT_DEPRECATED))
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


def test_once_per_class_per_process_in_fresh_process(tmp_path):
    script = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        import dilated_attention_pytorch as dap
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                dap.RingDilatedAttentionV2Collective([8], [1])
                dap.HilbertRingDilatedAttention([8], [1])
                dap.HeadParallelDilatedAttention([8], [1])
                dap.DistributedImprovedDilatedAttention([8], [1])
                dap.DistributedImprovedMultiheadDilatedAttention(16, 2, [8], [1])
                dap.RingDilatedAttentionHybridOptimizedV2([8], [1])
        for w in caught:
            print(w.category.__name__, "|", w.message)
    """)
    result = _run_python(["-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    names = ["RingDilatedAttentionV2Collective", "HilbertRingDilatedAttention",
             "HeadParallelDilatedAttention", "DistributedImprovedDilatedAttention",
             "DistributedImprovedMultiheadDilatedAttention"]
    assert lines == [f"DeprecationWarning | {NOTICE.format(n)}" for n in names]


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


@pytest.mark.parametrize("snippet,deprecated", [(OLD_SNIPPET, True), (NEW_SNIPPET, False)],
                         ids=["old", "new"])
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
