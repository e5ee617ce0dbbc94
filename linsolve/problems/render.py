"""Render frames of :func:`linsolve.problems.fluid_sequence` with matplotlib (for notebooks).

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot
state), so rendering works headless and never leaks open figures; in Jupyter
a returned Figure displays itself.
"""
from __future__ import annotations

import numbers

import numpy as np

from .instance import FLUID, SOLID

__all__ = ["frame_slice", "render_frame"]

_FIELDS = ("density", "pressure", "divergence", "speed", "cell_types")


def _grid_field(instance, field: str) -> np.ndarray:
    shape = tuple(instance.grid_shape) if instance.grid_shape is not None else None
    if shape is None or instance.cell_types is None:
        raise ValueError("instance has no grid_shape/cell_types: only grid problems can be rendered")
    extras = instance.extras or {}
    if field == "density":
        if "density" not in extras:
            raise ValueError("instance.extras has no 'density' (render frames of fluid_sequence)")
        return np.asarray(extras["density"], dtype=float).reshape(shape)
    if field == "pressure":
        p = extras.get("pressure")
        if p is None:
            raise ValueError("instance.extras has no 'pressure' (render frames of fluid_sequence)")
        return np.asarray(p, dtype=float).reshape(shape)
    if field == "divergence":
        # b is minus the divergence of the advected velocity u*.
        return -np.asarray(instance.b, dtype=float).reshape(shape)
    if field == "speed":
        velocity = extras.get("velocity")
        if velocity is None:
            raise ValueError("instance.extras has no 'velocity' (render frames of fluid_sequence)")
        total = np.zeros(shape)
        for d, u in enumerate(velocity):
            lo = np.take(u, np.arange(0, shape[d]), axis=d)
            hi = np.take(u, np.arange(1, shape[d] + 1), axis=d)
            total += (0.5 * (lo + hi)) ** 2
        return np.sqrt(total)
    if field == "cell_types":
        return np.asarray(instance.cell_types, dtype=float).reshape(shape)
    raise ValueError(f"unknown field {field!r}; choose from {_FIELDS}")


def frame_slice(instance, field: str = "density", *, axis: int = 2, index=None) -> np.ndarray:
    """A 2D slice of one field of a frame, oriented for ``imshow(..., origin="lower")``.

    Parameters
    ----------
    instance : Instance
        A frame of :func:`~linsolve.problems.fluid_sequence`.
    field : {"density", "pressure", "divergence", "speed", "cell_types"}
        ``"divergence"`` is ``div u*`` before projection (``-b``).
    axis : int
        For 3D grids, the axis the slice is normal to (default 2, giving an
        x-y plane with y up). Ignored in 2D.
    index : int, optional
        Position of the slice along ``axis`` (default: the middle).

    Returns
    -------
    ndarray, 2D
        Rows run along the vertical plot axis (the grid's y for the default
        slice), columns along the horizontal one; non-fluid cells are NaN for
        ``"pressure"`` and ``"divergence"``.

    Examples
    --------
    >>> from linsolve.problems import fluid_sequence
    >>> from linsolve.problems.render import frame_slice
    >>> frame = next(iter(fluid_sequence((16, 20, 12), 1)))
    >>> frame_slice(frame, "density").shape
    (20, 16)
    """
    values = _grid_field(instance, field)
    types = np.asarray(instance.cell_types).reshape(values.shape)
    if field in ("pressure", "divergence"):
        values = np.where(types == FLUID, values, np.nan)
    if values.ndim == 3:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not 0 <= axis < 3:
            raise ValueError(f"axis must be 0, 1 or 2 for a 3D grid, got {axis!r}")
        n = values.shape[axis]
        if index is None:
            index = n // 2
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < n:
            raise ValueError(f"index must be an int in [0, {n}) for axis {axis}, got {index!r}")
        values = np.take(values, int(index), axis=axis)
    # imshow draws rows bottom-up with origin="lower": put the first remaining axis horizontally.
    return values.T


def render_frame(instance, fields=("density", "pressure"), *, axis: int = 2, index=None, figsize=None,
                 title=None):
    """One figure with a panel per field (default: smoke density and pressure) of a frame.

    Solid cells are drawn in grey in every panel. For 3D frames a slice
    normal to ``axis`` at ``index`` (default: the middle) is shown.

    Parameters
    ----------
    instance : Instance
        A frame of :func:`~linsolve.problems.fluid_sequence`.
    fields : sequence of str
        Any of ``"density", "pressure", "divergence", "speed", "cell_types"``.
    axis, index
        Slice position for 3D grids, see :func:`frame_slice`.
    figsize : tuple, optional
    title : str, optional
        Figure title (default: scene and frame number).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from linsolve.problems import fluid_sequence
    >>> from linsolve.problems.render import render_frame
    >>> frame = list(fluid_sequence((24, 24), 2, scene="smoke_sphere"))[-1]
    >>> fig = render_frame(frame)
    >>> len(fig.axes)   # two panels and their colour bars
    4
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    if isinstance(fields, str):
        fields = (fields,)
    fields = tuple(fields)
    if not fields:
        raise ValueError("fields must name at least one field")
    for field in fields:
        if field not in _FIELDS:
            raise ValueError(f"unknown field {field!r}; choose from {_FIELDS}")
    slices = [frame_slice(instance, f, axis=axis, index=index) for f in fields]
    solid = frame_slice(instance, "cell_types", axis=axis, index=index) == SOLID
    height, width = slices[0].shape
    if figsize is None:
        figsize = (4.2 * len(fields), 4.0 * height / max(width, 1) + 0.6)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    cmaps = {"density": "magma", "pressure": "viridis", "divergence": "RdBu_r", "speed": "cividis",
             "cell_types": "Set2"}
    grey = ListedColormap(["#8c8c8c"])
    for ax, field, values in zip(axes, fields, slices):
        kwargs = {}
        if field == "divergence":
            finite = values[np.isfinite(values)]
            limit = float(np.abs(finite).max()) if finite.size else 1.0
            kwargs = {"vmin": -limit, "vmax": limit}
        image = ax.imshow(values, origin="lower", cmap=cmaps[field], interpolation="nearest", **kwargs)
        ax.imshow(np.where(solid, 1.0, np.nan), origin="lower", cmap=grey, interpolation="nearest")
        ax.set_title(field)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, shrink=0.8)
    extras = instance.extras or {}
    if title is None:
        title = f"{extras.get('scene', 'frame')} — frame {instance.index}"
    fig.suptitle(title)
    return fig
