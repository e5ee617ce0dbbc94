"""Matrix-free 5-point (2D) and 7-point (3D) Laplacian kernels on structured grids.

They act on the constant-coefficient Dirichlet matrix of
:func:`linsolve.problems.poisson` (``coeff=None``): unknowns are the grid
cells in C order, ``x`` is passed as an array of the grid's shape (a reshape
of the flat vector, no copy), and with axis weights ``w_a = 1 / h_a**2``

``(A x)[c] = 2 (sum_a w_a) x[c] - sum_a w_a (x[c - e_a] + x[c + e_a])``,

values outside the grid being zero. ``h=None`` in ``poisson`` means every
``w_a = 1`` (diagonal 4 in 2D, 6 in 3D).

Red-black SOR colours a cell red when its index sum is even; red cells only
couple to black ones, so each half-sweep is embarrassingly parallel and a
full sweep (red, then black) equals a sequential SOR sweep in red-first
ordering. These numba versions are the CPU reference for the torch/GPU
red-black kernels. The outer grid axis is split over numba's threads.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["stencil5_apply", "stencil7_apply", "rb_sor_2d", "rb_sor_3d", "rb_sor_2d_color",
           "rb_sor_3d_color", "stencil_apply", "rb_sor_sweep"]


@njit(cache=True, parallel=True)
def stencil5_apply(x, out, wx=1.0, wy=1.0):
    """``out = A x`` for the 2D 5-point Dirichlet Laplacian, ``x`` of shape ``(nx, ny)``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import stencil5_apply
    >>> x = np.random.default_rng(0).standard_normal((6, 5)); out = np.empty_like(x)
    >>> stencil5_apply(x, out)
    >>> A = linsolve.problems.poisson((6, 5))
    >>> bool(np.allclose(out.ravel(), A @ x.ravel()))
    True
    """
    nx, ny = x.shape
    c = 2.0 * (wx + wy)
    zero = np.zeros(ny, dtype=x.dtype)
    for i in prange(nx):
        xc = x[i]
        xm = x[i - 1] if i > 0 else zero
        xp = x[i + 1] if i < nx - 1 else zero
        o = out[i]
        if ny == 1:
            o[0] = c * xc[0] - wx * (xm[0] + xp[0])
            continue
        o[0] = c * xc[0] - wx * (xm[0] + xp[0]) - wy * xc[1]
        for k in range(1, ny - 1):
            o[k] = c * xc[k] - wx * (xm[k] + xp[k]) - wy * (xc[k - 1] + xc[k + 1])
        o[ny - 1] = c * xc[ny - 1] - wx * (xm[ny - 1] + xp[ny - 1]) - wy * xc[ny - 2]


@njit(cache=True, parallel=True)
def stencil7_apply(x, out, wx=1.0, wy=1.0, wz=1.0):
    """``out = A x`` for the 3D 7-point Dirichlet Laplacian, ``x`` of shape ``(nx, ny, nz)``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import stencil7_apply
    >>> x = np.random.default_rng(0).standard_normal((4, 5, 6)); out = np.empty_like(x)
    >>> stencil7_apply(x, out)
    >>> A = linsolve.problems.poisson((4, 5, 6))
    >>> bool(np.allclose(out.ravel(), A @ x.ravel()))
    True
    """
    nx, ny, nz = x.shape
    c = 2.0 * (wx + wy + wz)
    zero = np.zeros(nz, dtype=x.dtype)
    for i in prange(nx):
        for j in range(ny):
            xc = x[i, j]
            xm = x[i - 1, j] if i > 0 else zero
            xp = x[i + 1, j] if i < nx - 1 else zero
            ym = x[i, j - 1] if j > 0 else zero
            yp = x[i, j + 1] if j < ny - 1 else zero
            o = out[i, j]
            if nz == 1:
                o[0] = c * xc[0] - wx * (xm[0] + xp[0]) - wy * (ym[0] + yp[0])
                continue
            o[0] = c * xc[0] - wx * (xm[0] + xp[0]) - wy * (ym[0] + yp[0]) - wz * xc[1]
            for k in range(1, nz - 1):
                o[k] = (c * xc[k] - wx * (xm[k] + xp[k]) - wy * (ym[k] + yp[k])
                        - wz * (xc[k - 1] + xc[k + 1]))
            k = nz - 1
            o[k] = c * xc[k] - wx * (xm[k] + xp[k]) - wy * (ym[k] + yp[k]) - wz * xc[k - 1]


@njit(cache=True, parallel=True)
def rb_sor_2d_color(x, b, omega, color, wx=1.0, wy=1.0):
    """SOR update, in place, of the cells with ``(i + j) % 2 == color`` (2D, 5-point).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels import rb_sor_2d_color
    >>> x = np.zeros((4, 4)); b = np.ones((4, 4))
    >>> rb_sor_2d_color(x, b, 1.0, 0)
    >>> float(x[0, 0]), float(x[0, 1])
    (0.25, 0.0)
    """
    nx, ny = x.shape
    c = 2.0 * (wx + wy)
    w = omega / c
    om1 = 1.0 - omega
    zero = np.zeros(ny, dtype=x.dtype)
    for i in prange(nx):
        xc = x[i]
        bc = b[i]
        xm = x[i - 1] if i > 0 else zero
        xp = x[i + 1] if i < nx - 1 else zero
        k = (i + color) % 2
        if ny == 1:
            if k == 0:
                xc[0] = om1 * xc[0] + w * (bc[0] + wx * (xm[0] + xp[0]))
            continue
        # Boundary cells outside the loop keep the strided interior loop branch-free.
        if k == 0:
            xc[0] = om1 * xc[0] + w * (bc[0] + wx * (xm[0] + xp[0]) + wy * xc[1])
            k = 2
        while k < ny - 1:
            xc[k] = om1 * xc[k] + w * (bc[k] + wx * (xm[k] + xp[k]) + wy * (xc[k - 1] + xc[k + 1]))
            k += 2
        if k == ny - 1:
            xc[k] = om1 * xc[k] + w * (bc[k] + wx * (xm[k] + xp[k]) + wy * xc[k - 1])


@njit(cache=True, parallel=True)
def rb_sor_3d_color(x, b, omega, color, wx=1.0, wy=1.0, wz=1.0):
    """SOR update, in place, of the cells with ``(i + j + k) % 2 == color`` (3D, 7-point).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels import rb_sor_3d_color
    >>> x = np.zeros((3, 3, 3)); b = np.ones((3, 3, 3))
    >>> rb_sor_3d_color(x, b, 1.0, 0)
    >>> round(float(x[0, 0, 0]), 6), float(x[0, 0, 1])
    (0.166667, 0.0)
    """
    nx, ny, nz = x.shape
    c = 2.0 * (wx + wy + wz)
    w = omega / c
    om1 = 1.0 - omega
    zero = np.zeros(nz, dtype=x.dtype)
    for i in prange(nx):
        for j in range(ny):
            xc = x[i, j]
            bc = b[i, j]
            xm = x[i - 1, j] if i > 0 else zero
            xp = x[i + 1, j] if i < nx - 1 else zero
            ym = x[i, j - 1] if j > 0 else zero
            yp = x[i, j + 1] if j < ny - 1 else zero
            k = (i + j + color) % 2
            if nz == 1:
                if k == 0:
                    xc[0] = om1 * xc[0] + w * (bc[0] + wx * (xm[0] + xp[0]) + wy * (ym[0] + yp[0]))
                continue
            # Boundary cells outside the loop keep the strided interior loop branch-free.
            if k == 0:
                s = wx * (xm[0] + xp[0]) + wy * (ym[0] + yp[0]) + wz * xc[1]
                xc[0] = om1 * xc[0] + w * (bc[0] + s)
                k = 2
            while k < nz - 1:
                s = wx * (xm[k] + xp[k]) + wy * (ym[k] + yp[k]) + wz * (xc[k - 1] + xc[k + 1])
                xc[k] = om1 * xc[k] + w * (bc[k] + s)
                k += 2
            if k == nz - 1:
                s = wx * (xm[k] + xp[k]) + wy * (ym[k] + yp[k]) + wz * xc[k - 1]
                xc[k] = om1 * xc[k] + w * (bc[k] + s)


@njit(cache=True)
def rb_sor_2d(x, b, omega, wx=1.0, wy=1.0):
    """One red-black SOR sweep (red cells, then black) in place on a 2D grid.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import rb_sor_2d
    >>> x = np.zeros((16, 16)); b = np.ones((16, 16))
    >>> for _ in range(100):
    ...     rb_sor_2d(x, b, 1.7)
    >>> A = linsolve.problems.poisson((16, 16))
    >>> bool(np.linalg.norm(b.ravel() - A @ x.ravel()) < 1e-8)
    True
    """
    rb_sor_2d_color(x, b, omega, 0, wx, wy)
    rb_sor_2d_color(x, b, omega, 1, wx, wy)


@njit(cache=True)
def rb_sor_3d(x, b, omega, wx=1.0, wy=1.0, wz=1.0):
    """One red-black SOR sweep (red cells, then black) in place on a 3D grid.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import rb_sor_3d
    >>> x = np.zeros((8, 8, 8)); b = np.ones((8, 8, 8))
    >>> for _ in range(60):
    ...     rb_sor_3d(x, b, 1.5)
    >>> A = linsolve.problems.poisson((8, 8, 8))
    >>> bool(np.linalg.norm(b.ravel() - A @ x.ravel()) < 1e-8)
    True
    """
    rb_sor_3d_color(x, b, omega, 0, wx, wy, wz)
    rb_sor_3d_color(x, b, omega, 1, wx, wy, wz)


def _weights(shape, h):
    if h is None:
        return (1.0,) * len(shape)
    spacing = np.broadcast_to(np.asarray(h, dtype=float), (len(shape),))
    return tuple(float(1.0 / s ** 2) for s in spacing)


def stencil_apply(x, out=None, h=None):
    """``A x`` for the Dirichlet Laplacian of ``linsolve.problems.poisson(x.shape, h=h)``.

    Parameters
    ----------
    x : ndarray of shape ``(nx, ny)`` or ``(nx, ny, nz)``
    out : ndarray of the same shape, optional
    h : float or sequence, optional
        Grid spacing, as in :func:`linsolve.problems.poisson`.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import stencil_apply
    >>> x = np.random.default_rng(1).standard_normal((5, 6, 7))
    >>> A = linsolve.problems.poisson((5, 6, 7), h=0.5)
    >>> bool(np.allclose(stencil_apply(x, h=0.5).ravel(), A @ x.ravel()))
    True
    """
    x = np.ascontiguousarray(x)
    if out is None:
        out = np.empty_like(x)
    if out.shape != x.shape or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous array of shape {x.shape}")
    w = _weights(x.shape, h)
    if x.ndim == 2:
        stencil5_apply(x, out, *w)
    elif x.ndim == 3:
        stencil7_apply(x, out, *w)
    else:
        raise ValueError(f"x must be a 2-D or 3-D grid array, got shape {x.shape}")
    return out


def rb_sor_sweep(x, b, omega, h=None, iterations=1):
    """``iterations`` red-black SOR sweeps in place on a 2D or 3D grid array.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels import rb_sor_sweep
    >>> x = np.zeros((12, 12)); b = np.ones((12, 12))
    >>> rb_sor_sweep(x, b, 1.6, iterations=80)
    >>> A = linsolve.problems.poisson((12, 12))
    >>> bool(np.linalg.norm(b.ravel() - A @ x.ravel()) < 1e-8)
    True
    """
    if x.shape != b.shape or x.ndim not in (2, 3):
        raise ValueError(f"x and b must be grid arrays of the same 2-D/3-D shape, got {x.shape}, {b.shape}")
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (it is updated in place)")
    b = np.ascontiguousarray(b)
    w = _weights(x.shape, h)
    kernel = rb_sor_2d if x.ndim == 2 else rb_sor_3d
    for _ in range(int(iterations)):
        kernel(x, b, float(omega), *w)
