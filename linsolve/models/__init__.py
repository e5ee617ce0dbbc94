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

from ._format import FORMAT_VERSION, decode, encode, read_metadata, read_tensor_specs

__all__ = ["available", "load", "save", "info", "find", "resolve", "WEIGHTS_DIR", "FORMAT_VERSION"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
_SUFFIX = ".safetensors"
_CACHE: dict = {}
_METADATA: dict = {}  # (path, mtime_ns, size) -> metadata read from that file
_FOUND: dict = {}  # (dims, architecture, mtime_ns of the weights folder) -> names find() returned


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
    # auto's rule asks at every new matrix (a time loop: one a step); the answer changes only with the folder
    try:
        stamp = os.stat(WEIGHTS_DIR).st_mtime_ns
    except OSError:
        stamp = None
    key = (dims, architecture, stamp)
    if stamp is not None and key in _FOUND:
        return list(_FOUND[key])
    out = []
    for name in available():
        try:
            meta = _metadata(os.path.join(WEIGHTS_DIR, name + _SUFFIX))
        except (ValueError, OSError):
            continue
        if (dims is None or meta.get("dims") == dims) \
                and (architecture is None or meta.get("architecture") == architecture):
            out.append((not meta.get("default", False), name))
    names = [name for _, name in sorted(out)]
    if stamp is not None:
        if len(_FOUND) >= 64:
            _FOUND.clear()
        _FOUND[key] = tuple(names)
    return names


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
    if not isinstance(arch, str):
        raise ValueError(f"{path}: metadata has no architecture name")
    config = meta.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"{path}: metadata 'config' must be a JSON object, got {type(config).__name__}")
    # The metadata is untrusted: a tampered config ("channels": 10**6) would make the real network ask
    # for terabytes. A shape-only skeleton, checked against the header, costs nothing whatever the config.
    stored = {k: shape for k, (_, shape) in read_tensor_specs(path).items()}
    skeleton = _skeleton(arch, config, path, len(stored))
    if skeleton is not None:
        _check_dims(skeleton, meta, path)
        _check_state({k: (v.shape, v.dtype) for k, v in skeleton.state_dict().items()}, stored, path, arch, config)
    tensors, _ = decode(path)
    net = _build(arch, config, path)
    _check_dims(net, meta, path)
    _load_state(net, tensors, path, arch, config)
    net.metadata = meta
    net.source_path = path
    net.eval()
    net.to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    _CACHE.clear()  # one cached model is enough to make repeated solves cheap
    _CACHE[key] = net
    return net


def _build(arch: str, config: dict, path: str):
    from ..learn.networks import build_network

    try:
        return build_network(arch, config)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


class _TooManyParameters(Exception):
    pass


def _skeleton(arch: str, config: dict, path: str, n_stored: int):
    """The network of ``arch``/``config`` on torch's meta device (shapes, no storage), or None when the
    architecture cannot be built there (then only the check after the real build applies).

    ``n_stored``: tensors in the file. A config asking for more parameters than that cannot match, and
    is stopped as soon as it does: even without storage, 10**6 layers take minutes to construct.
    """
    import threading

    import torch
    from torch.nn.modules.module import register_module_parameter_registration_hook

    from ..learn.networks import available_architectures

    # Import plugin architectures now: a module first imported under the meta context would keep
    # meta tensors for its module-level constants.
    available_architectures()
    owner, count = threading.get_ident(), 0

    def count_parameters(module, name, param):
        nonlocal count
        # the hook is process-wide: modules other threads build meanwhile are not this file's
        if param is not None and threading.get_ident() == owner:
            count += 1
            if count > n_stored:
                raise _TooManyParameters

    handle = register_module_parameter_registration_hook(count_parameters)
    try:
        with torch.device("meta"):
            return _build(arch, config, path)
    except _TooManyParameters:
        raise ValueError(f"{path}: architecture {arch!r} with the file's config ({_config_text(config)}) has more "
                         f"parameter tensors than the {n_stored} the file holds: the config does not describe "
                         f"these weights") from None
    except ValueError:
        raise
    except (RuntimeError, NotImplementedError, TypeError):
        # an architecture whose constructor computes with tensor values cannot run on 'meta'
        return None
    finally:
        handle.remove()


def _check_dims(net, meta: dict, path: str) -> None:
    stated = meta.get("dims")
    built = getattr(net, "dims", None)
    if stated is not None and built is not None and stated != built:
        raise ValueError(f"{path}: metadata field 'dims' says {stated!r} but its 'config' builds a {built}D network "
                         f"(corrupt or hand-edited file)")


def _config_text(config: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(config.items()))


def _check_state(expected: dict, stored: dict, path: str, arch: str, config: dict) -> None:
    """``expected``: name -> (shape, dtype) of the architecture; ``stored``: name -> shape in the file."""
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match architecture {arch!r} with config ({_config_text(config)}) "
                         f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    for name, (shape, _) in expected.items():
        if tuple(stored[name]) != tuple(shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {tuple(stored[name])}, but architecture {arch!r} "
                             f"with the file's config ({_config_text(config)}) needs {tuple(shape)}: the config "
                             f"does not describe these weights")


def _load_state(net, tensors: dict, path: str, arch: str, config: dict) -> None:
    import torch

    state = net.state_dict()
    _check_state({k: (v.shape, v.dtype) for k, v in state.items()},
                 {k: tuple(v.shape) for k, v in tensors.items()}, path, arch, config)
    converted = {}
    for name, value in tensors.items():
        target = state[name].dtype
        # casting would drop an imaginary part or turn integers into weights nobody trained
        if target.is_floating_point and not value.dtype.is_floating_point or \
                not target.is_floating_point and value.dtype != target:
            raise ValueError(f"{path}: tensor {name!r} has dtype {value.dtype}, architecture {arch!r} needs "
                             f"{'a real floating-point dtype' if target.is_floating_point else target}")
        value = value.to(target)
        # checked after the cast: a float64 1e300 becomes inf in a float32 network
        if target.is_floating_point and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path}: tensor {name!r} contains NaN or Inf (as {target}): corrupt weights")
        converted[name] = value
    net.load_state_dict(converted)


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
