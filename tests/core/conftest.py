"""The core tests' hook for tests that need the native kernels (``@pytest.mark.native``, or the engine
parametrisation of native_support.ENGINES): skipped with a reason where no toolchain exists, failed with the
build error where one does."""
import pytest

from native_support import require_native


def pytest_configure(config):
    config.addinivalue_line("markers", "native: needs the native C++ kernels (fails if a toolchain cannot build them)")


@pytest.fixture
def stream_calls(monkeypatch):
    """The step index of every ``step`` call that took the one-call streaming kernel (a whole stack per call)."""
    import normrnn.layers

    calls = []
    original = normrnn.layers.fused_stream_step

    def spy(plan, x, hx, step):
        result = original(plan, x, hx, step)
        if result is not None:
            calls.append(step)
        return result

    monkeypatch.setattr(normrnn.layers, "fused_stream_step", spy)
    return calls


@pytest.fixture(autouse=True)
def _native_kernels_present(request):
    if request.node.get_closest_marker("native") is not None:
        require_native()
