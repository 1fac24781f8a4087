"""Save and load a scratch model's weights without pickle.

The file is in the safetensors layout, written by hand (the safetensors package is not a
dependency): an 8-byte little-endian header length N, N bytes of JSON
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the raw little-endian tensor bytes. Loading parses JSON and copies bytes, so no code can run
from a weight file; a pickle (or anything else that is not this layout) is refused with a
CheckpointError. Writes go through ``train.checkpoint.atomic_write`` (temporary file, fsync,
``os.replace``).
"""

from __future__ import annotations

import json
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch

from n2n_core.errors import CheckpointError
from n2n_core.train.checkpoint import atomic_write

FORMAT_TAG = "n2n-scratch-weights/1"
_MAX_HEADER = 64 * 1024 * 1024

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_FROM_CODE = {code: dtype for dtype, code in _DTYPES.items()}


def _check_byteorder() -> None:
    if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
        raise CheckpointError("scratch weight files are little-endian; this machine is not")


def save_state(
    state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a name -> tensor mapping to ``path`` atomically; returns the path."""
    _check_byteorder()
    path = Path(path)
    header: dict[str, object] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in state.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {name!r} is a {type(tensor).__name__}, not a tensor")
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"state entry {name!r} has unsupported dtype {tensor.dtype}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    meta = {"format": FORMAT_TAG}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    header["__metadata__"] = meta
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # align the data section, as safetensors does
    payload = b"".join([len(encoded).to_bytes(8, "little"), encoded, *blobs])
    # temporary file + fsync + os.replace; a full disk is a one-line StorageError, nothing partial
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))
    return path


def load_state(path: str | os.PathLike, device: torch.device | str = "cpu") -> OrderedDict[str, torch.Tensor]:
    """Read a file written by :func:`save_state`; anything else is a CheckpointError."""
    _check_byteorder()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"weight file {path} does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read weight file {path}: {exc}") from None
    if len(raw) < 8:
        raise CheckpointError(f"{path} is not a scratch weight file (too short)")
    header_len = int.from_bytes(raw[:8], "little")
    if header_len > min(_MAX_HEADER, len(raw) - 8) or header_len < 2:
        raise CheckpointError(f"{path} is not a scratch weight file (bad header length; pickles are refused)")
    try:
        header = json.loads(raw[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a scratch weight file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a scratch weight file (header is not an object)")
    meta = header.pop("__metadata__", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path} is not a scratch weight file (format tag missing)")
    data = memoryview(raw)[8 + header_len :]
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    spans = []
    for name, info in header.items():
        try:
            dtype = _FROM_CODE[info["dtype"]]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: malformed entry for {name!r}") from None
        numel = 1
        for size in shape:
            if size < 0:
                raise CheckpointError(f"{path}: negative size in {name!r}")
            numel *= size
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(data) or end - begin != numel * itemsize:
            raise CheckpointError(f"{path}: entry {name!r} points outside the file or has the wrong size")
        spans.append((begin, end))
        if end > begin:
            flat = torch.frombuffer(bytearray(data[begin:end]), dtype=torch.uint8)
        else:
            flat = torch.empty(0, dtype=torch.uint8)
        state[name] = flat.view(dtype).reshape(shape).to(device)
    spans.sort()
    for (_, end_a), (begin_b, _) in zip(spans, spans[1:]):
        if begin_b < end_a:
            raise CheckpointError(f"{path}: tensor data regions overlap")
    return state


def save(model, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Save ``model.state_dict()`` (a scratch model, a torch.nn twin, or a plain dict) to ``path``."""
    state = model if isinstance(model, Mapping) else model.state_dict()
    return save_state(state, path, metadata)


def load(model, path: str | os.PathLike, strict: bool = True):
    """Load weights saved by :func:`save` into ``model`` (via its load_state_dict); returns model."""
    model.load_state_dict(load_state(path), strict=strict)
    return model
