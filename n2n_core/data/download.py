"""Download the evaluation sets into a data directory, verified file by file.

Every file of a verified set has its sha256 in the packaged table ``checksums.tsv`` (columns: set,
relative_path, width, height, bytes, sha256). A file is written to a hidden temporary name inside
its final folder, hashed while it streams, and only moved to its final name (``os.replace``) when
the hash matches. A mismatch deletes the temporary file and raises :class:`DataError` with the
file, both hashes and the fix. Files already present with the right hash are not fetched again,
so running a download twice makes no request the second time.

Sources (``SOURCES``), one per set name:

* ``kodak24``: the 24 PNGs of the Kodak Lossless True Color Image Suite, one request per image,
  from Rich Franzen's host ``http://r0k.us/graphics/kodak/kodak/kodimNN.png``.
* ``bsd300`` (100 test images and ``iids_test.txt``) and ``bsd300-train`` (200 train images):
  the BSDS300 image archive from UC Berkeley, ``BSDS300-images.tgz``. It unpacks to
  ``BSDS300/images/{test,train}/<id>.jpg`` and ``BSDS300/iids_{test,train}.txt``; those members
  are mapped to ``bsd300/test/``, ``bsd300/train/`` and ``bsd300/iids_test.txt``. Should an
  archive lack ``iids_test.txt``, it is written from the verified test images (one id a line,
  numeric order): the same ids, not the same bytes as the official list, and accepted as valid
  on that basis (see ``SetSource.id_lists``).
* ``set14``: the 14 high-resolution images from the ``eugenesiow/Set14`` Hugging Face data set
  (pinned commit), archive ``Set14_HR.tar.gz`` with members ``Set14_HR/<name>.png`` mapped to
  ``set14/<name>.png``. n2n-bench has no checksums for these, so the download is refused unless
  the caller passes ``allow_unverified=True`` (CLI: ``--allow-unverified``).

A mirror replaces every source's base URL: ``mirror`` argument first, then the ``N2N_MIRROR``
environment variable, then the canonical host. A mirror is a plain HTTP(S) folder holding the
upstream files under their upstream names (``kodim01.png`` … ``kodim24.png``,
``BSDS300-images.tgz``, ``Set14_HR.tar.gz``); the checksums still apply.

Nothing is written outside ``data_dir``; nothing is cached or kept between calls.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import logging
import os
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

import requests
from tqdm.auto import tqdm

from .manifest import sha256_file  # noqa: F401  (re-exported)
from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

MIRROR_ENV = "N2N_MIRROR"
CHECKSUM_FILE = "checksums.tsv"
CHUNK = 1 << 16
TIMEOUT = (15.0, 60.0)  # (connect, read) seconds
ATTEMPTS = 3  # per URL, for connection errors, time-outs, truncated bodies and 5xx answers
USER_AGENT = "n2n-bench (python-requests)"

TMP_PREFIX = ".n2n-"
TMP_SUFFIX = ".part"


@dataclass(frozen=True)
class SetSource:
    """Where one set comes from and how upstream names map to ``data_dir``-relative paths.

    ``paths`` pairs a local prefix (a folder ending in ``/`` or one exact file) with the remote
    name that replaces it: for a per-file source the remote name is appended to the base URL,
    for an archive source it is the member name inside ``archive``. The set's files are the rows
    of the checksum table under one of the local prefixes; an unverified set (``verified=False``)
    instead takes every archive member under a remote folder whose suffix is in ``suffixes``.
    """

    name: str
    folder: str  # data_dir-relative folder the set fills (returned by download_set)
    base_url: str  # canonical location; a mirror replaces it
    paths: tuple[tuple[str, str], ...]
    archive: str | None = None  # file name under base_url; None: one request per file
    verified: bool = True
    suffixes: tuple[str, ...] = (".png",)  # unverified sets only
    expected: tuple[str, ...] = ()  # unverified sets: local paths whose presence means "done"
    id_lists: Mapping[str, str] = field(default_factory=dict)  # id list path -> image folder
    homepage: str = ""
    terms: str = ""

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

    def owns(self, relative_path: str) -> bool:
        return self.remote_name(relative_path) is not None

    def url(self, remote_name: str, mirror: str | None = None) -> str:
        base = mirror if mirror else self.base_url
        return base.rstrip("/") + "/" + remote_name


_BSDS_BASE = "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds"
_BSDS_TERMS = (
    "Corel images; non-commercial research and educational use, cite Martin et al., ICCV 2001"
)
_SET14_NAMES = (
    "baboon", "barbara", "bridge", "coastguard", "comic", "face", "flowers",
    "foreman", "lenna", "man", "monarch", "pepper", "ppt3", "zebra",
)

SOURCES: Mapping[str, SetSource] = {
    "kodak24": SetSource(
        name="kodak24",
        folder="kodak24",
        base_url="http://r0k.us/graphics/kodak/kodak",
        paths=(("kodak24/", ""),),
        homepage="http://r0k.us/graphics/kodak/",
        terms="Kodak Lossless True Color Image Suite (PCD0992), released for unrestricted use",
    ),
    "bsd300": SetSource(
        name="bsd300",
        folder="bsd300",
        base_url=_BSDS_BASE,
        archive="BSDS300-images.tgz",
        paths=(
            ("bsd300/test/", "BSDS300/images/test/"),
            ("bsd300/iids_test.txt", "BSDS300/iids_test.txt"),
        ),
        id_lists={"bsd300/iids_test.txt": "bsd300/test/"},
        homepage=_BSDS_BASE + "/",
        terms=_BSDS_TERMS,
    ),
    "bsd300-train": SetSource(
        name="bsd300-train",
        folder="bsd300/train",
        base_url=_BSDS_BASE,
        archive="BSDS300-images.tgz",
        paths=(("bsd300/train/", "BSDS300/images/train/"),),
        homepage=_BSDS_BASE + "/",
        terms=_BSDS_TERMS,
    ),
    "set14": SetSource(
        name="set14",
        folder="set14",
        base_url=(
            "https://huggingface.co/datasets/eugenesiow/Set14/resolve/"
            "5c964717e61b4931236a6dd5561750d11e5a7abb/data"
        ),
        archive="Set14_HR.tar.gz",
        paths=(("set14/", "Set14_HR/"),),
        verified=False,
        expected=tuple(f"set14/{n}.png" for n in _SET14_NAMES),
        homepage="https://huggingface.co/datasets/eugenesiow/Set14",
        terms="Zeyde et al., Curves and Surfaces 2010; academic use",
    ),
}

SET_NAMES: tuple[str, ...] = tuple(SOURCES)
VERIFIED_SETS: tuple[str, ...] = tuple(n for n, s in SOURCES.items() if s.verified)


# --------------------------------------------------------------------------- checksums


def load_checksums(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Read a checksum table (default: the packaged ``checksums.tsv``): relative_path -> sha256."""
    if path is None:
        text = resources.files(__package__).joinpath(CHECKSUM_FILE).read_text(encoding="utf-8")
        where = f"{__package__}/{CHECKSUM_FILE}"
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as err:
            raise DataError(
                f"checksum table {where} is unreadable ({err}); pass a valid path"
            ) from None
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


