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

from .._optional import require_torch

# A missing torch is an ImportError that names the extra to install, not a bare ModuleNotFoundError.
torch = require_torch("network architectures (linsolve.learn.networks)")
nn = torch.nn

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
    """The DCDM convolutional network of Kaneda et al. (ICML 2023), 2D or 3D, optionally multi-level.

    Layout (as the authors' Keras model, ``levels=1``): a linear 3×3(×3)
    convolution to ``channels`` features; ``n_down`` ReLU convolutions at full
    resolution, each added to its input (residual); one 2× average pooling;
    ``n_coarse`` residual ReLU convolutions at half resolution; nearest 2×
    upsampling plus an additive skip of the full-resolution features; ``n_up``
    residual ReLU convolutions; a final linear 1×1 projection to one channel.
    Fully convolutional, so one model serves any grid size (odd sizes are
    padded internally and the output cropped).

    With ``levels=L > 1`` the same pattern is nested U-Net style: between the
    first pooling and the coarsest level there are ``L - 1`` intermediate
    levels, each with ``n_mid`` residual convolutions before its pooling and
    ``n_mid`` after its upsampling-plus-skip; the ``n_coarse`` convolutions run
    at ``1/2**L`` resolution. One pooling level gives a receptive field fixed in
    cells, so the iteration count grows with the grid like CG's; more levels
    reach further at little cost (each level has 1/4 (2D) or 1/8 (3D) of the
    cells of the one above).

    Parameters
    ----------
    dims : {2, 3}
    channels : int
        Feature channels (16 in the paper).
    n_down, n_coarse, n_up : int
        Convolutions before the first pooling, at the coarsest level, after the
        last upsampling (4, 6, 4 in the paper's 64³ model).
    bias : bool
        Convolution biases (the paper's model has them).
    levels : int
        Number of 2× pooling levels (1 to 8; 1 is the paper's network, with the
        same parameter names, so files saved without ``levels`` load unchanged).
    n_mid : int
        Convolutions on each side of every intermediate level (``levels > 1``).

    Examples
    --------
    >>> import torch
    >>> from linsolve.learn.networks import DCDMNet
    >>> net = DCDMNet(dims=2, channels=4, n_down=1, n_coarse=1, n_up=1)
    >>> net(torch.zeros(1, 1, 9, 10)).shape
    torch.Size([1, 1, 9, 10])
    >>> deep = DCDMNet(dims=3, channels=4, n_down=1, n_coarse=1, n_up=1, levels=3, n_mid=1)
    >>> deep(torch.zeros(2, 1, 5, 7, 3)).shape
    torch.Size([2, 1, 5, 7, 3])
    """

    architecture = "dcdm"
    MAX_LEVELS = 8

    def __init__(self, dims: int = 3, channels: int = 16, n_down: int = 4, n_coarse: int = 6,
                 n_up: int = 4, bias: bool = True, levels: int = 1, n_mid: int = 1):
        super().__init__()
        if dims not in (2, 3) or isinstance(dims, bool):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        for value, name in ((channels, "channels"), (n_down, "n_down"), (n_coarse, "n_coarse"), (n_up, "n_up"),
                            (n_mid, "n_mid")):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "channels" else 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'channels' else 'non-negative'} int, "
                                 f"got {value!r}")
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= self.MAX_LEVELS:
            raise ValueError(f"levels must be an int from 1 to {self.MAX_LEVELS} (number of 2x pooling levels), "
                             f"got {levels!r}")
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        self.dims = int(dims)
        self.levels = int(levels)
        self.config = {"dims": int(dims), "channels": int(channels), "n_down": int(n_down),
                       "n_coarse": int(n_coarse), "n_up": int(n_up), "bias": bool(bias)}
        if levels > 1:
            # Only multi-level configs name the new keys, so a levels=1 config stays byte-identical to old files.
            self.config.update(levels=int(levels), n_mid=int(n_mid))
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self._pool = nn.functional.avg_pool2d if dims == 2 else nn.functional.avg_pool3d

        def stack(count):
            return nn.ModuleList(conv(channels, channels, 3, padding=1, bias=bias) for _ in range(count))

        self.first = conv(1, channels, 3, padding=1, bias=bias)
        self.down = stack(n_down)
        # Intermediate levels 1..levels-1 (empty for the paper's one-level network: no new parameter names).
        self.mid_down = nn.ModuleList(stack(n_mid) for _ in range(levels - 1))
        self.coarse = stack(n_coarse)
        self.mid_up = nn.ModuleList(stack(n_mid) for _ in range(levels - 1))
        self.up = stack(n_up)
        self.last = conv(channels, 1, 1, bias=bias)

    @staticmethod
    def _pad_even(t: torch.Tensor, dims: int):
        """Zero-pad odd spatial axes by one so 2x pooling covers every cell; returns (tensor, sizes before)."""
        spatial = tuple(t.shape[2:])
        pad = [0, 0] * dims
        for axis, size in enumerate(reversed(spatial)):
            pad[2 * axis + 1] = size % 2
        if any(pad):
            t = nn.functional.pad(t, pad, mode="constant", value=0.0)
        return t, spatial

    @staticmethod
    def _crop(t: torch.Tensor, spatial) -> torch.Tensor:
        if tuple(t.shape[2:]) == tuple(spatial):
            return t
        return t[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2 or x.shape[1] != 1:
            raise ValueError(f"DCDMNet({self.dims}D) expects input of shape (batch, 1, {'n, ' * self.dims}...)"
                             f", got {tuple(x.shape)}")
        if any(s < 1 for s in x.shape[2:]):
            raise ValueError(f"DCDMNet: empty grid {tuple(x.shape[2:])}")
        # The input itself is padded at the finest level (as the one-level network always did, so
        # levels=1 is unchanged); deeper levels pad their features, so any size works, down to 1 cell.
        x, spatial = self._pad_even(x, self.dims)
        relu = torch.relu
        h = self.first(x)
        for layer in self.down:
            h = h + relu(layer(h))
        skips = [h]
        c = self._pool(h, 2)
        for convs in self.mid_down:
            for layer in convs:
                c = c + relu(layer(c))
            skips.append(c)
            padded, _ = self._pad_even(c, self.dims)
            c = self._pool(padded, 2)
        for layer in self.coarse:
            c = c + relu(layer(c))
        for convs in reversed(self.mid_up):
            skip = skips.pop()
            c = self._crop(nn.functional.interpolate(c, scale_factor=2, mode="nearest"), skip.shape[2:]) + skip
            for layer in convs:
                c = c + relu(layer(c))
        u = nn.functional.interpolate(c, scale_factor=2, mode="nearest") + skips.pop()
        for layer in self.up:
            u = u + relu(layer(u))
        out = self.last(u)
        return self._crop(out, spatial)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


register_architecture("dcdm", DCDMNet)


def count_parameters(net: nn.Module) -> int:
    """Number of trainable scalars (for metadata and size estimates)."""
    return int(sum(p.numel() for p in net.parameters()))


def clone_config(net: nn.Module) -> dict:
    return copy.deepcopy(getattr(net, "config", {}))
