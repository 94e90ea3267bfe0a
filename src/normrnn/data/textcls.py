"""Text classification datasets as variable-length token-id sequences.

Every split is a :class:`LabelledSequences`: a list of ``int64 [L_i]`` id tensors
plus ``int64 [N]`` labels.  The :class:`TokenVocab` is built on the training
split only (``<pad>`` = 0, ``<unk>`` = 1, then tokens by decreasing frequency,
ties alphabetical).  Tokens are lower-cased words and punctuation
(``level="word"``) or characters (``level="char"``).

Splits (all deterministic):
  * wordnet, spam, single TSV file: stratified per class, the examples of each
    class shuffled with ``seed`` (default 0): ``floor(10%)`` valid, ``floor(10%)``
    test, rest train (so every class with an example is seen in training);
  * brown-genre: split by *document* (no document in two splits): per genre the
    documents are shuffled with ``seed``, ``max(1, round(10%))`` go to valid and
    to test when the genre has >= 3 documents;
  * TSV directory: ``train.tsv`` / ``valid.tsv`` (or ``dev.tsv``) / ``test.tsv``.
    Classes in valid/test that never occur in train raise ValueError naming them.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from . import registry
from ._io import iter_files, local_root
from .batching import pad_sequences
from .brown import read_brown

__all__ = ["TokenVocab", "LabelledSequences", "TextClassification", "load_text_classification",
           "tokenize", "WORDNET_LEXNAMES"]

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[^\w\s]", re.UNICODE)

WORDNET_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
_WN_POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
_WN_DIR = "usr/share/wordnet"
_WN_FILES = [f"data.{p}" for p in ("noun", "verb", "adj", "adv")]


def tokenize(text: str, level: str = "word") -> list[str]:
    """Lower-cased word/punctuation tokens, or characters for ``level="char"``."""
    if level == "char":
        return list(text)
    if level != "word":
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    return _TOKEN.findall(text.lower())


class TokenVocab:
    """``<pad>`` = 0, ``<unk>`` = 1, then tokens by decreasing training frequency."""

    pad_id, unk_id = 0, 1

    def __init__(self, tokens: Sequence[str]):
        self.itos = [PAD, UNK] + [t for t in tokens if t not in (PAD, UNK)]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def build(cls, docs: Sequence[Sequence[str]], min_freq: int = 1, max_size: int | None = None) -> "TokenVocab":
        counts = Counter(t for d in docs for t in d)
        items = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            items = items[: max(max_size - 2, 0)]
        return cls(items)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> torch.Tensor:
        get = self.stoi.get
        return torch.tensor([get(t, 1) for t in tokens], dtype=torch.int64)

    def decode(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        return [self.itos[int(i)] for i in ids]


@dataclass
class LabelledSequences:
    """``seqs[i]``: ``int64 [L_i]`` token ids; ``labels``: ``int64 [N]``."""

    seqs: list[torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.seqs[i], self.labels[i]

    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(s) for s in self.seqs], dtype=torch.int64)

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ids [B, T_max] padded with 0, lengths int64 [B], labels int64 [B])``."""
        padded, lengths = pad_sequences([self.seqs[int(i)] for i in idx])
        return padded, lengths, self.labels[idx]


@dataclass
class TextClassification:
    name: str
    train: LabelledSequences
    valid: LabelledSequences
    test: LabelledSequences
    vocab: TokenVocab
    classes: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"TextClassification({self.name!r}, train={len(self.train)}, valid={len(self.valid)}, "
                f"test={len(self.test)}, vocab={len(self.vocab)}, classes={self.n_classes})")


Example = tuple[str, str]  # (label, text)


# ----------------------------------------------------------------------------- splitting


