"""`pip install . --no-build-isolation` into a fresh virtualenv (scikit-build-core, installed
there first, runs the project's CMake and installs the op library into the wheel), then, from a
directory outside the checkout and without DILATED_ATTENTION_OPS_LIB: import, the library loaded
from the venv's site-packages, and a forward checked against the float64 reference; and what the
wheel holds (platform-specific, the package and its library only, no RPATH into a build tree).

The venv lives at a fixed path (<repo>/build/pip-test-venv) and is recreated from scratch on
every run. Its torch is the test runner's: torch and its dependencies, file by file as their
RECORDs list them, hard-linked into the fresh venv's site-packages (copied where a hard link is
not possible), so the venv holds a torch install of its own at its own path, as `pip install
torch` would leave it, but with the files' original mtimes. A CUDA torch also gets
`cmake>=3.28,<4` (what its C++20 CUDA dialect needs, as scripts/setup.sh does).

The CMake build directory is this test's own (<repo>/build/pip-test, passed as scikit-build-core's
build-dir), so it never shares a CMake cache with another interpreter's builds (see
test_build_dir_follows_the_interpreter). It persists between runs: with the same venv path and the
same torch files a second run configures again and rebuilds nothing that did not change. The
first run (a fresh clone, CI) compiles the library from scratch: minutes (about 3-6 on 2 cores).
Set DILATED_ATTENTION_PIP_TEST_COLD=1 to remove the build directory first (a from-scratch build
every time), DILATED_ATTENTION_SKIP_PIP_TEST=1 to skip this file."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from pkg_helpers import REPO_ROOT

pytestmark = pytest.mark.skipif(
    os.environ.get("DILATED_ATTENTION_SKIP_PIP_TEST") == "1",
    reason="DILATED_ATTENTION_SKIP_PIP_TEST=1")

VENV = REPO_ROOT / "build" / "pip-test-venv"
BUILD_DIR = REPO_ROOT / "build" / "pip-test"
TORCH_VERSION = torch.__version__  # the runner's torch, which the venv gets
LIBRARY = "libdilated_attention_ops.so"


def clean_env(**extra):
    """The environment of a user's shell: no pointer at the checkout's library or sources."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DILATED_ATTENTION_OPS_LIB", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith("SKBUILD_")}
    env.update(extra)
    return env


