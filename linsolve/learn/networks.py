"""Network architectures (torch) and the registry that names them.

Every architecture is an ``nn.Module`` built from a JSON-able configuration
dict, maps a ``(batch, 1, *grid)`` tensor to a tensor of the same shape, and
exposes ``dims`` (2 or 3) and ``config`` (the dict it was built from, which is
what :mod:`linsolve.models` saves beside the weights). Other modules add their
own architectures with :func:`register_architecture`; loading a model file
looks the architecture name up here, so nothing is ever unpickled.

This module imports torch; :mod:`linsolve` never imports it eagerly.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict

import torch
from torch import nn

__all__ = ["DCDMNet", "register_architecture", "build_network", "available_architectures",
           "architecture_name"]

_ARCHITECTURES: Dict[str, Callable] = {}
# Modules that register architectures when imported; tried when a name is unknown, so that
# ``linsolve.models.load`` works for their files without the caller importing them first.
_PLUGIN_MODULES = ("linsolve.learn.multigrid",)


def _import_plugins() -> None:
    import importlib

    for module in _PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def register_architecture(name: str, cls: Callable) -> None:
    """Make ``cls`` buildable (and loadable from a model file) under ``name``.

    Parameters
    ----------
    name : str
        Name stored in model files' metadata.
    cls : callable
        ``cls(**config)`` returns an ``nn.Module`` with attributes ``dims`` and
        ``config``; registering the same name twice replaces the entry.

    Examples
    --------
    >>> from linsolve.learn.networks import register_architecture, build_network, DCDMNet
    >>> register_architecture("dcdm-copy", DCDMNet)
    >>> build_network("dcdm-copy", {"dims": 2, "channels": 4, "n_down": 1, "n_coarse": 1, "n_up": 1}).dims
    2
    """
    if not isinstance(name, str) or not name:
        raise ValueError("architecture name must be a non-empty string")
    if not callable(cls):
        raise TypeError(f"architecture {name!r}: cls must be callable, got {type(cls).__name__}")
    _ARCHITECTURES[name] = cls


def available_architectures() -> list:
    """Names accepted by :func:`build_network`."""
    _import_plugins()
    return sorted(_ARCHITECTURES)


def build_network(name: str, config: dict | None = None) -> nn.Module:
    """Instantiate the architecture registered as ``name`` from ``config``.

    Examples
    --------
    >>> from linsolve.learn.networks import build_network
    >>> net = build_network("dcdm", {"dims": 3, "channels": 8})
    >>> net.dims, net.config["channels"]
    (3, 8)
    """
    if name not in _ARCHITECTURES:
        _import_plugins()
    if name not in _ARCHITECTURES:
        raise ValueError(f"unknown network architecture {name!r}; registered: {available_architectures()}")
    config = dict(config or {})
    try:
        net = _ARCHITECTURES[name](**config)
    except TypeError as exc:
        raise ValueError(f"invalid configuration for architecture {name!r}: {exc}") from None
    if not hasattr(net, "architecture"):
        net.architecture = name
    return net


def architecture_name(net) -> str:
    """The registry name a built network carries (``net.architecture``)."""
    name = getattr(net, "architecture", None)
    if not name:
        raise ValueError(f"network {type(net).__name__} has no registered architecture name")
    return name


class DCDMNet(nn.Module):
    """The DCDM convolutional network of Kaneda et al. (ICML 2023), 2D or 3D.

    Layout (as the authors' Keras model): a linear 3×3(×3) convolution to
    ``channels`` features; ``n_down`` ReLU convolutions at full resolution, each
    added to its input (residual); one 2× average pooling; ``n_coarse`` residual
    ReLU convolutions at half resolution; nearest 2× upsampling plus an additive
    skip of the full-resolution features; ``n_up`` residual ReLU convolutions;
    a final linear 1×1 projection to one channel. Fully convolutional, so one
    model serves any grid size (odd sizes are padded to even internally).

    Parameters
    ----------
    dims : {2, 3}
    channels : int
        Feature channels (16 in the paper).
    n_down, n_coarse, n_up : int
        Convolutions before pooling, at half resolution, after upsampling
        (4, 6, 4 in the paper's 64³ model).
    bias : bool
        Convolution biases (the paper's model has them).

    Examples
    --------
    >>> import torch
    >>> from linsolve.learn.networks import DCDMNet
    >>> net = DCDMNet(dims=2, channels=4, n_down=1, n_coarse=1, n_up=1)
    >>> net(torch.zeros(1, 1, 9, 10)).shape
    torch.Size([1, 1, 9, 10])
    """

    architecture = "dcdm"

    def __init__(self, dims: int = 3, channels: int = 16, n_down: int = 4, n_coarse: int = 6,
                 n_up: int = 4, bias: bool = True):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        for value, name in ((channels, "channels"), (n_down, "n_down"), (n_coarse, "n_coarse"), (n_up, "n_up")):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "channels" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'channels' else 'non-negative'} int, "
                                 f"got {value!r}")
        self.dims = int(dims)
        self.config = {"dims": int(dims), "channels": int(channels), "n_down": int(n_down),
                       "n_coarse": int(n_coarse), "n_up": int(n_up), "bias": bool(bias)}
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self._pool = nn.functional.avg_pool2d if dims == 2 else nn.functional.avg_pool3d
        self.first = conv(1, channels, 3, padding=1, bias=bias)
        self.down = nn.ModuleList(conv(channels, channels, 3, padding=1, bias=bias) for _ in range(n_down))
        self.coarse = nn.ModuleList(conv(channels, channels, 3, padding=1, bias=bias) for _ in range(n_coarse))
        self.up = nn.ModuleList(conv(channels, channels, 3, padding=1, bias=bias) for _ in range(n_up))
        self.last = conv(channels, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2 or x.shape[1] != 1:
            raise ValueError(f"DCDMNet({self.dims}D) expects input of shape (batch, 1, {'n, ' * self.dims}...)"
                             f", got {tuple(x.shape)}")
        spatial = x.shape[2:]
        # Pooling needs even sizes: pad odd axes by one (replicate keeps the edge smooth) and crop after.
        pad = [0, 0] * self.dims
        for axis, size in enumerate(reversed(spatial)):
            pad[2 * axis + 1] = size % 2
        padded = any(pad)
        if padded:
            x = nn.functional.pad(x, pad, mode="constant", value=0.0)
        relu = torch.relu
        h = self.first(x)
        for layer in self.down:
            h = h + relu(layer(h))
        c = self._pool(h, 2)
        for layer in self.coarse:
            c = c + relu(layer(c))
        u = nn.functional.interpolate(c, scale_factor=2, mode="nearest") + h
        for layer in self.up:
            u = u + relu(layer(u))
        out = self.last(u)
        if padded:
            out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


register_architecture("dcdm", DCDMNet)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars (for metadata and size estimates)."""
    return int(sum(p.numel() for p in net.parameters()))


def clone_config(net: nn.Module) -> dict:
    return copy.deepcopy(getattr(net, "config", {}))
