"""Atomic checkpoints: write to a temporary file, fsync, keep the previous one, then rename.

A reader never sees a half-written file: `save_checkpoint` writes a temporary file with a unique
name beside it (`name.<random>.tmp`, so two writers never share one), moves the current file to
`name.prev` and renames the temporary file into place. `load_checkpoint` uses
`torch.load(weights_only=True)` (no code is unpickled) and falls back to `name.prev` when the
current file is damaged. A write that fails (disk full, no permission) leaves no temporary file
and the previous file untouched, and is reported as a StorageError naming the file and the fix.

`run_folder_lock` is held by the one process training in a run folder; a second one is refused
with the holder's pid instead of interleaving its checkpoints and config.json with the first's.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import socket
import tempfile
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, N2NError, StorageError, first_line

FORMAT_VERSION = 1
_UMASK = os.umask(0)  # read once (os.umask can only be read by setting it): mkstemp creates 0600 files
os.umask(_UMASK)


def _storage_error(path: Path, err: OSError) -> StorageError:
    hint = ("free some disk space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "check the folder's permissions and free space")
    kept = f" and the previous {path.name} is unchanged" if path.exists() else ""
    return StorageError(
        f"could not write {path} ({err.strerror or err}); {hint}, then rerun the same command; "
        f"nothing half-written was kept{kept}"
    )


def atomic_write(path: Path, write, keep_previous: bool = False) -> None:
    """Call write(tmp_path), fsync it and rename it onto `path`; no partial file ever survives.

    The temporary file has a unique name in the same folder (`path.name.<random>.tmp`): two
    processes writing the same file each rename their own whole file, the last one wins. With
    keep_previous, the file being replaced is kept as `path.prev` (the fallback of
    load_checkpoint when the newest file turns out damaged).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=".tmp")
        os.close(handle)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_UMASK)  # the mode a plain open() would give, not mkstemp's 0600
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(path.name + ".prev"))
        os.replace(tmp, path)
    except OSError as err:  # disk full, quota, no permission, read-only, file too large: one clear error
        _discard(tmp)
        raise _storage_error(path, err) from err
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path | None) -> None:
    """Remove a temporary file; a failing removal (a read-only mount) must not hide the real error."""
    if tmp is not None:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


class RunFolderBusy(N2NError):
    """Another live process is training in this run folder."""


LOCK_NAME = ".lock"  # in the run folder; git-ignored with runs/


def _owner(folder: Path) -> str:
    try:
        text = (folder / LOCK_NAME).read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def run_folder_lock(folder: Path):
    """Hold `folder/.lock` while training in `folder`; raise RunFolderBusy if a live process holds it.

    The lock is the operating system's (flock): a process killed with SIGKILL releases it at
    once, so a stale lock never blocks a resume. The holder writes 'pid N on HOST' into the file
    for the message a second process shows.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)

    def record_owner(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)

    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / LOCK_NAME), timeout=0, on_acquired=record_owner, fallback_to_soft=False)
        lock.acquire()
    except Timeout:
        raise RunFolderBusy(
            f"run folder {folder} is in use by {_owner(folder)}; wait for it to finish (then rerun the "
            "same command to use its result) or pass another --out"
        ) from None
    except OSError as err:
        raise StorageError(f"could not use run folder {folder} ({err.strerror or err}); pass --out (or "
                           "--runs-dir) with a folder you can write") from None
    try:
        yield
    finally:
        lock.release()
        if created:  # a command refused before it wrote anything leaves no folder behind
            with contextlib.suppress(OSError):
                if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
                    (folder / LOCK_NAME).unlink()
                    folder.rmdir()


def save_checkpoint(state: dict, path: Path) -> None:
    """Save a dict of tensors and plain values atomically, keeping the last good file as .prev."""
    payload = {"format_version": FORMAT_VERSION, **state}
    buffer = io.BytesIO()  # serialised in memory, so a failing disk write surfaces as an OSError
    torch.save(payload, buffer)
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(buffer.getbuffer()), keep_previous=True)


def weights_only_reason(err: Exception) -> str:
    """The one line of torch's weights_only refusal that says why (e.g. 'unsupported GLOBAL posix.system')."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for before, line in zip(lines, lines[1:]):
        if line.startswith("Check the documentation"):
            return before[:200]
    return first_line(err, 200)


def _load_one(path: Path, map_location) -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only met something other than tensors/values
        raise CheckpointError(
            f"checkpoint {path} was refused: it is not a file of tensors and plain values "
            f"({weights_only_reason(err)}); no code from it was run; use a checkpoint written by "
            "n2n-bench, or retrain"
        ) from None
    except Exception as err:  # truncated zip, garbage: "damaged"
        first = first_line(err, 200).split(". ")[0]
        raise CheckpointError(
            f"checkpoint {path} is damaged or not a checkpoint ({first}); retrain, or restore it "
            "from the run's MLflow artifacts"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} was written by another version of n2n-bench "
            f"(format {state.get('format_version') if isinstance(state, dict) else '?'}, "
            f"expected {FORMAT_VERSION}); retrain or use the matching release"
        )
    return state


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load `path`; if it is damaged and `path.prev` is whole, warn and use that instead."""
    path = Path(path)
    previous = path.with_name(path.name + ".prev")
    if not path.exists() and not previous.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; train first or check the path")
    try:
        return _load_one(path, map_location)
    except CheckpointError as err:
        if not previous.exists():
            raise
        warnings.warn(f"{err}; using the previous checkpoint {previous}", stacklevel=2)
        return _load_one(previous, map_location)


def checkpoint_progress(path: Path, identity: str | None = None) -> tuple[int, bool] | None:
    """(images seen, finished) of the checkpoint at `path` (or its .prev); None if there is none,
    or, with `identity`, if it belongs to another run.

    For messages only ("resuming … from N of M images"): a damaged file counts as none, and the
    loader's own warning is left to the real load.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = load_checkpoint(path)
    except CheckpointError:
        return None
    if identity is not None and state.get("identity") != identity:
        return None
    return int(state.get("images_seen", 0)), bool(state.get("finished", False))
