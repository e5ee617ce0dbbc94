"""Pretrained models: listing, safe loading (no pickle) and atomic saving.

A model file is a safetensors file with a JSON metadata block (see
:mod:`linsolve.models._format`): architecture name and configuration, grid
dimensionality, training preset, data recipe, git commit and loss curve.
Loading rebuilds the network from the architecture registry
(:mod:`linsolve.learn.networks`) and copies the tensors in; no code is ever
unpickled. Shipped models live in ``linsolve/models/weights/`` together with
``RECIPE.md``, the commands that produced them.

This package imports torch only when a model is actually loaded or saved.
"""
from __future__ import annotations

import copy
import datetime as _dt
import os
from typing import Optional

from ._format import FORMAT_VERSION, decode, encode, read_metadata

__all__ = ["available", "load", "save", "info", "find", "resolve", "WEIGHTS_DIR", "FORMAT_VERSION"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
_SUFFIX = ".safetensors"
_CACHE: dict = {}
_METADATA: dict = {}  # (path, mtime_ns, size) -> metadata read from that file


def available() -> list:
    """Names of the shipped pretrained models (usable with :func:`load`).

    Examples
    --------
    >>> import linsolve
    >>> isinstance(linsolve.models.available(), list)
    True
    """
    if not os.path.isdir(WEIGHTS_DIR):
        return []
    return sorted(f[:-len(_SUFFIX)] for f in os.listdir(WEIGHTS_DIR)
                  if f.endswith(_SUFFIX) and not f.startswith("."))


def resolve(name_or_path) -> str:
    """Path of a shipped model name, or the given path if it exists."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model must be a name or a path, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if text in available():
        return os.path.join(WEIGHTS_DIR, text + _SUFFIX)
    if os.path.exists(text):
        return text
    raise ValueError(f"model {text!r} is neither a shipped model ({', '.join(available()) or 'none shipped'}) "
                     f"nor an existing file")


def info(name_or_path) -> dict:
    """Metadata of a model without loading its weights.

    Examples
    --------
    >>> import linsolve
    >>> names = linsolve.models.available()
    >>> all("dims" in linsolve.models.info(n) for n in names)
    True
    """
    return copy.deepcopy(_metadata(resolve(name_or_path)))


def _metadata(path) -> dict:
    """:func:`read_metadata`, read once per version of the file (auto's rule asks at every solve which
    model fits a grid); shared, not to be changed by the caller."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    meta = _METADATA.get(key)
    if meta is None:
        meta = read_metadata(path)
        if len(_METADATA) >= 64:
            _METADATA.clear()
        _METADATA[key] = meta
    return meta


def find(dims: Optional[int], architecture: Optional[str] = None) -> list:
    """Shipped model names for grids of dimensionality ``dims`` (any when None; preferred ones first).

    Models whose metadata says ``"default": true`` come first.
    """
    out = []
    for name in available():
        try:
            meta = _metadata(os.path.join(WEIGHTS_DIR, name + _SUFFIX))
        except (ValueError, OSError):
            continue
        if (dims is None or meta.get("dims") == dims) \
                and (architecture is None or meta.get("architecture") == architecture):
            out.append((not meta.get("default", False), name))
    return [name for _, name in sorted(out)]


def load(name_or_path, *, architecture: Optional[str] = None, dims: Optional[int] = None, device="cpu"):
    """Load a model (shipped name or file path) as a torch ``nn.Module`` in eval mode.

    Parameters
    ----------
    name_or_path : str or path
        One of :func:`available` or a ``.safetensors`` file written by :func:`save`.
    architecture : str, optional
        Refuse files of any other architecture.
    dims : {2, 3}, optional
        Refuse models for another grid dimensionality.
    device : str
        Torch device for the weights.

    Returns
    -------
    torch.nn.Module
        With ``.metadata`` (the file's JSON metadata), ``.dims`` and ``.config``.

    Raises
    ------
    ValueError
        Truncated or corrupt file, not a linsolve model, unknown or unexpected
        architecture, weights that do not fit the architecture, wrong ``dims``.

    Examples
    --------
    >>> import linsolve
    >>> net = linsolve.models.load("poisson2d-64")
    >>> net.dims
    2
    """
    from .._optional import require_torch

    require_torch("a network model (linsolve.models.load)")
    path = resolve(name_or_path)
    meta = read_metadata(path)
    if meta.get("kind", "model") != "model":
        raise ValueError(f"{path} is a training {meta.get('kind')!r}, not a model; finish training or pass "
                         f"--resume to `linsolve train`")
    arch = meta.get("architecture")
    if architecture is not None and arch != architecture:
        raise ValueError(f"{path} holds a {arch!r} network, expected architecture {architecture!r}")
    if dims is not None and meta.get("dims") != dims:
        raise ValueError(f"{path} is a {meta.get('dims')}D model but a {dims}D model is needed")
    key = (os.path.abspath(path), os.path.getmtime(path), os.path.getsize(path), str(device))
    if key in _CACHE:
        return _CACHE[key]
    from ..learn.networks import build_network

    if not isinstance(arch, str):
        raise ValueError(f"{path}: metadata has no architecture name")
    net = build_network(arch, meta.get("config", {}))
    tensors, _ = decode(path)
    _load_state(net, tensors, path, arch)
    net.metadata = meta
    net.source_path = path
    net.eval()
    net.to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    _CACHE.clear()  # one cached model is enough to make repeated solves cheap
    _CACHE[key] = net
    return net


def _load_state(net, tensors: dict, path: str, arch: str) -> None:
    state = net.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match architecture {arch!r} "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    for name, value in state.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(tensors[name].shape)}, architecture "
                             f"{arch!r} with its config needs {tuple(value.shape)}")
    net.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()})


