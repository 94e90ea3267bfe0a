"""The package's architecture holds: its import graph has no circle, no import up the declared layers and no
private name taken from another module (tools/import_graph.py)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_import_graph_has_no_circle_no_upward_import_and_no_private_import():
    assert _import_graph().problems() == []


def test_import_graph_check_finds_what_it_looks_for(tmp_path):
    """The check itself: a lower module reaching up, a private name and a circle are all reported."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "normrnn", src / "normrnn", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    norms = src / "normrnn" / "norms.py"
    norms.write_text(norms.read_text() + "\nfrom .layers import _NormRNNBase\n")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py"), str(src)], capture_output=True,
                         text=True)
    assert out.returncode == 1
    assert "imports normrnn.layers, a higher layer" in out.stdout
    assert "private name _NormRNNBase" in out.stdout
    assert "import circle among" in out.stdout



def test_every_engine_implements_the_contract():
    """The PyTorch engine (a module) and the native engine (an adapter) implement contract.Engine; the flags that
    announce the optional kernels match what they implement."""
    from normrnn.fused import native, torch_engine
    from normrnn.fused.contract import Engine, InputKernels, StreamKernels

    engines = [torch_engine] + ([native.engine()] if native.load() is not None else [])
    for eng in engines:
        assert isinstance(eng, Engine), eng
        assert isinstance(eng, StreamKernels) == eng.has_stream, eng.name
        assert isinstance(eng, InputKernels) == eng.has_input_kernels, eng.name
