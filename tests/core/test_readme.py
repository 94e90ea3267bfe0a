"""The README's example must run as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_example_runs():
    code = re.search(r"## Example\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["out"].shape == (8, 20, 64)
    assert (namespace["out"][7, 1:] == 0).all()  # past the last sequence's single step


def test_readme_export_example_runs(tmp_path, monkeypatch):
    import pytest

    pytest.importorskip("onnxscript")
    code = re.search(r"## Export \(deployment\)\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "lstm_step.onnx").stat().st_size > 0
