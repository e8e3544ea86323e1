"""`pip install . --no-build-isolation` into a fresh virtualenv (torch from its wheel, the op
library compiled by setup.py's CMake step), then, from a directory outside the checkout and
without DILATED_ATTENTION_OPS_LIB: import, the library loaded from the venv's site-packages, and a
forward checked against the float64 reference.

Slow (a first build compiles the C++ library: minutes). The venv lives at a fixed path
(<repo>/build/pip-test-venv, recreated from scratch on every run) and the CMake build directory is
this test's own (<repo>/build/pip-test), so it never shares a CMake cache with another
interpreter's builds (see test_build_dir_follows_the_interpreter). A fresh torch install has new
header mtimes, so each run recompiles the library (about 2.5-4 minutes on 2 cores).
Set DILATED_ATTENTION_SKIP_PIP_TEST=1 to skip this file."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pkg_helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("DILATED_ATTENTION_SKIP_PIP_TEST") == "1",
    reason="DILATED_ATTENTION_SKIP_PIP_TEST=1")

VENV = REPO_ROOT / "build" / "pip-test-venv"
BUILD_DIR = REPO_ROOT / "build" / "pip-test"
TORCH_VERSION = "2.13.0"


def clean_env(**extra):
    """The environment of a user's shell: no pointer at the checkout's library or sources."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DILATED_ATTENTION_OPS_LIB", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME",
                        "DILATED_ATTENTION_PIP_BUILD_DIR")}
    env.update(extra)
    return env


def run(cmd, cwd, timeout, **env):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(**env),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({result.returncode})\n"
        f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pip")
    shutil.rmtree(VENV, ignore_errors=True)
    base_python = shutil.which("python3") or sys._base_executable
    run([base_python, "-m", "venv", VENV], cwd, 300)
    python = VENV / "bin" / "python"
    run([python, "-m", "pip", "install", f"torch=={TORCH_VERSION}", "setuptools>=61"], cwd, 600)
    run([python, "-m", "pip", "install", REPO_ROOT, "--no-build-isolation"], cwd, 1200,
        DILATED_ATTENTION_PIP_BUILD_DIR=str(BUILD_DIR))
    return python


CHECK = textwrap.dedent("""
    import json, os, sys, sysconfig
    from pathlib import Path
    assert "DILATED_ATTENTION_OPS_LIB" not in os.environ
    import torch
    import dilated_attention_pytorch as dap
    from reference import dilated_attention_reference

    torch.set_num_threads(2)
    site = Path(sysconfig.get_paths()["platlib"]).resolve()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 32, 4, 8, dtype=torch.float64, generator=gen) for _ in range(3))
    out = dap.DilatedAttention([8, 16, 32], [1, 2, 4])(q, k, v, is_causal=True)
    expected = dilated_attention_reference(q, k, v, [8, 16, 32], [1, 2, 4], True)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    mha = dap.MultiheadDilatedAttention(32, 4, [1, 2], [8, 16])
    assert mha(torch.randn(1, 16, 32)).shape == (1, 16, 32)
    print(json.dumps({
        "library": str(Path(dap.library_path()).resolve()),
        "package": str(Path(dap.__file__).resolve()),
        "site": str(site),
        "version": dap.__version__,
        "torch": torch.__version__,
    }))
""")


def test_pip_install_import_and_forward(venv_python, tmp_path):
    import json

    shutil.copy(REPO_ROOT / "tests" / "python" / "reference.py", tmp_path / "reference.py")
    (tmp_path / "check.py").write_text(CHECK)
    assert not str(tmp_path.resolve()).startswith(str(REPO_ROOT))
    result = run([venv_python, "check.py"], tmp_path, 300)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    site = Path(info["site"])
    assert str(site).startswith(str(VENV.resolve()))
    library, package = Path(info["library"]), Path(info["package"])
    assert library.name == "libdilated_attention_ops.so"
    assert site in library.parents, info
    assert library.parent == package.parent == site / "dilated_attention_pytorch", info
    assert info["version"] == "0.5.0" and info["torch"].startswith(TORCH_VERSION)
    shown = run([venv_python, "-m", "pip", "show", "dilated-attention-pytorch"], tmp_path, 120)
    assert "Version: 0.5.0" in shown.stdout


def _configured_torch_dir(python, build_dir, cwd):
    run(["cmake", "-S", REPO_ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
         f"-DPython3_EXECUTABLE={python}", "-DDILATED_ATTENTION_BUILD_TESTS=OFF",
         "-DDILATED_ATTENTION_BUILD_BENCH=OFF"], cwd, 300)
    for line in (Path(build_dir) / "CMakeCache.txt").read_text().splitlines():
        if line.startswith("Torch_DIR:"):
            return Path(line.split("=", 1)[1]).resolve()
    raise AssertionError("Torch_DIR not in the CMake cache")


def test_build_dir_follows_the_interpreter(venv_python, tmp_path):
    """What setup.py does when two interpreters `pip install .` from the same checkout: configure
    the same build directory with one interpreter, then with the other. The second configure
    must build against the second interpreter's torch."""
    other_python = Path(sys.executable)  # the test runner's venv: another torch install
    first = _configured_torch_dir(venv_python, tmp_path / "build", tmp_path)
    assert VENV.resolve() in first.parents
    second = _configured_torch_dir(other_python, tmp_path / "build", tmp_path)
    other_prefix = Path(subprocess.check_output(
        [str(other_python), "-c", "import sys; print(sys.prefix)"], text=True).strip()).resolve()
    assert other_prefix in second.parents, f"Torch_DIR stayed at {second}"