def verify_file(path: str | os.PathLike[str], sha256: str) -> bool:
    """True when ``path`` is a regular file whose sha256 is ``sha256``; False otherwise."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        return sha256_file(path) == sha256.lower()
    except OSError:
        return False


def _source(name: str) -> SetSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ConfigError(
            f"unknown data set {name!r}; choose one of {', '.join(SET_NAMES)}"
        ) from None


def set_files(name: str, checksums: Mapping[str, str] | None = None) -> dict[str, str]:
    """The files of a verified set: data_dir-relative path -> sha256 (empty for set14)."""
    src = _source(name)
    table = load_checksums() if checksums is None else checksums
    return {rel: digest.lower() for rel, digest in sorted(table.items()) if src.owns(rel)}


def _id_list_bytes(src: SetSource, list_path: str, files: Mapping[str, str]) -> bytes:
    folder = src.id_lists[list_path]
    ids = sorted(
        (PurePosixPath(rel).stem for rel in files if rel.startswith(folder)),
        key=lambda s: (len(s), s),
    )
    return "".join(f"{i}\n" for i in ids).encode()


def _id_list_ok(path: Path, expected: bytes) -> bool:
    try:
        return sorted(path.read_bytes().split()) == sorted(expected.split())
    except OSError:
        return False


def verify_set(
    name: str, data_dir: str | os.PathLike[str], *, checksums: Mapping[str, str] | None = None
) -> list[str]:
    """Relative paths of the set's files that are missing or fail their checksum (empty: all good).

    For an unverified set (set14) only presence of the expected files is checked.
    """
    src = _source(name)
    root = Path(data_dir)
    if not src.verified:
        return [rel for rel in src.expected if not (root / rel).is_file()]
    files = set_files(name, checksums)
    bad = []
    for rel, digest in files.items():
        if verify_file(root / rel, digest):
            continue
        if rel in src.id_lists and _id_list_ok(root / rel, _id_list_bytes(src, rel, files)):
            continue
        bad.append(rel)
    return bad


# --------------------------------------------------------------------------- HTTP


def _mismatch(
    rel: str, where: str, expected: str, actual: str, src: SetSource, final: Path
) -> DataError:
    return DataError(
        f"checksum mismatch for {rel} (from {where}): expected sha256 {expected}, got {actual}; "
        f"the download was deleted. Run 'n2n-bench download {src.name}' again; if it fails "
        f"again the source now serves different bytes: use --mirror URL (or ${MIRROR_ENV}) "
        f"pointing at a copy of the original files, or put a copy with that sha256 at {final}"
    )


def _http_error(url: str, err: object, src: SetSource) -> DataError:
    return DataError(
        f"could not download {url} ({err}); check the network connection, or use --mirror URL "
        f"(or ${MIRROR_ENV}) pointing at a folder that holds the same file names, or fetch "
        f"{src.name} by hand from {src.homepage}"
    )


@contextmanager
def _temp_file(folder: Path, hint: str) -> Iterator[tuple[Path, IO[bytes]]]:
    """A new hidden file in ``folder``; removed on exit unless it was moved away."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{TMP_PREFIX}{hint}.", suffix=TMP_SUFFIX)
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield path, fh
    finally:
        path.unlink(missing_ok=True)


