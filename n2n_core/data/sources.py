"""What each downloadable set is: where it comes from, which files it holds, their sha256.

The packaged table ``checksums.tsv`` (columns: set, relative_path, width, height, bytes, sha256;
tab-separated) is read here and nowhere else. A file is named by its path relative to the data
directory (``kodak24/kodim01.png``); a set's files are the rows under its local prefixes.

Sources (``SOURCES``), one per set name:

* ``kodak24``: the 24 PNGs of the Kodak Lossless True Color Image Suite, one request per image,
  from Rich Franzen's host ``http://r0k.us/graphics/kodak/kodak/kodimNN.png``.
* ``bsd300`` (100 test images and ``iids_test.txt``) and ``bsd300-train`` (200 train images):
  the BSDS300 image archive from UC Berkeley, ``BSDS300-images.tgz``. Its members
  ``BSDS300/images/{test,train}/<id>.jpg`` and ``BSDS300/iids_test.txt`` map to ``bsd300/test/``,
  ``bsd300/train/`` and ``bsd300/iids_test.txt``. An id list with the same ids in another order
  or with other line endings counts as valid (``SetSource.id_lists``); one the archive lacks is
  written from the verified test images.
* ``set14``: the 14 high-resolution images of the ``eugenesiow/Set14`` Hugging Face data set
  (pinned commit), archive ``Set14_HR.tar.gz``, members ``Set14_HR/<name>.png`` → ``set14/``.
  n2n-bench keeps no checksums for them (``verified=False``): only their presence is checked.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath

from ..errors import ConfigError, DataError

CHECKSUM_FILE = "checksums.tsv"


@dataclass(frozen=True)
class SetSource:
    """Where one set comes from and how upstream names map to data-directory paths.

    ``paths`` pairs a local prefix (a folder ending in ``/`` or one exact file) with the remote
    name that replaces it: for a per-file source the remote name is appended to the base URL, for
    an archive source it is the member name inside ``archive``.
    """

    name: str
    folder: str  # data-directory folder the set fills (what download_set returns)
    base_url: str  # canonical location; a mirror replaces it
    paths: tuple[tuple[str, str], ...]
    archive: str | None = None  # file name under base_url; None: one request per file
    verified: bool = True
    expected: tuple[str, ...] = ()  # unverified sets: the files whose presence means "done"
    id_lists: Mapping[str, str] = field(default_factory=dict)  # id list path -> image folder
    homepage: str = ""

    def remote_name(self, relative_path: str) -> str | None:
        for local, remote in self.paths:
            if local.endswith("/") and relative_path.startswith(local):
                return remote + relative_path[len(local):]
            if relative_path == local:
                return remote
        return None

    def local_name(self, remote_name: str) -> str | None:
        for local, remote in self.paths:
            if remote.endswith("/") and remote_name.startswith(remote):
                return local + remote_name[len(remote):]
            if remote_name == remote:
                return local
        return None

    def url(self, remote_name: str, mirror: str | None = None) -> str:
        return (mirror or self.base_url).rstrip("/") + "/" + remote_name


_BSDS_BASE = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds"
_SET14_NAMES = ("baboon", "barbara", "bridge", "coastguard", "comic", "face", "flowers",
                "foreman", "lenna", "man", "monarch", "pepper", "ppt3", "zebra")

SOURCES: Mapping[str, SetSource] = {
    "kodak24": SetSource(
        "kodak24", "kodak24", "http://r0k.us/graphics/kodak/kodak", (("kodak24/", ""),),
        homepage="http://r0k.us/graphics/kodak/",
    ),
    "bsd300": SetSource(
        "bsd300", "bsd300", _BSDS_BASE,
        (("bsd300/test/", "BSDS300/images/test/"), ("bsd300/iids_test.txt", "BSDS300/iids_test.txt")),
        archive="BSDS300-images.tgz", id_lists={"bsd300/iids_test.txt": "bsd300/test/"},
        homepage=_BSDS_BASE + "/",
    ),
    "bsd300-train": SetSource(
        "bsd300-train", "bsd300/train", _BSDS_BASE, (("bsd300/train/", "BSDS300/images/train/"),),
        archive="BSDS300-images.tgz", homepage=_BSDS_BASE + "/",
    ),
    "set14": SetSource(
        "set14", "set14",
        "https://huggingface.co/datasets/eugenesiow/Set14/resolve/"
        "5c964717e61b4931236a6dd5561750d11e5a7abb/data",
        (("set14/", "Set14_HR/"),), archive="Set14_HR.tar.gz", verified=False,
        expected=tuple(f"set14/{n}.png" for n in _SET14_NAMES),
        homepage="https://huggingface.co/datasets/eugenesiow/Set14",
    ),
}
SET_NAMES: tuple[str, ...] = tuple(SOURCES)
VERIFIED_SETS: tuple[str, ...] = tuple(n for n, s in SOURCES.items() if s.verified)


def source(name: str) -> SetSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(SET_NAMES)}") from None


# --------------------------------------------------------------------------- the checksum table


def load_checksums(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """relative_path -> sha256 from a checksum table (default: the packaged one, read once)."""
    if path is None:
        return dict(_packaged())
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"checksum table {path} is unreadable ({err}); pass a valid path") from None
    return _parse(text, str(path))


@lru_cache(maxsize=1)
def _packaged() -> dict[str, str]:
    text = resources.files(__package__).joinpath(CHECKSUM_FILE).read_text(encoding="utf-8")
    return _parse(text, f"{__package__}/{CHECKSUM_FILE}")


def _parse(text: str, where: str) -> dict[str, str]:
    table: dict[str, str] = {}
    for row in csv.DictReader(text.splitlines(), delimiter="\t"):
        rel, digest = (row.get("relative_path") or "").strip(), (row.get("sha256") or "").strip()
        if not rel or len(digest) != 64:
            raise DataError(
                f"checksum table {where} has a bad row {row!r}; it needs the columns "
                "set, relative_path, width, height, bytes, sha256 (tab-separated)"
            )
        table[rel] = digest.lower()
    return table


def set_files(name: str, checksums: Mapping[str, str] | None = None) -> dict[str, str]:
    """The files of a set, relative_path -> sha256, sorted by path (empty for set14)."""
    src = source(name)
    table = load_checksums() if checksums is None else checksums
    return {rel: d.lower() for rel, d in sorted(table.items()) if src.remote_name(rel) is not None}


def files_under(folder: str) -> dict[str, str]:
    """The packaged table's files in ``folder`` (e.g. ``bsd300/test``), sorted by path."""
    prefix = folder.rstrip("/") + "/"
    return {rel: d for rel, d in sorted(_packaged().items()) if rel.startswith(prefix)}


