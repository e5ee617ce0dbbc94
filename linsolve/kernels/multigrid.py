"""Geometric-multigrid kernels on cell-centred 3D grids (2D grids use a last axis of size 1).

A level stores a symmetric 7-point operator as four arrays of the grid's shape:

* ``diag[i, j, k]``: the diagonal entry;
* ``w0[i, j, k]``, ``w1``, ``w2``: the (non-negative) coupling between cell
  ``(i, j, k)`` and its ``+1`` neighbour along axis 0, 1, 2, i.e. minus the
  off-diagonal entry; zero on the last plane of that axis.

so ``(A x)_c = diag_c x_c - sum_neighbours w x_neighbour``. Grid transfers are
cell-centred trilinear interpolation (weights 3/4 and 1/4 per coarsened axis)
scaled per fine cell by ``scale`` (0 on cells the coarse grid must not touch,
e.g. identity rows of solid cells); restriction is the exact transpose, so a
V-cycle built from these kernels is symmetric. Arrays are C-contiguous
float64 and every kernel writes into a caller-provided output.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["stencil_matvec", "stencil_residual", "rb_sweep", "restrict", "prolong_add",
           "coarsen_operator", "transfer_scale", "coarse_shape", "patch_linear", "csr_to_stencil"]


def coarse_shape(shape):
    """Shape after one coarsening: axes of length 1 stay, others halve (rounded up).

    Examples
    --------
    >>> from linsolve.kernels.multigrid import coarse_shape
    >>> coarse_shape((64, 63, 1))
    (32, 32, 1)
    """
    return tuple(1 if s == 1 else (s + 1) // 2 for s in shape)


@njit(cache=True)
def stencil_matvec(diag, w0, w1, w2, x, out):
    """``out = A x`` for the 7-point operator ``(diag, w0, w1, w2)`` (3D arrays).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import stencil_matvec
    >>> d = np.full((2, 2, 2), 6.0); w = np.zeros((2, 2, 2)); x = np.ones((2, 2, 2))
    >>> out = np.empty_like(x); stencil_matvec(d, w, w, w, x, out); float(out.sum())
    48.0
    """
    n0, n1, n2 = diag.shape
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                s = diag[i, j, k] * x[i, j, k]
                if i > 0:
                    s -= w0[i - 1, j, k] * x[i - 1, j, k]
                if i < n0 - 1:
                    s -= w0[i, j, k] * x[i + 1, j, k]
                if j > 0:
                    s -= w1[i, j - 1, k] * x[i, j - 1, k]
                if j < n1 - 1:
                    s -= w1[i, j, k] * x[i, j + 1, k]
                if k > 0:
                    s -= w2[i, j, k - 1] * x[i, j, k - 1]
                if k < n2 - 1:
                    s -= w2[i, j, k] * x[i, j, k + 1]
                out[i, j, k] = s


@njit(cache=True)
def stencil_residual(diag, w0, w1, w2, x, b, out):
    """``out = b - A x`` for the 7-point operator (3D arrays).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import stencil_residual
    >>> d = np.full((2, 2, 2), 6.0); w = np.zeros((2, 2, 2)); x = np.ones((2, 2, 2))
    >>> out = np.empty_like(x); stencil_residual(d, w, w, w, x, 6 * x, out); float(abs(out).max())
    0.0
    """
    n0, n1, n2 = diag.shape
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                s = b[i, j, k] - diag[i, j, k] * x[i, j, k]
                if i > 0:
                    s += w0[i - 1, j, k] * x[i - 1, j, k]
                if i < n0 - 1:
                    s += w0[i, j, k] * x[i + 1, j, k]
                if j > 0:
                    s += w1[i, j - 1, k] * x[i, j - 1, k]
                if j < n1 - 1:
                    s += w1[i, j, k] * x[i, j + 1, k]
                if k > 0:
                    s += w2[i, j, k - 1] * x[i, j, k - 1]
                if k < n2 - 1:
                    s += w2[i, j, k] * x[i, j, k + 1]
                out[i, j, k] = s


@njit(cache=True)
def rb_sweep(relax, w0, w1, w2, diag, x, b, color, zero_guess):
    """One red-black SOR half-sweep in place on the cells with ``(i+j+k) % 2 == color``.

    ``x_c <- x_c + relax_c (b_c - (A x)_c)``; ``relax`` holds ``omega_c / diag_c``
    per cell (spatially varying relaxation). Cells of one colour only couple
    to the other colour, so the half-sweep is exact Gauss-Seidel order-free.
    With ``zero_guess`` the caller promises ``x == 0`` on entry (the first
    half-sweep of a V-cycle), which skips the neighbour sums.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import rb_sweep
    >>> d = np.full((2, 2, 1), 4.0); w = np.ones((2, 2, 1)); x = np.zeros((2, 2, 1))
    >>> rb_sweep(1.0 / d, w, w, w, d, x, np.ones((2, 2, 1)), 0, True); float(x[0, 0, 0])
    0.25
    """
    n0, n1, n2 = diag.shape
    for i in range(n0):
        for j in range(n1):
            k0 = (color + i + j) % 2
            if n2 == 1 and k0 == 1:
                continue
            for k in range(k0, n2, 2):
                if zero_guess:
                    x[i, j, k] = relax[i, j, k] * b[i, j, k]
                    continue
                s = b[i, j, k] - diag[i, j, k] * x[i, j, k]
                if i > 0:
                    s += w0[i - 1, j, k] * x[i - 1, j, k]
                if i < n0 - 1:
                    s += w0[i, j, k] * x[i + 1, j, k]
                if j > 0:
                    s += w1[i, j - 1, k] * x[i, j - 1, k]
                if j < n1 - 1:
                    s += w1[i, j, k] * x[i, j + 1, k]
                if k > 0:
                    s += w2[i, j, k - 1] * x[i, j, k - 1]
                if k < n2 - 1:
                    s += w2[i, j, k] * x[i, j, k + 1]
                x[i, j, k] += relax[i, j, k] * s


@njit(cache=True)
def _axis_weights(i, n_coarse, coarsened):
    """Coarse indices and trilinear weights of fine index ``i`` along one axis."""
    if not coarsened:
        return i, 1.0, -1, 0.0
    c = i // 2
    other = c - 1 if i % 2 == 0 else c + 1
    if other < 0 or other >= n_coarse:
        return c, 0.75, -1, 0.0
    return c, 0.75, other, 0.25


@njit(cache=True)
def restrict(r, scale, coarse_active, out):
    """``out = P^T r``: transpose of :func:`prolong_add` (``out`` is overwritten).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import restrict
    >>> out = np.empty((1, 1, 1)); restrict(np.ones((2, 2, 2)), np.ones((2, 2, 2)), np.ones((1, 1, 1)), out)
    >>> float(out[0, 0, 0])
    3.375
    """
    n0, n1, n2 = r.shape
    m0, m1, m2 = out.shape
    out[:] = 0.0
    for i in range(n0):
        a0, p0, b0, q0 = _axis_weights(i, m0, n0 != m0)
        for j in range(n1):
            a1, p1, b1, q1 = _axis_weights(j, m1, n1 != m1)
            for k in range(n2):
                v = r[i, j, k] * scale[i, j, k]
                if v == 0.0:
                    continue
                a2, p2, b2, q2 = _axis_weights(k, m2, n2 != m2)
                out[a0, a1, a2] += p0 * p1 * p2 * v
                if b2 >= 0:
                    out[a0, a1, b2] += p0 * p1 * q2 * v
                if b1 >= 0:
                    out[a0, b1, a2] += p0 * q1 * p2 * v
                    if b2 >= 0:
                        out[a0, b1, b2] += p0 * q1 * q2 * v
                if b0 >= 0:
                    out[b0, a1, a2] += q0 * p1 * p2 * v
                    if b2 >= 0:
                        out[b0, a1, b2] += q0 * p1 * q2 * v
                    if b1 >= 0:
                        out[b0, b1, a2] += q0 * q1 * p2 * v
                        if b2 >= 0:
                            out[b0, b1, b2] += q0 * q1 * q2 * v
    for i in range(m0):
        for j in range(m1):
            for k in range(m2):
                out[i, j, k] *= coarse_active[i, j, k]


@njit(cache=True)
def prolong_add(e, scale, coarse_active, x):
    """``x += P e``: trilinear interpolation from the coarse grid, times ``scale`` per fine cell.

    Coarse cells with ``coarse_active == 0`` contribute nothing.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import prolong_add
    >>> x = np.zeros((2, 2, 2)); prolong_add(np.ones((1, 1, 1)), np.ones((2, 2, 2)), np.ones((1, 1, 1)), x)
    >>> float(x[1, 1, 1])
    0.421875
    """
    n0, n1, n2 = x.shape
    m0, m1, m2 = e.shape
    for i in range(n0):
        a0, p0, b0, q0 = _axis_weights(i, m0, n0 != m0)
        for j in range(n1):
            a1, p1, b1, q1 = _axis_weights(j, m1, n1 != m1)
            for k in range(n2):
                s = scale[i, j, k]
                if s == 0.0:
                    continue
                a2, p2, b2, q2 = _axis_weights(k, m2, n2 != m2)
                v = p0 * p1 * p2 * e[a0, a1, a2] * coarse_active[a0, a1, a2]
                if b2 >= 0:
                    v += p0 * p1 * q2 * e[a0, a1, b2] * coarse_active[a0, a1, b2]
                if b1 >= 0:
                    v += p0 * q1 * p2 * e[a0, b1, a2] * coarse_active[a0, b1, a2]
                    if b2 >= 0:
                        v += p0 * q1 * q2 * e[a0, b1, b2] * coarse_active[a0, b1, b2]
                if b0 >= 0:
                    v += q0 * p1 * p2 * e[b0, a1, a2] * coarse_active[b0, a1, a2]
                    if b2 >= 0:
                        v += q0 * p1 * q2 * e[b0, a1, b2] * coarse_active[b0, a1, b2]
                    if b1 >= 0:
                        v += q0 * q1 * p2 * e[b0, b1, a2] * coarse_active[b0, b1, a2]
                        if b2 >= 0:
                            v += q0 * q1 * q2 * e[b0, b1, b2] * coarse_active[b0, b1, b2]
                x[i, j, k] += s * v


@njit(cache=True)
def transfer_scale(active, coarse_active, coarse_shape_arr, normalize, scale):
    """Per-fine-cell factor of the interpolation.

    0 on inactive fine cells (they keep their exact 1x1 inverse). With
    ``normalize`` the trilinear weights of each fine cell are renormalised
    over the *active* coarse cells, so a fine cell next to a wall
    interpolates a constant exactly (Neumann walls); without it missing
    coarse cells act as zero values (Dirichlet).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import transfer_scale
    >>> s = np.empty((2, 2, 2))
    >>> transfer_scale(np.ones((2, 2, 2)), np.ones((1, 1, 1)), np.array([1, 1, 1]), True, s)
    >>> round(float(s[0, 0, 0]), 4)
    2.3704
    """
    n0, n1, n2 = active.shape
    m0, m1, m2 = coarse_shape_arr[0], coarse_shape_arr[1], coarse_shape_arr[2]
    for i in range(n0):
        a0, p0, b0, q0 = _axis_weights(i, m0, n0 != m0)
        for j in range(n1):
            a1, p1, b1, q1 = _axis_weights(j, m1, n1 != m1)
            for k in range(n2):
                if active[i, j, k] == 0.0:
                    scale[i, j, k] = 0.0
                    continue
                if not normalize:
                    scale[i, j, k] = 1.0
                    continue
                a2, p2, b2, q2 = _axis_weights(k, m2, n2 != m2)
                t = 0.0
                for u in range(2):
                    c0 = a0 if u == 0 else b0
                    f0 = p0 if u == 0 else q0
                    if c0 < 0:
                        continue
                    for v in range(2):
                        c1 = a1 if v == 0 else b1
                        f1 = p1 if v == 0 else q1
                        if c1 < 0:
                            continue
                        for w in range(2):
                            c2 = a2 if w == 0 else b2
                            f2 = p2 if w == 0 else q2
                            if c2 < 0:
                                continue
                            t += f0 * f1 * f2 * coarse_active[c0, c1, c2]
                scale[i, j, k] = 1.0 / t if t > 0.0 else 0.0


@njit(cache=True)
def coarsen_operator(diag, w0, w1, w2, active, factor, cdiag, cw0, cw1, cw2, cactive):
    """Coarse 7-point operator by aggregation of 2x2x2 blocks, scaled by ``factor``.

    Coarse face weight = ``factor`` x sum of the fine weights crossing the
    coarse face; coarse excess diagonal (Dirichlet part) = ``factor`` x sum
    of the children's excess ``diag - sum(weights)``. This is
    ``factor * P0^T A P0`` with piecewise-constant ``P0`` restricted to active
    cells; ``factor = 0.5`` matches the energy of smooth modes (the classic
    correction of aggregation coarsening). Inactive fine cells (decoupled
    rows) are ignored; coarse cells without an active child get ``diag = 1``
    and ``cactive = 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import coarsen_operator
    >>> d = np.full((2, 2, 2), 6.0); w = np.zeros((2, 2, 2)); a = np.ones((2, 2, 2))
    >>> cd = np.empty((1, 1, 1)); cw = [np.empty((1, 1, 1)) for _ in range(3)]; ca = np.empty((1, 1, 1))
    >>> coarsen_operator(d, w, w, w, a, 0.5, cd, cw[0], cw[1], cw[2], ca); float(cd[0, 0, 0])
    24.0
    """
    n0, n1, n2 = diag.shape
    m0, m1, m2 = cdiag.shape
    s0 = 2 if m0 != n0 else 1
    s1 = 2 if m1 != n1 else 1
    s2 = 2 if m2 != n2 else 1
    cdiag[:] = 0.0
    cw0[:] = 0.0
    cw1[:] = 0.0
    cw2[:] = 0.0
    cactive[:] = 0.0
    for i in range(n0):
        I = i // s0
        for j in range(n1):
            J = j // s1
            for k in range(n2):
                K = k // s2
                if active[i, j, k] == 0.0:
                    continue
                cactive[I, J, K] = 1.0
                excess = diag[i, j, k]
                if i < n0 - 1:
                    excess -= w0[i, j, k]
                    if (i + 1) // s0 != I:
                        cw0[I, J, K] += w0[i, j, k]
                if i > 0:
                    excess -= w0[i - 1, j, k]
                if j < n1 - 1:
                    excess -= w1[i, j, k]
                    if (j + 1) // s1 != J:
                        cw1[I, J, K] += w1[i, j, k]
                if j > 0:
                    excess -= w1[i, j - 1, k]
                if k < n2 - 1:
                    excess -= w2[i, j, k]
                    if (k + 1) // s2 != K:
                        cw2[I, J, K] += w2[i, j, k]
                if k > 0:
                    excess -= w2[i, j, k - 1]
                cdiag[I, J, K] += excess
    for I in range(m0):
        for J in range(m1):
            for K in range(m2):
                cw0[I, J, K] *= factor
                cw1[I, J, K] *= factor
                cw2[I, J, K] *= factor
                cdiag[I, J, K] *= factor
    for I in range(m0):
        for J in range(m1):
            for K in range(m2):
                t = cw0[I, J, K] + cw1[I, J, K] + cw2[I, J, K]
                if I > 0:
                    t += cw0[I - 1, J, K]
                if J > 0:
                    t += cw1[I, J - 1, K]
                if K > 0:
                    t += cw2[I, J, K - 1]
                cdiag[I, J, K] += t
                if cactive[I, J, K] == 0.0 or not cdiag[I, J, K] > 0.0:
                    cactive[I, J, K] = 0.0
                    cdiag[I, J, K] = 1.0


@njit(cache=True)
def patch_linear(types, table, bias, out):
    """``out[c] = bias + sum_o table[types[c + o], o]`` over the 27 offsets ``o`` of a 3x3x3 patch.

    A linear function of the one-hot cell-type patch (Lan et al., 2024 style
    kernel conditioning). ``types`` holds codes 0..2 (FLUID, SOLID, AIR);
    cells outside the grid get code 3, so ``table`` has shape ``(4, 27)``
    with offsets in C order of ``(di, dj, dk)`` in ``{-1, 0, 1}^3``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import patch_linear
    >>> table = np.zeros((4, 27)); table[3, :] = 1.0
    >>> out = np.empty((1, 1, 1)); patch_linear(np.zeros((1, 1, 1), np.int8), table, 0.5, out)
    >>> float(out[0, 0, 0])
    26.5
    """
    n0, n1, n2 = types.shape
    # Pad once with the "outside" code so the 27-point loop has no bounds checks.
    padded = np.full((n0 + 2, n1 + 2, n2 + 2), 3, dtype=np.int64)
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                padded[i + 1, j + 1, k + 1] = types[i, j, k]
    for i in range(n0):
        for j in range(n1):
            for k in range(n2):
                s = bias
                o = 0
                for di in range(3):
                    for dj in range(3):
                        for dk in range(3):
                            s += table[padded[i + di, j + dj, k + dk], o]
                            o += 1
                out[i, j, k] = s


@njit(cache=True)
def csr_to_stencil(indptr, indices, data, n0, n1, n2, diag, w0, w1, w2, lo0, lo1, lo2):
    """Split a CSR grid matrix into 7-point stencil arrays in one pass (flat arrays of length n).

    ``w_a[i] = -A[i, i + s_a]`` (upper couplings), ``lo_a[i] = -A[i, i - s_a]``
    (lower, for the symmetry check by the caller). Returns ``-1`` when every
    entry belongs to the stencil, else the row of the first entry that does
    not (including couplings that wrap around a grid line).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels.multigrid import csr_to_stencil
    >>> A = linsolve.problems.poisson((3, 3, 3))
    >>> arrs = [np.zeros(27) for _ in range(7)]
    >>> int(csr_to_stencil(A.indptr, A.indices, A.data, 3, 3, 3, *arrs)), float(arrs[1][0])
    (-1, 1.0)
    """
    s0 = n1 * n2
    s1 = n2
    i = -1
    for a in range(n0):
        for j in range(n1):
            for k in range(n2):
                i += 1
                for p in range(indptr[i], indptr[i + 1]):
                    v = data[p]
                    if v == 0.0:
                        continue
                    off = indices[p] - i
                    if off == 0:
                        diag[i] += v
                    elif off == 1 and k < n2 - 1:
                        w2[i] -= v
                    elif off == -1 and k > 0:
                        lo2[i] -= v
                    elif off == s1 and j < n1 - 1:
                        w1[i] -= v
                    elif off == -s1 and j > 0:
                        lo1[i] -= v
                    elif off == s0 and a < n0 - 1:
                        w0[i] -= v
                    elif off == -s0 and a > 0:
                        lo0[i] -= v
                    else:
                        return i
    return -1
