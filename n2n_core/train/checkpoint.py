"""Atomic checkpoints: write to a temporary file, fsync, keep the previous one, then rename.

A reader never sees a half-written file: `save_checkpoint` writes `name.tmp`, moves the current
file to `name.prev` and renames the temporary file into place. `load_checkpoint` uses
`torch.load(weights_only=True)` (no code is unpickled) and falls back to `name.prev` when the
current file is damaged. A write that fails (disk full, no permission) leaves no temporary file
and the previous file untouched, and is reported as a StorageError naming the file and the fix.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError, StorageError, first_line

FORMAT_VERSION = 1


def atomic_write(path: Path, write, keep_previous: bool = False) -> None:
    """Call write(tmp_path), fsync it and rename it onto `path`; no partial file ever survives.

    With keep_previous, the file being replaced is kept as `path.prev` (the fallback of
    load_checkpoint when the newest file turns out damaged).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        if keep_previous and path.exists():
            os.replace(path, path.with_name(path.name + ".prev"))
        os.replace(tmp, path)
    except OSError as err:  # disk full, quota, no permission, file too large: one clear error
        tmp.unlink(missing_ok=True)
        hint = ("free some disk space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                else "check the folder's permissions and free space")
        kept = f" and the previous {path.name} is unchanged" if path.exists() else ""
        raise StorageError(
            f"could not write {path} ({err.strerror or err}); {hint}, then rerun the same command; "
            f"nothing half-written was kept{kept}"
        ) from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