def save(net, path, metadata: Optional[dict] = None, **extra) -> str:
    """Write ``net`` atomically as safetensors + JSON metadata; return the path.

    Parameters
    ----------
    net : torch.nn.Module
        A network built by :func:`linsolve.learn.networks.build_network` (it
        carries ``architecture``, ``config`` and ``dims``).
    path : str or path
        Destination, conventionally ``*.safetensors``.
    metadata : dict, optional
        Extra JSON-able fields (training preset, data recipe, loss curve...);
        keyword arguments are merged in as well.

    Examples
    --------
    >>> import os, tempfile, linsolve
    >>> from linsolve.learn.networks import build_network
    >>> net = build_network("dcdm", {"dims": 2, "channels": 4, "n_down": 1, "n_coarse": 1, "n_up": 1})
    >>> path = linsolve.models.save(net, os.path.join(tempfile.mkdtemp(), "tiny.safetensors"), preset="demo")
    >>> linsolve.models.load(path).metadata["preset"]
    'demo'
    """
    from .._io import atomic_write_bytes
    from .._optional import require_torch

    require_torch("saving a network model (linsolve.models.save)")
    from ..learn.networks import architecture_name

    # A network loaded from a file carries its metadata: re-saving it keeps the training recipe, the
    # command and the loss curve (what describes the weights), unless ``metadata`` overrides them.
    inherited = getattr(net, "metadata", None)
    meta = {k: v for k, v in (inherited.items() if isinstance(inherited, dict) else ())
            if k not in ("format_version", "kind", "architecture", "config", "dims", "n_parameters")}
    meta.update(metadata or {})
    meta.update(extra)
    meta.update({"format_version": FORMAT_VERSION, "kind": "model", "architecture": architecture_name(net),
                 "config": dict(getattr(net, "config", {})), "dims": int(getattr(net, "dims", 0)) or None})
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    meta.setdefault("git_commit", _git_commit())
    meta.setdefault("input_normalization", "rms")
    meta.setdefault("n_parameters", int(sum(p.numel() for p in net.parameters())))
    data = encode(dict(net.state_dict()), meta)
    atomic_write_bytes(path, data)
    return os.fspath(path)


def _git_commit() -> str:
    from .._provenance import git_commit

    return git_commit()