def _perm(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def stratified_split(examples: list[Example], seed: int = 0) -> tuple[list[Example], ...]:
    """Per class: shuffle with ``seed``, floor(10%) valid, floor(10%) test, rest train."""
    by_label: dict[str, list[Example]] = {}
    for ex in examples:
        by_label.setdefault(ex[0], []).append(ex)
    out: tuple[list[Example], ...] = ([], [], [])
    for i, label in enumerate(sorted(by_label)):
        group = by_label[label]
        group = [group[j] for j in _perm(len(group), seed + i)]
        k = len(group) // 10
        out[1].extend(group[:k])
        out[2].extend(group[k : 2 * k])
        out[0].extend(group[2 * k :])
    return tuple([s[j] for j in _perm(len(s), seed)] for s in out)


# ----------------------------------------------------------------------------- readers


def _wordnet_examples(root: Path, label: str) -> list[Example]:
    if label not in ("lexname", "pos"):
        raise ValueError(f"wordnet label must be 'lexname' (45 classes) or 'pos' (4 classes), got {label!r}")
    examples = []
    for fname in _WN_FILES:
        hits = sorted(root.rglob(fname)) if not (root / fname).is_file() else [root / fname]
        if not hits:
            raise ValueError(f"{root}: no WordNet {fname} found")
        for line in hits[0].read_text("utf-8", "replace").splitlines():
            if not line or line.startswith("  ") or " | " not in line:
                continue  # licence header lines start with two spaces
            fields, gloss = line.split(" | ", 1)
            parts = fields.split()
            lex, pos = int(parts[1]), parts[2]
            tag = WORDNET_LEXNAMES[lex] if label == "lexname" else _WN_POS[pos]
            examples.append((tag, gloss.strip()))
    return examples


def _html_to_text(html: str) -> str:
    html = re.sub(r"(?is)<(script|style).*?</\1>", " ", html)
    html = re.sub(r"(?s)<[^>]+>", " ", html)
    return re.sub(r"&nbsp;|&#160;", " ", html)


def email_text(raw: bytes, keep_headers: bool = False) -> str:
    """Subject plus the text/plain and (tag-stripped) text/html parts of an RFC 822 message."""
    if keep_headers:
        return raw.decode("utf-8", "replace")
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    parts = [str(msg.get("Subject", ""))]
    for part in msg.walk():
        ctype = part.get_content_type()
        if part.is_multipart() or ctype not in ("text/plain", "text/html"):
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:  # noqa: BLE001 - malformed encodings in real spam
            payload = str(part.get_payload()).encode("utf-8", "replace")
        charset = part.get_content_charset() or "latin-1"
        try:
            text = payload.decode(charset, "replace")
        except LookupError:
            text = payload.decode("latin-1", "replace")
        parts.append(_html_to_text(text) if ctype == "text/html" else text)
    return "\n".join(parts)


_SPAM_FILE = re.compile(r"(?:^|/)data/((?:easy-|hard-)?ham|spam)-\d+/[^/]+\.txt$")


def _spam_examples(path: Path, keep_headers: bool) -> list[Example]:
    examples = []
    for rel, raw in iter_files(path, lambda n: bool(_SPAM_FILE.search(n))):
        m = _SPAM_FILE.search(rel)
        assert m is not None
        examples.append(("spam" if m.group(1) == "spam" else "ham", email_text(raw, keep_headers)))
    if not examples:
        raise ValueError(f"{path}: no data/<group>/*.txt emails found (SpamAssassin npm layout)")
    return examples


def _brown_genre_splits(path: Path, seed: int) -> tuple[list[Example], ...]:
    docs, genres = read_brown(path)
    missing = sorted(d for d in docs if d not in genres)
    if missing:
        raise ValueError(f"{path}: cats.txt has no genre for documents {missing[:10]}")
    by_genre: dict[str, list[str]] = {}
    for doc in docs:
        by_genre.setdefault(genres[doc], []).append(doc)
    out: tuple[list[Example], ...] = ([], [], [])
    for i, genre in enumerate(sorted(by_genre)):
        ids = [by_genre[genre][j] for j in _perm(len(by_genre[genre]), seed + i)]
        k = max(1, round(len(ids) * 0.1)) if len(ids) >= 3 else 0
        for split, chunk in ((1, ids[:k]), (2, ids[k : 2 * k]), (0, ids[2 * k :])):
            out[split].extend((genre, s) for d in sorted(chunk) for s in docs[d])
    return out


def read_tsv(path: Path) -> list[Example]:
    """``label<TAB>text`` per non-empty line (UTF-8)."""
    try:
        lines = Path(path).read_text("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 ({exc})") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise ValueError(f"{path}:{n}: expected 'label<TAB>text', got {line[:60]!r}")
        label, text = line.split("\t", 1)
        out.append((label.strip(), text))
    if not out:
        raise ValueError(f"{path}: no examples (empty file)")
    return out


def _tsv_splits(path: Path, seed: int) -> tuple[list[Example], ...]:
    if path.is_file():
        return stratified_split(read_tsv(path), seed)
    valid = path / "valid.tsv" if (path / "valid.tsv").is_file() else path / "dev.tsv"
    files = [path / "train.tsv", valid, path / "test.tsv"]
    if not all(f.is_file() for f in files):
        raise ValueError(f"{path}: expected train.tsv, valid.tsv (or dev.tsv) and test.tsv")
    return tuple(read_tsv(f) for f in files)


# ----------------------------------------------------------------------------- public loader


def load_text_classification(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    label: str | None = None,
    level: str = "word",
    min_freq: int = 1,
    max_vocab: int | None = None,
    max_tokens: int | None = None,
    seed: int = 0,
    keep_headers: bool = False,
) -> TextClassification:
    """Load ``"wordnet"``, ``"brown-genre"``, ``"spam"`` or a labelled TSV file/directory.

    ``label``: for wordnet, ``"lexname"`` (default, 45 classes) or ``"pos"`` (4).
    ``max_tokens`` truncates every sequence; ``keep_headers`` keeps the full raw
    email for spam (default: subject + body text).  Classes are sorted names;
    label id = index in ``classes``.  Raises ValueError for an empty file or
    classes in valid/test unseen in training.
    """
    key = os.fspath(name_or_path)
    if key in registry.DATASETS:
        registry.get_dataset_of_kind(key, "textcls", "a text-classification dataset")
        if label is not None and key != "wordnet":
            raise ValueError(f"label= only applies to wordnet, not {key!r}")
        if key == "wordnet":
            root = registry.ensure_extracted(key, [f"{_WN_DIR}/{f}" for f in _WN_FILES], data_dir)
            splits = stratified_split(_wordnet_examples(root / _WN_DIR, label or "lexname"), seed)
        elif key == "brown-genre":
            splits = _brown_genre_splits(registry.ensure_artifact(key, data_dir), seed)
        else:
            splits = stratified_split(_spam_examples(registry.ensure_artifact(key, data_dir), keep_headers), seed)
        name = key if key != "wordnet" else f"wordnet-{label or 'lexname'}"
    else:
        path = registry.local_path(key)
        name = path.stem
        if path.suffix in (".tsv", ".txt") or (path.is_dir() and (path / "train.tsv").is_file()):
            splits = _tsv_splits(path, seed)
        elif path.suffix == ".deb" or (path.is_dir() and any(path.rglob("data.noun"))):
            with local_root(path) as root:
                splits = stratified_split(_wordnet_examples(root, label or "lexname"), seed)
        elif any(str(path).endswith(s) for s in (".tgz", ".tar.gz")) or path.is_dir():
            import tarfile

            if path.is_file():
                with tarfile.open(path) as tar:
                    names = tar.getnames()
            else:
                names = [p.name for p in path.rglob("cats.txt")]
            if any(n.endswith("cats.txt") for n in names):
                splits = _brown_genre_splits(path, seed)
            else:
                splits = stratified_split(_spam_examples(path, keep_headers), seed)
        else:
            splits = _tsv_splits(path, seed)
    return _encode(name, splits, level, min_freq, max_vocab, max_tokens)


def _encode(name: str, splits: tuple[list[Example], ...], level: str, min_freq: int,
            max_vocab: int | None, max_tokens: int | None) -> TextClassification:
    train, valid, test = splits
    if not train:
        raise ValueError(f"{name}: the training split is empty")
    classes = sorted({lab for lab, _ in train})
    unseen = sorted({lab for s in (valid, test) for lab, _ in s} - set(classes))
    if unseen:
        raise ValueError(f"{name}: classes {unseen} occur in valid/test but not in train "
                         f"(training classes: {classes})")
    cls_id = {c: i for i, c in enumerate(classes)}
    def toks_of(text: str) -> list[str]:
        toks = tokenize(text, level)[:max_tokens] if max_tokens else tokenize(text, level)
        return toks or [UNK]  # never a zero-length sequence (packed RNNs reject them)

    tok = [[toks_of(t) for _, t in s] for s in (train, valid, test)]
    vocab = TokenVocab.build(tok[0], min_freq, max_vocab)
    parts = [
        LabelledSequences([vocab.encode(t) for t in toks],
                          torch.tensor([cls_id[lab] for lab, _ in exs], dtype=torch.int64))
        for toks, exs in zip(tok, (train, valid, test))
    ]
    return TextClassification(name, parts[0], parts[1], parts[2], vocab, classes)
