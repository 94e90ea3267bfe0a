"""The native kernels build wherever a C++ toolchain exists: a broken build fails the suite instead of quietly
dropping the native half of the engine tests (and making backend="auto" run the reference loop)."""
import pytest

import normrnn
from normrnn import fused
from native_support import toolchain_missing


@pytest.mark.native
def test_native_kernels_build_where_a_toolchain_exists():
    assert fused.native.load() is not None and fused.native.failure() is None
    assert normrnn.LSTM(3, 4).active_backend() == "fused-native"  # auto picks them


def test_without_a_toolchain_the_native_tests_say_why(monkeypatch):
    monkeypatch.setenv("NORMRNN_NATIVE", "0")
    assert "NORMRNN_NATIVE=0" in toolchain_missing()
    monkeypatch.delenv("NORMRNN_NATIVE")
    monkeypatch.setenv("CXX", "no-such-compiler-normrnn")
    assert "no C++ compiler" in toolchain_missing()
