"""The project's copy of the data manifest: expected sha256 and size of every downloadable file."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class ManifestEntry:
    set: str  # "kodak24", "bsd300/test", "bsd300/train", "bsd300"
    relative_path: str  # relative to the data directory, e.g. "kodak24/kodim01.png"
    nbytes: int
    sha256: str


@lru_cache(maxsize=1)
def manifest() -> dict[str, ManifestEntry]:
    """relative_path → entry, read from n2n_core/data/checksums.tsv (a copy of MANIFEST.tsv)."""
    text = resources.files("n2n_core.data").joinpath("checksums.tsv").read_text()
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    return {
        r["relative_path"]: ManifestEntry(r["set"], r["relative_path"], int(r["bytes"]), r["sha256"])
        for r in rows
    }


def entries_for(set_name: str) -> list[ManifestEntry]:
    """Entries whose manifest `set` column equals set_name, sorted by path."""
    return sorted((e for e in manifest().values() if e.set == set_name), key=lambda e: e.relative_path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streamed sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