# --------------------------------------------------------------------------- files on disk


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Streamed sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike[str], sha256: str) -> bool:
    """True when ``path`` is a regular file whose sha256 is ``sha256``."""
    try:
        return Path(path).is_file() and sha256_file(path) == sha256.lower()
    except OSError:
        return False


def id_list_bytes(src: SetSource, list_path: str, files: Mapping[str, str]) -> bytes:
    """An id list written from the set's image names: one id a line, numeric order."""
    folder = src.id_lists[list_path]
    ids = sorted((PurePosixPath(r).stem for r in files if r.startswith(folder)), key=lambda s: (len(s), s))
    return "".join(f"{i}\n" for i in ids).encode()


def id_list_ok(path: Path, expected: bytes) -> bool:
    """The same ids as ``expected``, in any order, with any line endings."""
    try:
        return sorted(path.read_bytes().split()) == sorted(expected.split())
    except OSError:
        return False


def verify_set(
    name: str, data_dir: str | os.PathLike[str], *, checksums: Mapping[str, str] | None = None
) -> list[str]:
    """Relative paths of the set's files that are missing or fail their checksum (empty: all good).

    For an unverified set (set14) only the presence of the expected files is checked.
    """
    src, root = source(name), Path(data_dir)
    if not src.verified:
        return [rel for rel in src.expected if not (root / rel).is_file()]
    files = set_files(name, checksums)
    return [
        rel for rel, digest in files.items()
        if not verify_file(root / rel, digest)
        and not (rel in src.id_lists and id_list_ok(root / rel, id_list_bytes(src, rel, files)))
    ]
