"""The model file format: safetensors tensors + a JSON metadata block, never pickle.

A file is a plain safetensors file whose header ``__metadata__`` holds one key,
``"linsolve"``, a JSON document with at least ``format_version``, ``kind``
(``"model"`` or ``"checkpoint"``), ``architecture``, ``config`` and ``dims``.
The header is parsed and checked here before safetensors reads any tensor,
so a truncated, foreign or corrupt file gives a ``ValueError`` that says which.
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from .._io import MissingFileError

__all__ = ["FORMAT_VERSION", "encode", "read_metadata", "read_tensor_specs", "decode", "MAGIC_KEY"]

FORMAT_VERSION = 1
MAGIC_KEY = "linsolve"
_MAX_HEADER = 64 * 1024 * 1024


def encode(tensors: dict, metadata: dict) -> bytes:
    """Serialise ``{name: torch.Tensor}`` and a JSON-able ``metadata`` dict to bytes."""
    import torch
    from safetensors.torch import save

    meta = dict(metadata)
    meta.setdefault("format_version", FORMAT_VERSION)
    clean = {}
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(np.asarray(value))
        clean[name] = value.detach().to("cpu").contiguous()
    return save(clean, metadata={MAGIC_KEY: json.dumps(meta, sort_keys=True)})


def _read_header(path: str):
    if not os.path.exists(path):
        raise MissingFileError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a model file")
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a linsolve model file: only {size} bytes (truncated or empty)")
        (length,) = struct.unpack("<Q", head)
        if length <= 1 or length > _MAX_HEADER:
            raise ValueError(f"{path} is not a linsolve model file (not safetensors: bad header length)")
        if 8 + length > size:
            raise ValueError(f"{path} is truncated: its header needs {8 + length} bytes but the file has {size}")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is not a linsolve model file (header is not safetensors JSON)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a linsolve model file (header is not a JSON object)")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(entry["data_offsets"][1]))
            shape_ok = isinstance(entry["shape"], list) and all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in entry["shape"])
            dtype_ok = isinstance(entry["dtype"], str)
        except (TypeError, KeyError, IndexError, ValueError):
            raise ValueError(f"{path} is not a valid safetensors file (bad entry for tensor {name!r})") from None
        if not (shape_ok and dtype_ok):
            raise ValueError(f"{path} is not a valid safetensors file (bad shape or dtype for tensor {name!r})")
    if 8 + length + end > size:
        raise ValueError(f"{path} is truncated: tensors need {8 + length + end} bytes but the file has {size}")
    return header, size


def read_metadata(path) -> dict:
    """The ``linsolve`` metadata of a model or checkpoint file (tensors are not read).

    Raises ``ValueError`` for truncated files, non-safetensors files and
    safetensors files that were not written by linsolve.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from linsolve.models._format import encode, read_metadata
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> _ = open(path, "wb").write(encode({"w": torch.zeros(2)}, {"kind": "model"}))
    >>> read_metadata(path)["kind"]
    'model'
    """
    path = os.fspath(path)
    header, _ = _read_header(path)
    meta = header.get("__metadata__") or {}
    if MAGIC_KEY not in meta:
        raise ValueError(f"{path} is a safetensors file but not a linsolve model (no '{MAGIC_KEY}' metadata)")
    try:
        info = json.loads(meta[MAGIC_KEY])
    except json.JSONDecodeError:
        raise ValueError(f"{path}: linsolve metadata is not valid JSON (corrupt file)") from None
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path} has model format version {version!r}; this linsolve reads versions "
                         f"<= {FORMAT_VERSION} (upgrade linsolve)")
    return info


def read_tensor_specs(path) -> dict:
    """``{name: (dtype, shape)}`` of a model file's tensors, from its header alone (no tensor is read).

    ``dtype`` is the safetensors name (``"F32"``, ``"C64"``...). Lets a loader check the file against the
    network its metadata describes before anything of the metadata's size is allocated.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from linsolve.models._format import encode, read_tensor_specs
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> _ = open(path, "wb").write(encode({"w": torch.zeros(2, 3)}, {"kind": "model"}))
    >>> read_tensor_specs(path)
    {'w': ('F32', (2, 3))}
    """
    path = os.fspath(path)
    header, _ = _read_header(path)
    return {name: (entry["dtype"], tuple(entry["shape"])) for name, entry in header.items()
            if name != "__metadata__"}


def decode(path):
    """``(tensors, metadata)`` of a file, tensors as CPU torch tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = os.fspath(path)
    info = read_metadata(path)
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise ValueError(f"{path} is corrupt: {exc}") from None
    return tensors, info