class _Retry(Exception):
    """A transient server answer (5xx): try again."""


def _fetch(
    session: requests.Session,
    url: str,
    fh: IO[bytes],
    *,
    src: SetSource,
    label: str,
    progress: bool,
) -> str:
    """Stream ``url`` into ``fh`` (truncated first on each attempt); return the body's sha256."""
    last: object = None
    for attempt in range(1, ATTEMPTS + 1):
        fh.seek(0)
        fh.truncate()
        digest = hashlib.sha256()
        try:
            with session.get(url, stream=True, timeout=TIMEOUT) as resp:
                if resp.status_code >= 500:
                    last = f"HTTP {resp.status_code} {resp.reason}"
                    raise _Retry
                if resp.status_code >= 400:
                    raise _http_error(url, f"HTTP {resp.status_code} {resp.reason}", src)
                length = resp.headers.get("Content-Length", "")
                total = int(length) if length.isdigit() else None
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                    disable=not progress, leave=False, file=sys.stderr,
                ) as bar:
                    for chunk in resp.iter_content(CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            fh.flush()
            return digest.hexdigest()
        except _Retry:
            pass
        except (
            requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError
        ) as err:  # refused, reset, slow, or the body ended early
            last = err
        except requests.RequestException as err:  # bad URL, too many redirects, ...
            raise _http_error(url, err, src) from None
        if attempt < ATTEMPTS:
            time.sleep(attempt)
    raise _http_error(url, last, src)


def _session() -> requests.Session:
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    return session


# --------------------------------------------------------------------------- archives


def _member_problem(name: str) -> str | None:
    """Why an archive member name is unsafe as a relative path, or None."""
    if not name or "\x00" in name:
        return "has an empty or NUL-containing name"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return "has an absolute path"
    if ".." in posix.split("/"):
        return "has a '..' path component"
    return None


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


@dataclass
class _Entry:
    name: str  # normalised, '/'-separated, no leading './'
    kind: str  # "file", "dir", "symlink"
    link: str = ""  # symlink target
    open: Callable[[], IO[bytes]] | None = None


def _tar_entries(tf: tarfile.TarFile, root: str) -> Iterator[tuple[str, _Entry | str]]:
    data_filter = getattr(tarfile, "data_filter", None)
    for m in tf.getmembers():
        problem = _member_problem(m.name)
        if problem is None:
            if m.ischr() or m.isblk() or m.isfifo() or not (
                m.isfile() or m.isdir() or m.issym() or m.islnk()
            ):
                problem = "is a device file, FIFO or other special member"
            elif m.islnk():
                tgt = m.linkname.replace("\\", "/")
                if _member_problem(tgt) or not _inside(
                    os.path.normpath(os.path.join(root, tgt)), root
                ):
                    problem = f"is a hard link to {m.linkname!r}, outside the target"
            elif m.issym():
                problem = _symlink_problem(m.name, m.linkname, root)
        if problem is None and data_filter is not None:
            # The standard library's own policy (Python >= 3.11.4), as a second opinion.
            try:
                data_filter(m, root)
            except tarfile.FilterError as err:
                problem = f"is refused by tarfile's data filter ({err})"
        if problem is not None:
            yield m.name, problem
            continue
        name = _normal(m.name)
        if m.isdir():
            yield m.name, _Entry(name, "dir")
        elif m.issym():
            yield m.name, _Entry(name, "symlink", link=m.linkname)
        else:  # regular file or hard link: extractfile resolves a hard link to its data
            yield m.name, _Entry(name, "file", open=lambda m=m: tf.extractfile(m))


def _zip_entries(zf: zipfile.ZipFile, root: str) -> Iterator[tuple[str, _Entry | str]]:
    for info in zf.infolist():
        problem = _member_problem(info.filename)
        mode = info.external_attr >> 16
        kind = "dir" if info.is_dir() else "file"
        link = ""
        if problem is None and info.create_system == 3 and mode:  # unix attributes present
            if stat.S_ISLNK(mode):
                kind = "symlink"
                link = zf.read(info).decode("utf-8", "replace")
                problem = _symlink_problem(info.filename, link, root)
            elif stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                problem = "is a device file, FIFO or other special member"
        if problem is not None:
            yield info.filename, problem
            continue
        yield info.filename, _Entry(
            _normal(info.filename), kind, link=link, open=lambda i=info: zf.open(i)
        )


def _symlink_problem(name: str, target: str, root: str) -> str | None:
    posix = target.replace("\\", "/")
    if not posix or posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return f"is a symlink to {target!r}, an absolute path"
    here = os.path.dirname(os.path.join(root, _normal(name)))
    if not _inside(os.path.normpath(os.path.join(here, posix)), root):
        return f"is a symlink to {target!r}, outside the target"
    return None


def _normal(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts)


def safe_extract(
    archive: str | os.PathLike[str],
    target_dir: str | os.PathLike[str],
    members_filter: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Extract a tar (any compression) or zip archive into ``target_dir``; return the files written.

    ``members_filter(name)`` selects members by their '/'-separated name (default: all). Every
    selected member is checked before anything is written: absolute paths, '..' components,
    symlinks or hard links leading outside ``target_dir``, device files and FIFOs are refused
    with a :class:`DataError` naming the member. For tar files the standard library's
    ``tarfile.data_filter`` is applied as well. Writing never follows a symlink out of
    ``target_dir`` (each destination's real path is checked), and after extraction every created
    symlink is resolved once more; an escape removes what was written and raises. Hard links are
    written as copies; file modes, owners and times from the archive are not applied.
    """
    archive = Path(archive)
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    root = os.path.realpath(target)
    written: list[Path] = []
    links: list[Path] = []
    with ExitStack() as stack:
        try:
            if _is_tar(archive):
                tf = stack.enter_context(tarfile.open(archive))
                entries = _tar_entries(tf, root)
            elif zipfile.is_zipfile(archive):
                zf = stack.enter_context(zipfile.ZipFile(archive))
                entries = _zip_entries(zf, root)
            else:
                raise DataError(
                    f"{archive.name} is not a tar or zip archive (truncated download or an "
                    "error page?); delete it and download again"
                )
            selected: list[_Entry] = []
            for raw_name, entry in entries:
                if members_filter is not None and not members_filter(_normal(raw_name)):
                    continue
                if isinstance(entry, str):
                    raise DataError(
                        f"archive {archive.name}: member {raw_name!r} {entry}; refusing to extract "
                        "it. The archive is damaged or malicious: delete it and get it from the "
                        "official source"
                    )
                if entry.name:
                    selected.append(entry)
        except _ARCHIVE_ERRORS as err:
            raise _bad_archive(archive, err) from None
        try:
            for entry in selected:
                dest = os.path.join(root, entry.name)
                parent = os.path.dirname(dest)
                # Checked before and after creating the folders: a link made by an earlier
                # member must not lead the write (or the new folders) outside the target.
                if not _inside(os.path.realpath(parent), root):
                    raise _escape(archive, entry.name)
                os.makedirs(parent, exist_ok=True)
                if not _inside(os.path.realpath(parent), root):
                    raise _escape(archive, entry.name)
                if entry.kind == "dir":
                    if not os.path.isdir(dest) or os.path.islink(dest):
                        if os.path.lexists(dest):
                            os.unlink(dest)
                        os.mkdir(dest)
                    continue
                if os.path.lexists(dest):
                    if os.path.isdir(dest) and not os.path.islink(dest):
                        raise DataError(
                            f"archive {archive.name}: member {entry.name!r} would replace the "
                            f"folder {dest}; move that folder away and try again"
                        )
                    os.unlink(dest)
                if entry.kind == "symlink":
                    os.symlink(entry.link, dest)
                    links.append(Path(dest))
                    written.append(Path(dest))
                    continue
                assert entry.open is not None
                source = entry.open()
                if source is None:
                    raise _bad_archive(archive, f"member {entry.name!r} has no data")
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                with source, os.fdopen(os.open(dest, flags, 0o644), "wb") as out:
                    written.append(Path(dest))
                    shutil.copyfileobj(source, out, CHUNK)
            for link in links:  # a later member may have changed what an earlier link resolves to
                if not _inside(os.path.realpath(link), root):
                    raise _escape(archive, os.path.relpath(link, root))
        except BaseException as err:
            for path in reversed(written):
                Path(path).unlink(missing_ok=True)
            if isinstance(err, _ARCHIVE_ERRORS):
                raise _bad_archive(archive, err) from None
            raise
    return written


# What a damaged archive raises while it is read (KeyError: a hard link to a missing member).
_ARCHIVE_ERRORS = (
    tarfile.TarError, zipfile.BadZipFile, gzip.BadGzipFile, zlib.error, EOFError, KeyError
)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _escape(archive: Path, name: str) -> DataError:
    return DataError(
        f"archive {archive.name}: member {name!r} resolves outside the target folder through a "
        "symlink; refusing to extract it. The archive is damaged or malicious: delete it and get "
        "it from the official source"
    )


def _bad_archive(archive: Path, err: object) -> DataError:
    return DataError(
        f"archive {archive.name} is damaged ({err}); delete any partial files and download again"
    )


# --------------------------------------------------------------------------- download


def download_set(
    name: str,
    data_dir: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    allow_unverified: bool = False,
    progress: bool = True,
    checksums: Mapping[str, str] | None = None,
) -> Path:
    """Download set ``name`` into ``data_dir`` and return the set's folder.

    Files already present with the right sha256 are kept and not requested again. ``mirror``
    (else ``$N2N_MIRROR``) replaces the canonical base URL. ``checksums`` replaces the packaged
    table (relative_path -> sha256; used by tests). Raises :class:`ConfigError` for an unknown
    name and :class:`DataError` for an unverifiable set without ``allow_unverified``, a network
    failure, a checksum mismatch or an unsafe archive.
    """
    src = _source(name)
    root = Path(data_dir).expanduser()
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    if not src.verified and not allow_unverified:
        raise DataError(
            f"{name} has no checksums in n2n-bench, so its files cannot be verified after "
            f"download (source: {src.url(src.archive or '', mirror)}). Re-run with "
            "--allow-unverified (download_set(..., allow_unverified=True)) to accept them as served"
        )
    root.mkdir(parents=True, exist_ok=True)
    folder = root / src.folder
    if not src.verified:
        if not verify_set(name, root):
            log.info("%s: all files already present in %s", name, folder)
            return folder
        _download_unverified(src, root, mirror=mirror, progress=progress)
        return folder

    files = set_files(name, checksums)
    if not files:
        raise DataError(
            f"the checksum table lists no files for {name}; reinstall n2n-bench (its "
            f"{CHECKSUM_FILE} is incomplete)"
        )
    todo = verify_set(name, root, checksums=files)
    if not todo:
        log.info("%s: all %d files already present and valid in %s", name, len(files), folder)
        return folder
    log.info("%s: fetching %d of %d files into %s", name, len(todo), len(files), folder)
    if src.archive is None:
        _download_files(src, root, {rel: files[rel] for rel in todo}, mirror, progress)
    else:
        _download_archive(src, root, files, todo, mirror, progress)
    still = verify_set(name, root, checksums=files)
    if still:
        raise DataError(
            f"{name}: {len(still)} files are still missing or invalid after the download "
            f"(first: {still[0]}); run 'n2n-bench download {name}' again"
        )
    return folder


def _download_files(
    src: SetSource, root: Path, todo: Mapping[str, str], mirror: str | None, progress: bool
) -> None:
    with _session() as session, tqdm(
        total=len(todo), unit="file", desc=src.name, disable=not progress or len(todo) < 2,
        file=sys.stderr,
    ) as bar:
        for rel, expected in todo.items():
            remote = src.remote_name(rel)
            assert remote is not None
            url = src.url(remote, mirror)
            final = root / rel
            with _temp_file(final.parent, final.name) as (tmp, fh):
                actual = _fetch(session, url, fh, src=src, label=final.name, progress=progress)
                fh.close()
                if actual != expected:
                    raise _mismatch(rel, url, expected, actual, src, final)
                os.replace(tmp, final)
            bar.update(1)


@contextmanager
def _fetched_archive(
    src: SetSource, folder: Path, mirror: str | None, progress: bool
) -> Iterator[tuple[Path, str]]:
    assert src.archive is not None
    url = src.url(src.archive, mirror)
    with _session() as session, _temp_file(folder, src.archive) as (tmp, fh):
        _fetch(session, url, fh, src=src, label=src.archive, progress=progress)
        fh.close()
        yield tmp, url


def _staging(folder: Path) -> tempfile.TemporaryDirectory[str]:
    """A hidden scratch folder beside the final files (same file system, so os.replace works)."""
    return tempfile.TemporaryDirectory(dir=folder, prefix=f"{TMP_PREFIX}extract.")


def _download_archive(
    src: SetSource,
    root: Path,
    files: Mapping[str, str],
    todo: Iterable[str],
    mirror: str | None,
    progress: bool,
) -> None:
    todo = list(todo)
    wanted = {src.remote_name(rel): rel for rel in todo}
    folder = root / src.folder
    with _fetched_archive(src, folder, mirror, progress) as (archive, url), _staging(
        folder
    ) as staging:
        safe_extract(archive, staging, members_filter=lambda n: n in wanted)
        for remote, rel in wanted.items():
            staged = Path(staging, remote)
            final = root / rel
            where = f"{url} member {remote}"
            if not staged.is_file() or staged.is_symlink():
                if rel in src.id_lists:
                    _write_id_list(src, rel, files, root)
                    continue
                raise DataError(
                    f"{where} is missing from the archive; the upstream archive changed. Use "
                    f"--mirror URL (or ${MIRROR_ENV}) pointing at a copy of the original "
                    f"{src.archive}, or place the verified files in {folder} by hand"
                )
            actual = sha256_file(staged)
            if actual != files[rel] and not (
                # an id list with the right ids in another order or line ending is still valid
                rel in src.id_lists
                and _id_list_ok(staged, _id_list_bytes(src, rel, files))
            ):
                raise _mismatch(rel, where, files[rel], actual, src, final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)


def _write_id_list(src: SetSource, rel: str, files: Mapping[str, str], root: Path) -> None:
    """Write an id list the archive lacks from the set's own verified image names."""
    final = root / rel
    log.warning(
        "%s: the archive has no %s; writing it from the test image names (same ids, numeric "
        "order; the official file lists them in another order)", src.name, final.name,
    )
    with _temp_file(final.parent, final.name) as (tmp, fh):
        fh.write(_id_list_bytes(src, rel, files))
        fh.close()
        os.replace(tmp, final)


def _download_unverified(
    src: SetSource, root: Path, *, mirror: str | None, progress: bool
) -> None:
    folder = root / src.folder
    log.warning("%s: no checksums are known; the files are accepted as served", src.name)
    with _fetched_archive(src, folder, mirror, progress) as (archive, url), _staging(
        folder
    ) as staging:

        def wanted(name: str) -> bool:
            return src.local_name(name) is not None and name.lower().endswith(src.suffixes)

        extracted = safe_extract(archive, staging, members_filter=wanted)
        moved = 0
        for staged in extracted:
            if staged.is_symlink() or not staged.is_file():
                continue
            rel = src.local_name(staged.relative_to(staging).as_posix())
            assert rel is not None
            final = root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
            moved += 1
        if not moved:
            raise DataError(
                f"{url} holds no {'/'.join(src.suffixes)} files under the expected folders "
                f"({', '.join(r for _, r in src.paths)}); the upstream archive changed. Use "
                f"--mirror URL (or ${MIRROR_ENV}) pointing at a copy of the original {src.archive}"
            )
