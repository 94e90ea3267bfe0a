"""Checking the user's own data (``--text``, ``--labelled``, ``--images``) before a study starts, so that a file
that does not fit fails at once with what is wrong, not an hour later inside a claim.

Each file is loaded with the loader the claims use, and held to what the claims need: a char-LM corpus long enough
for every char-LM claim's batches and C2's 8×-length validation sequences; a labelled TSV with at least two classes
and examples in every split; an IDX folder (or MNIST-style CSV) of 28×28 images that every image claim can read.
"""
from __future__ import annotations

from pathlib import Path

MIN_TEXT_CHARS = 100_000  # C2's and C6's batches at every profile, and validation sequences of 8 × 50 characters
MIN_LABELLED = 100  # examples: a stratified split with something in valid and test


class OwnDataError(ValueError):
    """A user's file that the study cannot use, with the reason."""


def check_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise OwnDataError(f"--text {path}: not a file (expected a plain UTF-8 text file)")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise OwnDataError(f"--text {path}: not UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r}); convert it "
                           f"first, e.g. iconv -t UTF-8") from None
    if len(text) < MIN_TEXT_CHARS:
        raise OwnDataError(f"--text {path}: {len(text):,} characters; the char-LM claims need at least "
                           f"{MIN_TEXT_CHARS:,} (a few hundred KB to a few MB of text)")
    from ..data import load_charlm

    corpus = load_charlm(str(p))
    return f"{len(corpus.train):,} training characters, vocabulary {len(corpus.vocab)}"


def check_labelled(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise OwnDataError(f"--labelled {path}: no such file")
    if p.is_file():
        bad = [i + 1 for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines())
               if line.strip() and "\t" not in line]
        if bad:
            raise OwnDataError(f"--labelled {path}: line {bad[0]} has no tab ({len(bad)} such lines); expected "
                               f"'label<TAB>text' per line")
    from ..data.textcls import load_text_classification

    try:
        data = load_text_classification(str(p))
    except ValueError as e:
        raise OwnDataError(f"--labelled {path}: {e}") from None
    n = len(data.train) + len(data.valid) + len(data.test)
    if data.n_classes < 2:
        raise OwnDataError(f"--labelled {path}: {data.n_classes} class; a classifier needs at least 2")
    if n < MIN_LABELLED or not len(data.valid) or not len(data.test):
        raise OwnDataError(f"--labelled {path}: {n} examples ({len(data.valid)} valid, {len(data.test)} test); "
                           f"the classification claims need at least {MIN_LABELLED} and some in every split")
    return f"{n:,} examples in {data.n_classes} classes"


def check_images(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise OwnDataError(f"--images {path}: no such file or directory (expected a folder of MNIST-style IDX "
                           f"files: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                           f"t10k-labels-idx1-ubyte, gz or not; or an mnist_5k-style CSV)")
    from ..data.images import load_image_sequences

    try:
        data = load_image_sequences(str(p), mode="row")
    except (ValueError, KeyError, OSError) as e:
        if "number of training images" in str(e):  # a small set: the trainer holds out a tenth instead
            n = int(str(e).rsplit(" ", 1)[-1])
            data = load_image_sequences(str(p), mode="row", n_valid=max(1, n // 10))
        else:
            raise OwnDataError(f"--images {path}: {type(e).__name__}: {e}") from None
    shape = tuple(data.train.x.shape[1:])
    if shape != (28, 28):
        raise OwnDataError(f"--images {path}: images read as {shape[0]} rows of {shape[1]} pixels; the image claims "
                           f"need 28×28 (C11's CNN pools to a 7×7 map)")
    return f"{len(data.train):,} training images, {data.n_classes} classes"


def check_own_data(text=None, labelled=None, images=None) -> dict[str, str]:
    """Check every file given; {flag: what was found}. Raises :class:`OwnDataError` on the first that does not fit."""
    out = {}
    if text:
        out["text"] = check_text(text)
    if labelled:
        out["labelled"] = check_labelled(labelled)
    if images:
        out["images"] = check_images(images)
    return out
