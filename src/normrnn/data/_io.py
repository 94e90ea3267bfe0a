"""Uniform reading of files inside directories, tarballs, zip/wheel files and .deb packages."""

from __future__ import annotations

import contextlib
import gzip
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterator

from .fetchers import deb_extract


def is_tar(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith((".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2"))


def is_zip(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".zip", ".whl")


def iter_files(path: Path, keep: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """Yield ``(relative_posix_path, content)`` for files under ``path`` accepted by ``keep``.

    ``path`` may be a directory, a tar archive (any compression) or a zip/wheel.
    Files are yielded in sorted path order so that results are deterministic.
    """
    path = Path(path)
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            rel = f.relative_to(path).as_posix()
            if keep(rel):
                yield rel, f.read_bytes()
    elif is_tar(path):
        with tarfile.open(path, "r:*") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and keep(m.name)),
                             key=lambda m: m.name)
            for m in members:
                fh = tar.extractfile(m)
                assert fh is not None
                yield m.name, fh.read()
    elif is_zip(path):
        with zipfile.ZipFile(path) as zf:
            for name in sorted(n for n in zf.namelist() if not n.endswith("/") and keep(n)):
                yield name, zf.read(name)
    else:
        raise ValueError(f"{path}: expected a directory, a tar archive or a zip/wheel file")


def read_maybe_gzip(path: Path) -> bytes:
    """File content, transparently gunzipped when it starts with the gzip magic (``.gz``, ``.dz``)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return Path(path).read_bytes()


@contextlib.contextmanager
def local_root(path: Path) -> Iterator[Path]:
    """A directory view of ``path``: itself if a directory, else a ``.deb`` extracted to a temp dir."""
    path = Path(path)
    if path.is_file() and path.suffix == ".deb":
        with tempfile.TemporaryDirectory(prefix="normrnn-deb-") as tmp:
            deb_extract(path, Path(tmp))
            yield Path(tmp)
    else:
        yield path


def find_file(root: Path, names: list[str]) -> Path | None:
    """First file under ``root`` (searched recursively) whose name is in ``names`` (in order)."""
    for name in names:
        direct = root / name
        if direct.is_file():
            return direct
    for name in names:
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    return None
