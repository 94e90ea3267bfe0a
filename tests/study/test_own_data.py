"""``--text``, ``--labelled``, ``--images``: every claim that uses that kind of data runs on a corpus of that kind
(plain UTF-8 text, a TSV of 20 classes, an IDX folder of a few thousand images), and a file that does not fit fails
at once with a clear error."""
import gzip
import random
import struct

import numpy as np
import pytest

from normrnn.cli import main
from normrnn.study import StudyContext, run_study
from normrnn.study.owndata import OwnDataError, check_own_data

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing and every river runs "
         "to the sea under pale stars").split()
TEXT_CLAIMS = ["C2", "C4", "C6", "C8", "C10a", "C10c", "C12"]
LABELLED_CLAIMS = ["C5"]
IMAGE_CLAIMS = ["C1", "C11"]


def write_text(path, chars=120_000):
    rng = random.Random(0)
    out = []
    while sum(map(len, out)) < chars:
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + ".\n")
    path.write_text("".join(out), encoding="utf-8")
    return path


def write_tsv(path, classes=20, per_class=12):
    rng = random.Random(1)
    lines = [f"class{c}\tword{c} " + " ".join(rng.choice(WORDS) for _ in range(6)) + f" word{c}b\n"
             for c in range(classes) for _ in range(per_class)]
    rng.shuffle(lines)
    path.write_text("".join(lines), encoding="utf-8")
    return path


def write_idx(folder, train=3000, test=500, side=28, gz=True):
    folder.mkdir()
    rng = np.random.default_rng(2)

    def images(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, side, side)).astype(np.uint8)
        for i, label in enumerate(y):  # a class-dependent bright row, so there is something to learn
            x[i, (2 + 2 * int(label)) % side] = 250
        return x, y

    for prefix, n in (("train", train), ("t10k", test)):
        x, y = images(n)
        data = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 2051, n, side, side) + x.tobytes(),
                f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 2049, n) + y.tobytes()}
        for name, blob in data.items():
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return folder


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return {"text": str(write_text(root / "corpus.txt")), "labelled": str(write_tsv(root / "labels.tsv")),
            "images": str(write_idx(root / "idx"))}


def test_own_files_pass_the_check(own):
    found = check_own_data(**own)
    assert "20 classes" in found["labelled"] and "training images" in found["images"]


def test_every_claim_of_each_kind_reads_own_data(own):
    """Every claim of each kind trains on the user's file (its plans name it), none on a built-in set."""
    from normrnn.study.claims import load_claims

    ctx = StudyContext(profile="smoke", seeds=1, progress=False, **own)
    for ids, kind in ((TEXT_CLAIMS, "text"), (LABELLED_CLAIMS, "labelled"), (IMAGE_CLAIMS, "images")):
        for claim in load_claims(ids):
            plans = [p for e in claim.experiments(ctx) for p in claim.train_plans(e, ctx)]
            assert plans and {p.cfg.data for p in plans} == {own[kind]}, (claim.id, {p.cfg.data for p in plans})
            assert own[kind].rsplit("/", 1)[-1] in claim.describe_setup(ctx) + claim.scale_text(ctx), claim.id


def test_one_claim_of_each_kind_runs_end_to_end_on_own_data(own, tmp_path):
    ctx = StudyContext(profile="smoke", seeds=1, progress=False, **own)
    results, _ = run_study(ctx, tmp_path, ["C6", "C5", "C1"])
    failed = {r.claim.id: rec.result["error"] for r in results for rec in r.records if "error" in rec.result}
    assert not failed, failed


@pytest.mark.parametrize("kind, make, message", [
    ("text", lambda p: p.write_bytes(b"caf\xe9 " * 30_000), "not UTF-8"),
    ("text", lambda p: p.write_text("short text\n"), "characters; the char-LM claims need at least"),
    ("labelled", lambda p: p.write_text("a label and text without a tab\n" * 200), "has no tab"),
    ("labelled", lambda p: p.write_text("only\tone class here\n" * 200), "class"),
    ("images", lambda p: write_idx(p, train=300, test=50, side=20, gz=False), "28×28"),
])
def test_files_that_do_not_fit_fail_clearly(kind, make, message, tmp_path, capsys):
    path = tmp_path / ("data" if kind == "images" else f"data.{'tsv' if kind == 'labelled' else 'txt'}")
    make(path)
    with pytest.raises(OwnDataError, match=message):
        check_own_data(**{kind: str(path)})
    with pytest.raises(SystemExit) as e:
        main(["study", "--profile", "smoke", f"--{kind}", str(path), "--out", str(tmp_path / "out"), "--only", "C9"])
    assert message.split(";")[0] in str(e.value)
