"""Download a set into the data directory (sources.py says from where), verified file by file.

Files (or the set's archive) are fetched into a hidden temporary folder in the set's folder; an
archive is unpacked there with ``tarfile``'s ``data`` filter (no absolute paths, no ``..``, no
links out, no device files; every member checked before anything is written). A file moves to
its final name (``os.replace``) only when its sha256 matches ``checksums.tsv``; a mismatch
deletes it and says so, with both hashes and the fix. Files present with the right hash are not
fetched again. A failed download removes its temporary files and the folders it made that stay
empty (verified files stay, so a rerun fetches only the rest). A mirror (``mirror`` argument,
else ``$N2N_MIRROR``) replaces every base URL: an HTTP(S) or ``file://`` folder holding the
upstream files under their upstream names (``kodim01.png``, ``BSDS300-images.tgz``, ...).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import logging
import os
import shutil
import ssl
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from ..errors import DataError
from .sources import SetSource, id_list_bytes, id_list_ok, set_files, sha256_file, source, verify_set

log = logging.getLogger(__name__)

MIRROR_ENV = "N2N_MIRROR"
CHUNK = 1 << 16
TIMEOUT = 60.0  # seconds per connect or read
ATTEMPTS = 3  # per URL, for connection errors, time-outs, truncated bodies and 5xx answers
TMP_PREFIX = ".n2n-"


# --------------------------------------------------------------------------- HTTP


def _http_error(url: str, why: object, src: SetSource) -> DataError:
    return DataError(
        f"could not download {url} ({why}); check the network connection, or use --mirror URL "
        f"(or ${MIRROR_ENV}) pointing at a folder that holds the same file names, or fetch "
        f"{src.name} by hand from {src.homepage}"
    )


def _fetch(url: str, fh: IO[bytes], src: SetSource, progress: bool) -> str:
    """Stream ``url`` into ``fh`` (emptied before each attempt); return the body's sha256."""
    last: object = None
    for attempt in range(1, ATTEMPTS + 1):
        fh.seek(0)
        fh.truncate()
        digest = hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "n2n-bench (urllib)"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as resp, tqdm(
                total=_length(resp), unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                desc=url.rsplit("/", 1)[-1], disable=not progress, file=sys.stderr,
            ) as bar:
                while chunk := resp.read(CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            fh.flush()
            return digest.hexdigest()
        except urllib.error.HTTPError as err:
            if err.code < 500:  # 4xx: asking again will not help
                raise _http_error(url, f"HTTP {err.code} {err.reason}", src) from None
            last = f"HTTP {err.code} {err.reason}"
        except urllib.error.URLError as err:  # refused, unknown host, TLS
            last = err.reason
        except (http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError) as err:  # cut, slow
            last = err
        except ValueError as err:  # not a URL
            raise _http_error(url, err, src) from None
        if attempt < ATTEMPTS:
            time.sleep(attempt)
    raise _http_error(url, last, src)


def _length(resp) -> int | None:
    return int(n) if (n := resp.headers.get("Content-Length") or "").isdigit() else None


# --------------------------------------------------------------------------- archives

# What a damaged archive raises while it is read (KeyError: a hard link to a missing member).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, KeyError)


def _normal(name: str) -> str:
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def _refusal(err: tarfile.FilterError) -> str:
    link = err.tarinfo.linkname
    return {
        tarfile.SpecialFileError: "is a device file, FIFO or other special member",
        tarfile.AbsoluteLinkError: f"is a link to {link!r}, an absolute path",
        tarfile.LinkOutsideDestinationError: f"is a link to {link!r}, outside the target folder",
        tarfile.OutsideDestinationError: "would be written outside the target folder",
    }.get(type(err), str(err))


def _refused(archive: Path, name: str, why: str) -> DataError:
    return DataError(
        f"archive {archive.name}: member {name!r} {why}; refusing to extract it. The archive is "
        "damaged or malicious: delete it and get it from the official source"
    )


def _damaged(archive: Path, err: object) -> DataError:
    return DataError(f"archive {archive.name} is damaged ({err}); download it again")


def safe_extract(
    archive: str | os.PathLike[str],
    target_dir: str | os.PathLike[str],
    members_filter: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Extract the tar members selected by ``members_filter(name)`` into a new or empty folder.

    Every selected member passes ``tarfile``'s ``data`` filter before anything is written (and
    again as it is written, against what earlier members made); an absolute name is refused
    rather than made relative. A refusal or a damaged archive empties ``target_dir`` again and
    raises :class:`DataError` naming the member. Returns the paths of the non-folder members.
    """
    archive, target = Path(archive), Path(target_dir)
    try:
        tf = tarfile.open(archive)
    except (tarfile.ReadError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise DataError(
            f"{archive.name} is not a tar archive ({err}; a truncated download or an error "
            "page?); download it again"
        ) from None
    with tf:
        try:
            members = [m for m in tf.getmembers() if members_filter is None or members_filter(_normal(m.name))]
        except _ARCHIVE_ERRORS as err:
            raise _damaged(archive, err) from None
        target.mkdir(parents=True, exist_ok=True)
        if any(target.iterdir()):
            raise ValueError(f"safe_extract needs a new or empty folder, not {target}")
        for member in members:
            if member.name.startswith("/"):
                raise _refused(archive, member.name, "has an absolute path")
            try:
                tarfile.data_filter(member, os.path.realpath(target))
            except tarfile.FilterError as err:
                raise _refused(archive, member.name, _refusal(err)) from None
        try:
            for member in members:
                tf.extract(member, target, filter="data")
        except BaseException as err:
            shutil.rmtree(target)  # unlinks links, never follows them
            target.mkdir()
            if isinstance(err, tarfile.FilterError):
                raise _refused(archive, err.tarinfo.name, _refusal(err)) from None
            if isinstance(err, _ARCHIVE_ERRORS):
                raise _damaged(archive, err) from None
            raise
    return [target / _normal(m.name) for m in members if not m.isdir()]


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

    ``checksums`` replaces the packaged table (relative_path -> sha256; used by tests). Raises
    :class:`ConfigError` for an unknown name and :class:`DataError` for an unverifiable set
    without ``allow_unverified``, a data directory that cannot be written, a network failure, a
    checksum mismatch or an unsafe archive.
    """
    src = source(name)
    root = Path(data_dir).expanduser()
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if not src.verified and not allow_unverified:
        raise DataError(
            f"{name} has no checksums in n2n-bench, so its files cannot be verified after download "
            f"(source: {src.url(src.archive or '', mirror)}). Re-run with --allow-unverified "
            "(download_set(..., allow_unverified=True)) to accept them as served"
        )
    files = set_files(name, checksums) if src.verified else dict.fromkeys(src.expected, "")
    if not files:
        raise DataError(f"the checksum table lists no files for {name}; reinstall n2n-bench")
    folder = root / src.folder
    todo = verify_set(name, root, checksums=checksums)
    if not todo:
        log.info("%s: all %d files already present in %s", name, len(files), folder)
        return folder
    log.info("%s: fetching %d of %d files into %s", name, len(todo), len(files), folder)
    new_folders = _missing_folders([folder, *((root / rel).parent for rel in todo)])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _download(src, root, files, todo, mirror, progress)
    except BaseException as err:
        _remove_empty(new_folders)
        if isinstance(err, OSError):  # _fetch made the network's errors DataErrors: this is the disk
            raise DataError(
                f"could not write {name} into {root} ({err.strerror or err}); set N2N_DATA "
                "(or --data-dir) to a folder you can write, with free space"
            ) from None
        raise
    return folder


def _missing_folders(paths: list[Path]) -> list[Path]:
    """The folders on the way to ``paths`` that do not exist yet, deepest first."""
    missing: set[Path] = set()
    for path in paths:
        while not path.exists() and path != path.parent:
            missing.add(path)
            path = path.parent
    return sorted(missing, key=lambda p: len(p.parts), reverse=True)


def _remove_empty(folders: list[Path]) -> None:
    for path in folders:
        with contextlib.suppress(OSError):  # not empty (verified files stay) or never made
            path.rmdir()


def _mismatch(rel: str, where: str, expected: str, actual: str, src: SetSource, final: Path) -> DataError:
    return DataError(
        f"checksum mismatch for {rel} (from {where}): expected sha256 {expected}, got {actual}; "
        f"the download was deleted. Run 'n2n-bench download {src.name}' again; if it fails again "
        f"the source now serves different bytes: use --mirror URL (or ${MIRROR_ENV}) pointing at "
        f"a copy of the original files, or put a copy with that sha256 at {final}"
    )


def _download(src: SetSource, root: Path, files: Mapping[str, str], todo: list[str],
              mirror: str | None, progress: bool) -> None:
    """Fetch the files (or the archive) into a hidden folder, verify each, move it into place."""
    with tempfile.TemporaryDirectory(dir=root / src.folder, prefix=TMP_PREFIX) as work:
        if src.archive is None:  # one request per file
            for rel in tqdm(todo, desc=src.name, unit="file", file=sys.stderr,
                            disable=not progress or len(todo) < 2):
                url, staged = src.url(src.remote_name(rel), mirror), Path(work, Path(rel).name)
                with open(staged, "wb") as fh:
                    _fetch(url, fh, src, progress)
                _place(src, staged, root, rel, files, url)
            return
        url, archive, staging = src.url(src.archive, mirror), Path(work, src.archive), Path(work, "members")
        with open(archive, "wb") as fh:
            _fetch(url, fh, src, progress)
        wanted = {src.remote_name(rel): rel for rel in todo}
        safe_extract(archive, staging, members_filter=lambda n: n in wanted)
        for remote, rel in wanted.items():
            staged = staging / remote
            if staged.is_symlink() or not staged.is_file():  # absent, or not a plain file
                if rel not in src.id_lists:
                    raise DataError(
                        f"{url} member {remote} is missing from the archive; the upstream archive "
                        f"changed. Use --mirror URL (or ${MIRROR_ENV}) pointing at a copy of the "
                        f"original {src.archive}, or place the files in {root / src.folder} by hand"
                    )
                log.warning("%s: the archive has no %s; writing it from the image names", src.name, rel)
                staged.parent.mkdir(parents=True, exist_ok=True)
                with open(staged, "wb") as fh:  # in the temporary folder, like every fetched file
                    fh.write(id_list_bytes(src, rel, files))
            _place(src, staged, root, rel, files, f"{url} member {remote}")


def _place(src: SetSource, staged: Path, root: Path, rel: str, files: Mapping[str, str], where: str) -> None:
    """Move a fetched file to ``root / rel`` if its sha256 is the table's (an unverified set: as is)."""
    final = root / rel
    if src.verified:
        actual = sha256_file(staged)
        same_ids = rel in src.id_lists and id_list_ok(staged, id_list_bytes(src, rel, files))
        if actual != files[rel] and not same_ids:  # an id list may differ in order or line endings
            raise _mismatch(rel, where, files[rel], actual, src, final)
    else:
        log.warning("%s: no checksum is known for %s; accepted as served", src.name, rel)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)