def run(cmd, cwd, timeout, **env):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=clean_env(**env),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({result.returncode})\n"
        f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def build_requirements():
    """[build-system] requires of pyproject.toml: scikit-build-core and its floor."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        return ["scikit-build-core"]
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["build-system"]["requires"]


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_closure(name):
    """The installed distribution `name` and, recursively, what it requires (markers of this
    interpreter, with the extras each requirement names: torch's CUDA libraries come as extras of
    cuda-toolkit)."""
    dists, todo, done = {}, [(name, "")], set()
    while todo:
        name, extra = todo.pop()
        dist = importlib.metadata.distribution(name)
        key = canonical(dist.metadata["Name"])
        if (key, extra) in done:
            continue
        done.add((key, extra))
        dists[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return list(dists.values())


def install_by_link(dists, site, installed):
    """Puts every file of `dists` (as their RECORDs list them) at the same place under `site`,
    hard-linked (copied with its mtime where linking fails): a second install of the same files.
    Distributions named in `installed` (already in the venv) and console scripts (outside
    site-packages) are left out."""
    for dist in dists:
        if canonical(dist.metadata["Name"]) in installed:
            continue
        assert dist.files, f"{dist.metadata['Name']} has no RECORD"
        for file in dist.files:
            if ".." in file.parts:
                continue
            source = Path(dist.locate_file(file))
            if not source.is_file():  # a .pyc the RECORD names but nobody compiled
                continue
            target = site / file
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
                continue
            try:
                os.link(source, target)
            except FileExistsError:
                raise
            except OSError:  # another file system
                shutil.copy2(source, target)


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("pip")
    shutil.rmtree(VENV, ignore_errors=True)
    if os.environ.get("DILATED_ATTENTION_PIP_TEST_COLD") == "1":
        shutil.rmtree(BUILD_DIR, ignore_errors=True)
    # The runner's Python (its base interpreter: venv never nests), which its torch is built for.
    run([sys.executable, "-m", "venv", VENV], cwd, 300)
    python = VENV / "bin" / "python"
    # What the README asks for besides torch: the build backend (and CMake >= 3.28 for CUDA).
    extra = ["cmake>=3.28,<4"] if torch.version.cuda else []
    run([python, "-m", "pip", "install", *build_requirements(), *extra], cwd, 600)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
                    cwd, 60).stdout.strip())
    installed = run([python, "-c", "import importlib.metadata as m; "
                     "print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"],
                    cwd, 60).stdout.split()
    install_by_link(runtime_closure("torch"), site, {canonical(name) for name in installed})
    run([python, "-c", "import torch"], cwd, 300)
    run([python, "-m", "pip", "install", REPO_ROOT, "--no-build-isolation",
         f"--config-settings=build-dir={BUILD_DIR}"], cwd, 1800)
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
    assert library.name == LIBRARY
    assert site in library.parents, info
    assert library.parent == package.parent == site / "dilated_attention_pytorch", info
    assert info["version"] == "0.5.0" and info["torch"] == TORCH_VERSION
    shown = run([venv_python, "-m", "pip", "show", "dilated-attention-pytorch"], tmp_path, 120)
    assert "Version: 0.5.0" in shown.stdout


def _dist_info(python, cwd):
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
                    cwd, 60).stdout.strip())
    return site, site / "dilated_attention_pytorch-0.5.0.dist-info"


def test_the_wheel_is_platform_specific_and_holds_only_the_package(venv_python, tmp_path):
    site, dist_info = _dist_info(venv_python, tmp_path)
    wheel = (dist_info / "WHEEL").read_text()
    assert "Root-Is-Purelib: false" in wheel, wheel
    tags = re.findall(r"^Tag: (\S+)$", wheel, re.M)
    assert tags and all(not tag.endswith("-any") for tag in tags), wheel
    # RECORD: the package's sources and the op library, nothing else (install.components =
    # ["python"]: no test program, bench or header came along).
    record = {line.split(",")[0] for line in (dist_info / "RECORD").read_text().splitlines()
              if line}
    outside = {path for path in record
               if not path.startswith(("dilated_attention_pytorch/", f"{dist_info.name}/"))}
    assert not outside, sorted(outside)
    sources = {f"dilated_attention_pytorch/{p.name}"
               for p in (REPO_ROOT / "python" / "dilated_attention_pytorch").glob("*.py")}
    assert sources | {f"dilated_attention_pytorch/{LIBRARY}"} <= record, sorted(record)


def test_the_installed_library_has_no_rpath(venv_python, tmp_path):
    """No RPATH/RUNPATH (none into the build tree, the checkout or the torch it was built
    against): it loads after `import torch`, whose libtorch and libc10 satisfy it by soname."""
    site, _ = _dist_info(venv_python, tmp_path)
    readelf = shutil.which("readelf")
    assert readelf, "readelf (binutils) not found"
    dynamic = run([readelf, "-d", site / "dilated_attention_pytorch" / LIBRARY], tmp_path,
                  60).stdout
    assert "(NEEDED)" in dynamic and "libtorch" in dynamic, dynamic
    assert not re.search(r"\((RPATH|RUNPATH)\)", dynamic), dynamic


def _configure(python, build_dir, cwd):
    """Configures `build_dir` as scikit-build-core does (Python3_EXECUTABLE = the interpreter);
    returns the CMake cache as a dict."""
    cmake = VENV / "bin" / "cmake"  # the venv's CMake >= 3.28 with a CUDA torch
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run([cmake if cmake.is_file() else "cmake", "-S", REPO_ROOT, "-B", build_dir, *generator,
         "-DCMAKE_BUILD_TYPE=Release", f"-DPython3_EXECUTABLE={python}",
         "-DDILATED_ATTENTION_BUILD_TESTS=OFF", "-DDILATED_ATTENTION_BUILD_BENCH=OFF"], cwd, 300)
    cache = {}
    for line in (Path(build_dir) / "CMakeCache.txt").read_text().splitlines():
        if ":" in line and "=" in line and not line.startswith(("#", "//")):
            name, value = line.split("=", 1)
            cache[name.split(":", 1)[0]] = value
    return cache


@pytest.fixture(scope="module")
def two_configures(venv_python, tmp_path_factory):
    """One build directory configured with one interpreter, then with another (the test runner:
    the same torch files at another path), as `cmake -DPython3_EXECUTABLE=...` (what
    scikit-build-core passes) does it: scripts/setup.sh's BUILD_DIR reused with another VENV, or
    pip's persistent build/pip/{wheel_tag} (one per Python version, not per environment) when
    two environments `pip install .` from the same checkout. (There scikit-build-core >= 0.10.5
    also starts from a fresh CMake cache when the environment, i.e. its own install, changed.)
    Returns the venv's site-packages, the runner's prefix, the second configure's cache and the
    library's link command."""
    cwd = tmp_path_factory.mktemp("two-configures")
    build_dir = cwd / "build"
    first = _configure(venv_python, build_dir, cwd)
    venv_torch = Path(first["Torch_DIR"]).resolve()
    assert VENV.resolve() in venv_torch.parents, venv_torch
    other_python = Path(sys.executable)
    second = _configure(other_python, build_dir, cwd)
    other_prefix = Path(subprocess.check_output(
        [str(other_python), "-c", "import sys; print(sys.prefix)"], text=True).strip()).resolve()
    venv_site = venv_torch.parents[3]  # <site>/torch/share/cmake/Torch
    ninja = build_dir / "build.ninja"
    if ninja.is_file():
        link = ninja.read_text()
        link = link[link.index("build libdilated_attention_ops.so:"):]
        link = link[:link.index("\n\n")]
    else:  # Makefiles
        link = (build_dir / "CMakeFiles" / "dilated_attention_ops.dir" / "link.txt").read_text()
    return venv_site, other_prefix, second, link


def test_build_dir_follows_the_interpreter(two_configures):
    """The second configure must build against the second interpreter's torch."""
    _, other_prefix, second, _ = two_configures
    torch_dir = Path(second["Torch_DIR"]).resolve()
    assert other_prefix in torch_dir.parents, f"Torch_DIR stayed at {torch_dir}"


def test_link_line_follows_the_interpreter(two_configures):
    """...and link nothing of the first interpreter's torch: the library's link command names no
    file under the first venv (which may be gone by the next `pip install .`)."""
    venv_site, _, _, link = two_configures
    assert str(venv_site) not in link, link
