"""A regular (non-editable) install works: the wheel and the sdist carry the C++ sources, and a wheel installed
into a fresh environment builds the kernels and trains with the fused engine.

The editable install the other tests run on reads the sources from the checkout, so it cannot see a package
that ships without them (a `pip install .` once crashed on the first forward call for exactly that reason).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = sorted(p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src/normrnn/fused/csrc").iterdir()
              if p.suffix in (".cpp", ".h"))
HAS_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None


def _clean_copy(dest: Path) -> Path:
    """The checkout's files as a clean clone has them (tracked, or new and not ignored). The checkout itself holds
    the editable install's egg-info, whose file list setuptools reads, and that hid missing package data."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell the project's files from build leftovers")
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _build(kind: str, src: Path, out: Path) -> Path:
    """Build the wheel or sdist with setuptools' own backend, in this environment (no isolated build env: that
    would fetch setuptools from the network and a second torch)."""
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
    name = subprocess.run([sys.executable, "-c", code], cwd=src, check=True, capture_output=True, text=True)
    return out / name.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """(a clean copy of the project, a folder for what is built from it)"""
    return _clean_copy(tmp_path_factory.mktemp("project")), tmp_path_factory.mktemp("dist")


def test_sources_are_found():
    assert "normrnn/fused/csrc/engine.cpp" in CSRC


def test_sdist_carries_the_kernel_sources(dist):
    sdist = _build("sdist", *dist)
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [f for f in CSRC if f"src/{f}" not in names]
    assert not missing, f"sdist lacks {missing}"


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler: the fused kernels cannot be built here")
def test_wheel_installed_in_a_fresh_environment_trains_with_the_fused_engine(dist, tmp_path):
    wheel = _build("wheel", *dist)
    with zipfile.ZipFile(wheel) as z:
        missing = [f for f in CSRC if f not in z.namelist()]
    assert not missing, f"wheel lacks {missing}"

    # A fresh venv with the wheel installed and nothing else of ours: torch and the other dependencies come from
    # this environment's site-packages through a .pth line (its .pth files, the editable install's among them,
    # are not read from there), so the import below can only find the installed wheel.
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True)

    script = textwrap.dedent(f"""
        import warnings, torch, normrnn
        from normrnn import fused
        assert normrnn.__file__.startswith({str(site)!r}), normrnn.__file__
        warnings.simplefilter("error")  # a failed build warns and falls back: that must fail here
        lstm = normrnn.LSTM(8, 16, norm="layer")
        x = torch.randn(5, 3, 8)
        out, _ = lstm(x)
        out.pow(2).mean().backward()
        assert lstm.active_backend() == "fused-native", lstm.active_backend()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in lstm.parameters())
        print("ok", fused.native.build_dir())
    """)
    # A build folder of its own: the cached build of the checkout's sources must not stand in for the wheel's.
    env = dict(os.environ, NORMRNN_BUILD=str(tmp_path / "build"), PYTHONPATH="")
    run = subprocess.run([str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok " + str(tmp_path / "build")), run.stdout


def test_missing_sources_fall_back_with_one_warning(tmp_path):
    """An install whose C++ sources are missing runs the reference loop after one warning, as a failed build does,
    instead of raising from the first forward call."""
    script = textwrap.dedent("""
        import warnings, torch, normrnn
        from pathlib import Path
        from normrnn.fused import native
        native.SOURCE = Path("/nonexistent/engine.cpp")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lstm = normrnn.LSTM(8, 16)
            out, _ = lstm(torch.randn(5, 3, 8))
            out.sum().backward()
            lstm(torch.randn(5, 3, 8))
        messages = [str(w.message) for w in caught if "could not be built" in str(w.message)]
        assert len(messages) == 1, [str(w.message) for w in caught]
        assert "engine.cpp" in messages[0], messages
        assert lstm.active_backend() == "reference", lstm.active_backend()
        print("ok")
    """)
    env = dict(os.environ, NORMRNN_BUILD=str(tmp_path / "build"))
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stdout + run.stderr
