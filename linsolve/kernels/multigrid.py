"""Structured-grid multigrid kernels: stencil operators on padded grids, operator-dependent transfers,
Galerkin coarse operators and multicolour smoothers.

Layout (shared by every kernel here)
------------------------------------
A level lives on a grid of shape ``(m0, m1, m2)``; a 2D grid ``(nx, ny)`` is
stored as ``(1, nx, ny)`` so that the innermost loop always runs along a long
axis. Arrays are flat over the *padded* grid ``(p0, p1, p2)`` with
``p_a = m_a + 2 g_a`` and ``g_a = 1`` when ``m_a > 1`` (else 0): one ghost
layer whose entries stay 0, so stencil loops need no bounds checks.

A symmetric stencil operator is ``(diag, coef, offs, dvec)``: ``offs[k]`` is
the (positive) flat offset of the k-th "upper" neighbour, ``dvec[k]`` its grid
offset in ``{-1, 0, 1}^3``, ``coef[k, i] = A[i, i + offs[k]]`` and, by
symmetry, ``A[i, i - offs[k]] = coef[k, i - offs[k]]``. A 7-point operator has
3 upper offsets, a 27-point one 13 (2D: 2 and 4).

Transfers
---------
Coarsening keeps every other cell along the coarsened axes (``caxes``): fine
cell ``u`` with even coordinates on those axes *is* coarse cell ``u // 2``.
The interpolation of every other fine cell is operator-dependent (Dendy's
black-box multigrid, de Zeeuw's MGD9V): the stencil is collapsed onto the
axes along which the cell is "odd" and the cell takes the weighted mean of
its already-interpolated neighbours there. ``W[delta, f]`` holds the weight of
the coarse corner ``u // 2 + delta`` (``delta`` a 3-bit mask over the odd
axes); cells the recursion cannot reach (no coupling to any coarse cell, e.g.
inside a one-cell-wide channel) get the missing weight on their own block
corner, so constants are interpolated exactly on Neumann regions. Restriction
is the transpose; coarse operators are Galerkin (``R A P``, at most 27 points).

Kernels take arrays, write into caller-provided outputs, validate nothing and
know nothing of learning or of the Krylov method that uses them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["layout", "coarse_shape", "upper_offsets", "stencil_matvec", "stencil_residual", "point_smooth", "rb_smooth",
           "line_smooth", "residual_restrict", "rb_descend", "rb_ascend", "interpolation_weights", "galerkin", "restrict", "prolong_add",
           "csr_to_stencil", "stencil_pattern", "offset_table", "axis_strength", "unreached_from_dirichlet", "stencil_features", "to_padded",
           "from_padded", "N_FEATURES"]


# ----------------------------------------------------------------------------- layout (plain Python)

def layout(shape):
    """``(grid3, pshape, ghost)`` of a 2D/3D grid: canonical 3D shape, padded shape, ghost widths.

    Examples
    --------
    >>> from linsolve.kernels.multigrid import layout
    >>> layout((8, 6))
    ((1, 8, 6), (1, 10, 8), (0, 1, 1))
    """
    grid3 = (1,) * (3 - len(shape)) + tuple(int(s) for s in shape)
    ghost = tuple(1 if m > 1 else 0 for m in grid3)
    return grid3, tuple(m + 2 * g for m, g in zip(grid3, ghost)), ghost


def coarse_shape(grid3, caxes):
    """Grid after coarsening the axes flagged in ``caxes`` (every other cell kept, rounded up).

    Examples
    --------
    >>> from linsolve.kernels.multigrid import coarse_shape
    >>> coarse_shape((1, 64, 63), (False, True, True))
    (1, 32, 32)
    """
    return tuple((m + 1) // 2 if c else m for m, c in zip(grid3, caxes))


def upper_offsets(grid3, stencil="box"):
    """``(offs, dvec)`` of the upper neighbours: ``"axis"`` (5/7-point) or ``"box"`` (9/27-point).

    Examples
    --------
    >>> from linsolve.kernels.multigrid import upper_offsets
    >>> offs, dvec = upper_offsets((1, 4, 4), "axis")
    >>> offs.tolist(), dvec.tolist()
    ([1, 6], [[0, 0, 1], [0, 1, 0]])
    """
    _, pshape, _ = layout(grid3)
    strides = (pshape[1] * pshape[2], pshape[2], 1)
    offs, dvec = [], []
    for d0 in (-1, 0, 1):
        for d1 in (-1, 0, 1):
            for d2 in (-1, 0, 1):
                d = (d0, d1, d2)
                if any(v != 0 and m == 1 for v, m in zip(d, grid3)):
                    continue
                if stencil == "axis" and sum(abs(v) for v in d) != 1:
                    continue
                o = d0 * strides[0] + d1 * strides[1] + d2 * strides[2]
                if o > 0:
                    offs.append(o)
                    dvec.append(d)
    order = np.argsort(offs)
    return np.asarray(offs, dtype=np.int64)[order], np.asarray(dvec, dtype=np.int64).reshape(-1, 3)[order]


def to_padded(values, grid3, dtype=np.float64):
    """Flat padded copy of an array of the grid's size (ghosts 0)."""
    _, pshape, ghost = layout(grid3)
    out = np.zeros(pshape, dtype=dtype)
    out[tuple(slice(g, g + m) for g, m in zip(ghost, grid3))] = np.asarray(values).reshape(grid3)
    return out.ravel()


def from_padded(values, grid3):
    """The interior of a flat padded array, as a flat C-order array of the grid's size."""
    _, pshape, ghost = layout(grid3)
    return values.reshape(pshape)[tuple(slice(g, g + m) for g, m in zip(ghost, grid3))].ravel()


# ----------------------------------------------------------------------------- operator application
# Loops run over grid rows (the innermost axis). Inside a row, every array is taken as a 1-D view and the
# neighbour offsets are the outer loop, so the inner loops are plain (or stride-2) streams that LLVM
# vectorises; fastmath only licenses that reordering of independent products.

@njit(cache=True, fastmath=True)
def _row_residual(diag, coef, offs, x, b, lo, hi, step, out):
    """``out[m] = (b - A x)[lo + m*step]`` for the cells ``lo, lo + step, ... < hi`` of one row."""
    bs = b[lo:hi:step]
    xs = x[lo:hi:step]
    ds = diag[lo:hi:step]
    m = bs.shape[0]
    for t in range(m):
        out[t] = bs[t] - ds[t] * xs[t]
    for k in range(offs.shape[0]):
        o = offs[k]
        cu = coef[k, lo:hi:step]
        cl = coef[k, lo - o:hi - o:step]
        xu = x[lo + o:hi + o:step]
        xl = x[lo - o:hi - o:step]
        for t in range(m):
            out[t] -= cu[t] * xu[t] + cl[t] * xl[t]
    return m


@njit(cache=True)
def stencil_matvec(diag, coef, offs, pshape, ghost, x, out):
    """``out = A x`` on the interior of the padded grid (ghost entries of ``out`` untouched).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.kernels.multigrid import layout, upper_offsets, stencil_matvec, to_padded
    >>> g3, ps, gh = layout((3, 3)); offs, _ = upper_offsets(g3, "axis")
    >>> d = to_padded(np.full(9, 4.0), g3); c = np.stack([to_padded(-np.ones(9), g3)] * 2)
    >>> c[0, to_padded(np.arange(9) % 3 == 2, g3) > 0] = 0.0; c[1, to_padded(np.arange(9) >= 6, g3) > 0] = 0.0
    >>> out = np.zeros_like(d); stencil_matvec(d, c, offs, np.array(ps), np.array(gh), to_padded(np.ones(9), g3), out)
    >>> float(out.sum())
    12.0
    """
    zero = np.zeros_like(x)
    stencil_residual(diag, coef, offs, pshape, ghost, x, zero, out)
    for i in range(out.shape[0]):
        out[i] = -out[i]


@njit(cache=True)
def stencil_residual(diag, coef, offs, pshape, ghost, x, b, out):
    """``out = b - A x`` on the interior of the padded grid."""
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    tmp = np.empty(n2, dtype=out.dtype)
    for row in range(n0 * n1):
        lo = ((row // n1 + ghost[0]) * p1 + row % n1 + ghost[1]) * p2 + ghost[2]
        _row_residual(diag, coef, offs, x, b, lo, lo + n2, 1, tmp)
        out[lo:lo + n2] = tmp


# ----------------------------------------------------------------------------- smoothers

@njit(cache=True, fastmath=True)
def _relax_row(diag, coef, offs, relax, x, b, lo, hi, step, tmp, zero_guess):
    """Gauss-Seidel update of the cells ``lo, lo + step, ... < hi`` (mutually uncoupled) of one row.

    With ``step == 2`` the residual of the whole row is formed first (one
    contiguous, vectorised pass; the other colour's cells are not updated),
    which beats a strided residual on every row length we use.
    """
    xs = x[lo:hi:step]
    rs = relax[lo:hi:step]
    if zero_guess:
        bs = b[lo:hi:step]
        for t in range(xs.shape[0]):
            xs[t] = rs[t] * bs[t]
        return
    if step == 2 and hi - lo > 2:
        _row_residual(diag, coef, offs, x, b, lo, hi, 1, tmp)
        m = xs.shape[0]
        for t in range(m):
            xs[t] += rs[t] * tmp[2 * t]
        return
    m = _row_residual(diag, coef, offs, x, b, lo, hi, step, tmp)
    for t in range(m):
        xs[t] += rs[t] * tmp[t]


@njit(cache=True)
def point_smooth(diag, coef, offs, relax, pshape, ghost, x, b, colors, zero_guess):
    """Multicolour Gauss-Seidel: one step per colour, in the order of ``colors``.

    A colour is a 3-bit mask of coordinate parities (bit 2: axis 0, bit 1:
    axis 1, bit 0: axis 2); cells of one colour are two apart along every axis
    and never couple through a 9/27-point stencil. Colours ``-1`` / ``-2`` are
    the red / black cells (even / odd coordinate sum), exact for 5/7-point
    operators. ``x_c += relax_c (b_c - (A x)_c)``, ``relax = omega / diag``.
    ``zero_guess`` promises ``x == 0`` on entry (the first step of a cycle).
    """
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    tmp = np.empty(n2, dtype=x.dtype)
    first = zero_guess
    for color in colors:
        for u0 in range(n0):
            for u1 in range(n1):
                if color < 0:
                    start = (-1 - color + u0 + u1) % 2
                else:
                    if (u0 & 1) != ((color >> 2) & 1) or (u1 & 1) != ((color >> 1) & 1):
                        continue
                    start = color & 1
                if start >= n2:
                    continue
                lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
                _relax_row(diag, coef, offs, relax, x, b, lo + start, lo + n2, 2 if n2 > 1 else 1, tmp, first)
        first = False


@njit(cache=True)
def _rb_plane(diag, coef, offs, relax, pshape, ghost, x, b, color, u0, u1_lo, u1_hi, tmp, zero_guess):
    p1, p2 = pshape[1], pshape[2]
    n2 = p2 - 2 * ghost[2]
    for u1 in range(u1_lo, u1_hi):
        start = (color + u0 + u1) & 1
        if start >= n2:
            continue
        lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
        _relax_row(diag, coef, offs, relax, x, b, lo + start, lo + n2, 2 if n2 > 1 else 1, tmp, zero_guess)


@njit(cache=True)
def rb_smooth(diag, coef, offs, relax, pshape, ghost, x, b, first, zero_guess):
    """One red-black Gauss-Seidel sweep (colour ``first`` then the other) of a 5/7-point operator.

    Red cells have an even coordinate sum. The second colour trails the first
    by one plane (one row in 2D), so both half-sweeps share one pass over
    memory; the result is exactly that of two full half-sweeps. ``zero_guess``
    promises ``x == 0`` on entry.
    """
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    n2 = pshape[2] - 2 * ghost[2]
    second = 1 - first
    tmp = np.empty(n2, dtype=x.dtype)
    if n0 > 1:
        for t in range(n0 + 1):
            if t < n0:
                _rb_plane(diag, coef, offs, relax, pshape, ghost, x, b, first, t, 0, n1, tmp, zero_guess)
            if t > 0:
                _rb_plane(diag, coef, offs, relax, pshape, ghost, x, b, second, t - 1, 0, n1, tmp, False)
    else:
        for t in range(n1 + 1):
            if t < n1:
                _rb_plane(diag, coef, offs, relax, pshape, ghost, x, b, first, 0, t, t + 1, tmp, zero_guess)
            if t > 0:
                _rb_plane(diag, coef, offs, relax, pshape, ghost, x, b, second, 0, t - 1, t, tmp, False)


@njit(cache=True)
def line_smooth(diag, coef, offs, pshape, x, b, axis_stride, k_axis, seg_start, seg_len, seg_color, colors, omega):
    """Block Gauss-Seidel on line segments (a tridiagonal solve per segment), colour by colour.

    Segment ``t`` starts at padded index ``seg_start[t]``, runs ``seg_len[t]``
    cells along the axis of stride ``axis_stride`` and has colour
    ``seg_color[t]``; colours are processed in the order of ``colors`` and
    segments of one colour do not couple. ``k_axis`` is the index of the
    in-line offset in ``offs``; ``omega`` in (0, 2) relaxes the block update
    (block SOR). A pivot that vanishes (a segment decoupled from everything,
    e.g. a closed pocket) is replaced by the diagonal, which keeps the block
    solve symmetric positive definite.
    """
    s = axis_stride
    nk = offs.shape[0]
    maxlen = 1
    for t in range(seg_len.shape[0]):
        maxlen = max(maxlen, seg_len[t])
    lower = np.empty(maxlen, dtype=x.dtype)
    upper = np.empty(maxlen, dtype=x.dtype)
    dd = np.empty(maxlen, dtype=x.dtype)
    rhs = np.empty(maxlen, dtype=x.dtype)
    for color in colors:
        for t in range(seg_start.shape[0]):
            if seg_color[t] != color:
                continue
            start = seg_start[t]
            length = seg_len[t]
            for q in range(length):
                i = start + q * s
                dd[q] = diag[i]
                r = b[i] - diag[i] * x[i]
                for k in range(nk):
                    o = offs[k]
                    r -= coef[k, i] * x[i + o] + coef[k, i - o] * x[i - o]
                # right-hand side of the block system for the correction; in-line couplings stay on the left
                rhs[q] = r
                lower[q] = coef[k_axis, i - s] if q > 0 else 0.0
                upper[q] = coef[k_axis, i] if q < length - 1 else 0.0
            for q in range(length):
                m = dd[q]
                if q > 0:
                    m -= lower[q] * upper[q - 1]
                    rhs[q] -= lower[q] * rhs[q - 1]
                if not m > 1e-14 * dd[q]:
                    m = dd[q] if dd[q] > 0.0 else 1.0
                upper[q] /= m
                rhs[q] /= m
            for q in range(length - 2, -1, -1):
                rhs[q] -= upper[q] * rhs[q + 1]
            for q in range(length):
                if dd[q] > 0.0:
                    x[start + q * s] += omega * rhs[q]


# ----------------------------------------------------------------------------- transfers

@njit(cache=True)
def _coarse_base(u, c):
    return u // 2 if c else u


@njit(cache=True)
def interpolation_weights(diag, coef, offs, dvec, active, pshape, ghost, caxes, W):
    """Operator-dependent interpolation weights ``W[delta, f]`` (see the module docstring).

    ``active[f]`` is 1 on cells that couple to a neighbour, else 0 (their rows
    of P stay 0: decoupled cells are solved exactly by the smoother). Cells
    are processed by their number of odd coordinates, so every cell reads
    only neighbours interpolated before it.
    """
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    sfull = np.array([p1 * p2, p2, 1])
    nk = offs.shape[0]
    rho = np.zeros(W.shape[1])  # row sums of the Neumann-version interpolation (for the fallback)
    W[:, :] = 0.0
    # pass 0: coarse cells
    for u0 in range(0, n0, 2 if caxes[0] else 1):
        for u1 in range(0, n1, 2 if caxes[1] else 1):
            base = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            for u2 in range(0, n2, 2 if caxes[2] else 1):
                i = base + u2
                if active[i] != 0.0:
                    W[0, i] = 1.0
                    rho[i] = 1.0
    # classes by odd-axis mask, fewest odd axes first: every cell reads only earlier classes
    for oddmask in (1, 2, 4, 3, 5, 6, 7):
        if ((oddmask & 4) and not caxes[0]) or ((oddmask & 2) and not caxes[1]) or ((oddmask & 1) and not caxes[2]):
            continue
        odd0 = (oddmask & 4) != 0
        odd1 = (oddmask & 2) != 0
        odd2 = (oddmask & 1) != 0
        for u0 in range(1 if odd0 else 0, n0, 2 if caxes[0] else 1):
            for u1 in range(1 if odd1 else 0, n1, 2 if caxes[1] else 1):
                base = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
                for u2 in range(1 if odd2 else 0, n2, 2 if caxes[2] else 1):
                    i = base + u2
                    if active[i] == 0.0:
                        continue
                    # collapsed centre: entries with no displacement along the odd axes
                    den = diag[i]
                    rowsum = diag[i]
                    for k in range(nk):
                        v = coef[k, i] + coef[k, i - offs[k]]
                        rowsum += v
                        if (odd0 and dvec[k, 0] != 0) or (odd1 and dvec[k, 1] != 0) or (odd2 and dvec[k, 2] != 0):
                            continue
                        den += v
                    den_n = den - rowsum
                    total = 0.0
                    for k in range(2 * nk):
                        kk = k if k < nk else k - nk
                        sign = 1 if k < nk else -1
                        v = coef[kk, i] if k < nk else coef[kk, i - offs[kk]]
                        if v == 0.0:
                            continue
                        e0 = sign * dvec[kk, 0] if odd0 else 0
                        e1 = sign * dvec[kk, 1] if odd1 else 0
                        e2 = sign * dvec[kk, 2] if odd2 else 0
                        if e0 == 0 and e1 == 0 and e2 == 0:
                            continue
                        g = i + e0 * sfull[0] + e1 * sfull[1] + e2 * sfull[2]
                        if den_n > 0.0:
                            total -= v / den_n * rho[g]
                        if not den > 0.0:
                            continue
                        w = -v / den
                        # bits fixed by the step (the side it goes to), free on odd axes not stepped along
                        fixed = (4 if e0 > 0 else 0) | (2 if e1 > 0 else 0) | (1 if e2 > 0 else 0)
                        free = oddmask & ~((4 if e0 != 0 else 0) | (2 if e1 != 0 else 0) | (1 if e2 != 0 else 0))
                        sub = free
                        while True:
                            W[fixed | sub, i] += w * W[sub, g]
                            if sub == 0:
                                break
                            sub = (sub - 1) & free
                    deficit = 1.0 - total
                    if deficit > 1e-12:
                        W[0, i] += min(deficit, 1.0)
                        total = 1.0
                    rho[i] = total


@njit(cache=True)
def galerkin(diag, coef, offs, dvec, W, pshape, ghost, caxes, cpshape, cghost, coffs_index, cdiag, ccoef):
    """Accumulate the coarse operator ``P^T A P`` (diagonal and upper half) into ``cdiag`` / ``ccoef``.

    Runs over the fine cells once: row ``f`` of ``A P`` is formed in a
    27-entry local array (offsets around ``f // 2``, its nonzero slots listed
    as they appear) and scattered into the rows of the coarse cells ``f``
    interpolates from. ``coffs_index`` maps a coarse offset
    ``(e0+1)*9+(e1+1)*3+e2+1`` to its index in the coarse ``offs`` (-1 for
    lower offsets, which symmetry gives). The outputs must be zero on entry.
    """
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    q1, q2 = cpshape[1], cpshape[2]
    s0, s1 = p1 * p2, p2
    nk = offs.shape[0]
    # target[q * 8 + bits]: where AP slot q lands in the row of corner ``bits`` (-2 diagonal, -1 lower: skip)
    target = np.full(27 * 8, -1, np.int64)
    for q in range(27):
        for bits in range(8):
            e0 = q // 9 - 1 - ((bits >> 2) & 1)
            e1 = (q // 3) % 3 - 1 - ((bits >> 1) & 1)
            e2 = q % 3 - 1 - (bits & 1)
            if e0 == 0 and e1 == 0 and e2 == 0:
                target[q * 8 + bits] = -2
            elif e0 >= -1 and e1 >= -1 and e2 >= -1:
                target[q * 8 + bits] = coffs_index[(e0 + 1) * 9 + (e1 + 1) * 3 + e2 + 1]
    ap = np.zeros(27)
    slots = np.empty(27, np.int64)
    cshift = np.empty(8, np.int64)
    for bits in range(8):
        cshift[bits] = ((bits >> 2) & 1) * q1 * q2 + ((bits >> 1) & 1) * q2 + (bits & 1)
    for u0 in range(n0):
        bf0 = _coarse_base(u0, caxes[0])
        odd0 = caxes[0] and (u0 & 1) == 1
        for u1 in range(n1):
            bf1 = _coarse_base(u1, caxes[1])
            odd1 = caxes[1] and (u1 & 1) == 1
            rowbase = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            for u2 in range(n2):
                i = rowbase + u2
                odd2 = caxes[2] and (u2 & 1) == 1
                fmask = (4 if odd0 else 0) | (2 if odd1 else 0) | (1 if odd2 else 0)
                # fine cells that interpolate from nothing (inactive) add nothing to P^T A P
                anyw = False
                sub = fmask
                while True:
                    if W[sub, i] != 0.0:
                        anyw = True
                        break
                    if sub == 0:
                        break
                    sub = (sub - 1) & fmask
                if not anyw:
                    continue
                bf2 = _coarse_base(u2, caxes[2])
                nslots = 0
                for k in range(-1, 2 * nk):
                    if k == -1:
                        v = diag[i]
                        d0 = 0
                        d1 = 0
                        d2 = 0
                    elif k < nk:
                        v = coef[k, i]
                        d0 = dvec[k, 0]
                        d1 = dvec[k, 1]
                        d2 = dvec[k, 2]
                    else:
                        kk = k - nk
                        v = coef[kk, i - offs[kk]]
                        d0 = -dvec[kk, 0]
                        d1 = -dvec[kk, 1]
                        d2 = -dvec[kk, 2]
                    if v == 0.0:
                        continue
                    g = i + d0 * s0 + d1 * s1 + d2
                    g0 = u0 + d0
                    g1 = u1 + d1
                    g2 = u2 + d2
                    gmask = (4 if caxes[0] and (g0 & 1) == 1 else 0) | (2 if caxes[1] and (g1 & 1) == 1 else 0) \
                        | (1 if caxes[2] and (g2 & 1) == 1 else 0)
                    cq = (_coarse_base(g0, caxes[0]) - bf0 + 1) * 9 + (_coarse_base(g1, caxes[1]) - bf1 + 1) * 3 \
                        + _coarse_base(g2, caxes[2]) - bf2 + 1
                    sub = gmask
                    while True:
                        wgt = W[sub, g]
                        if wgt != 0.0:
                            q = cq + ((sub >> 2) & 1) * 9 + ((sub >> 1) & 1) * 3 + (sub & 1)
                            if ap[q] == 0.0:
                                slots[nslots] = q
                                nslots += 1
                            ap[q] += v * wgt
                        if sub == 0:
                            break
                        sub = (sub - 1) & gmask
                cb = ((bf0 + cghost[0]) * q1 + bf1 + cghost[1]) * q2 + bf2 + cghost[2]
                sub = fmask
                while True:
                    pw = W[sub, i]
                    if pw != 0.0:
                        ic = cb + cshift[sub]
                        for t in range(nslots):
                            q = slots[t]
                            kc = target[q * 8 + sub]
                            if kc == -2:
                                cdiag[ic] += pw * ap[q]
                            elif kc >= 0:
                                ccoef[kc, ic] += pw * ap[q]
                    if sub == 0:
                        break
                    sub = (sub - 1) & fmask
                for t in range(nslots):
                    ap[slots[t]] = 0.0


@njit(cache=True, fastmath=True)
def _scatter_row(W, v, lo, n, step, rowmask, oddbit, crow, q1, q2, out):
    """``out[crow + j + corner] += W[sub, lo + j*step] * v[j]`` over the corners of the row's cells."""
    mask = rowmask | oddbit
    sub = mask
    while True:
        off = crow + ((sub >> 2) & 1) * q1 * q2 + ((sub >> 1) & 1) * q2 + (sub & 1)
        ws = W[sub, lo:lo + n * step:step]
        os = out[off:off + n]
        for j in range(n):
            os[j] += ws[j] * v[j]
        if sub == 0:
            break
        sub = (sub - 1) & mask


@njit(cache=True, fastmath=True)
def _gather_row(W, e, lo, n, step, rowmask, oddbit, crow, q1, q2, acc):
    """``acc[j] = sum over corners of W[sub, lo + j*step] * e[crow + j + corner]``."""
    for j in range(n):
        acc[j] = 0.0
    mask = rowmask | oddbit
    sub = mask
    while True:
        off = crow + ((sub >> 2) & 1) * q1 * q2 + ((sub >> 1) & 1) * q2 + (sub & 1)
        ws = W[sub, lo:lo + n * step:step]
        es = e[off:off + n]
        for j in range(n):
            acc[j] += ws[j] * es[j]
        if sub == 0:
            break
        sub = (sub - 1) & mask


@njit(cache=True)
def _transfer_rows(pshape, ghost, caxes, cpshape, cghost):
    return (pshape[0] - 2 * ghost[0], pshape[1] - 2 * ghost[1], pshape[2] - 2 * ghost[2],
            cpshape[1], cpshape[2], 2 if caxes[2] else 1)


@njit(cache=True)
def residual_restrict(diag, coef, offs, x, b, W, pshape, ghost, caxes, cpshape, cghost, out):
    """``out = P^T (b - A x)`` in one pass (the fine residual is never stored)."""
    n0, n1, n2, q1, q2, step = _transfer_rows(pshape, ghost, caxes, cpshape, cghost)
    p1, p2 = pshape[1], pshape[2]
    out[:] = 0.0
    tmp = np.empty(n2, dtype=out.dtype)
    half = np.empty(n2, dtype=out.dtype)
    for u0 in range(n0):
        c0 = _coarse_base(u0, caxes[0]) + cghost[0]
        m0 = 4 if caxes[0] and (u0 & 1) == 1 else 0
        for u1 in range(n1):
            c1 = _coarse_base(u1, caxes[1]) + cghost[1]
            rowmask = m0 | (2 if caxes[1] and (u1 & 1) == 1 else 0)
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            crow = (c0 * q1 + c1) * q2 + cghost[2]
            _row_residual(diag, coef, offs, x, b, lo, lo + n2, 1, tmp)
            if step == 1:
                _scatter_row(W, tmp, lo, n2, 1, rowmask, 0, crow, q1, q2, out)
                continue
            ne = (n2 + 1) // 2
            for j in range(ne):
                half[j] = tmp[2 * j]
            _scatter_row(W, half, lo, ne, 2, rowmask, 0, crow, q1, q2, out)
            no = n2 // 2
            for j in range(no):
                half[j] = tmp[2 * j + 1]
            _scatter_row(W, half, lo + 1, no, 2, rowmask, 1, crow, q1, q2, out)


@njit(cache=True)
def restrict(W, r, pshape, ghost, caxes, cpshape, cghost, out):
    """``out = P^T r`` (``out`` is overwritten on the coarse interior)."""
    n0, n1, n2, q1, q2, step = _transfer_rows(pshape, ghost, caxes, cpshape, cghost)
    p1, p2 = pshape[1], pshape[2]
    out[:] = 0.0
    for u0 in range(n0):
        c0 = _coarse_base(u0, caxes[0]) + cghost[0]
        m0 = 4 if caxes[0] and (u0 & 1) == 1 else 0
        for u1 in range(n1):
            c1 = _coarse_base(u1, caxes[1]) + cghost[1]
            rowmask = m0 | (2 if caxes[1] and (u1 & 1) == 1 else 0)
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            crow = (c0 * q1 + c1) * q2 + cghost[2]
            if step == 1:
                _scatter_row(W, r[lo:lo + n2], lo, n2, 1, rowmask, 0, crow, q1, q2, out)
            else:
                _scatter_row(W, r[lo:lo + n2:2], lo, (n2 + 1) // 2, 2, rowmask, 0, crow, q1, q2, out)
                _scatter_row(W, r[lo + 1:lo + n2:2], lo + 1, n2 // 2, 2, rowmask, 1, crow, q1, q2, out)


@njit(cache=True)
def prolong_add(W, e, scale, pshape, ghost, caxes, cpshape, cghost, x):
    """``x += scale * P e`` on the fine interior."""
    n0, n1, n2, q1, q2, step = _transfer_rows(pshape, ghost, caxes, cpshape, cghost)
    p1, p2 = pshape[1], pshape[2]
    acc = np.empty(n2, dtype=x.dtype)
    for u0 in range(n0):
        c0 = _coarse_base(u0, caxes[0]) + cghost[0]
        m0 = 4 if caxes[0] and (u0 & 1) == 1 else 0
        for u1 in range(n1):
            c1 = _coarse_base(u1, caxes[1]) + cghost[1]
            rowmask = m0 | (2 if caxes[1] and (u1 & 1) == 1 else 0)
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            crow = (c0 * q1 + c1) * q2 + cghost[2]
            if step == 1:
                _gather_row(W, e, lo, n2, 1, rowmask, 0, crow, q1, q2, acc)
                xs = x[lo:lo + n2]
                for j in range(n2):
                    xs[j] += scale * acc[j]
                continue
            ne = (n2 + 1) // 2
            _gather_row(W, e, lo, ne, 2, rowmask, 0, crow, q1, q2, acc)
            xs = x[lo:lo + n2:2]
            for j in range(ne):
                xs[j] += scale * acc[j]
            no = n2 // 2
            _gather_row(W, e, lo + 1, no, 2, rowmask, 1, crow, q1, q2, acc)
            xs = x[lo + 1:lo + n2:2]
            for j in range(no):
                xs[j] += scale * acc[j]


# ----------------------------------------------------------------------------- fused sweeps
# On a 5/7-point level without line blocks the whole descent (red-black pre-smoothing from x = 0, residual,
# restriction) and the whole ascent (prolongation, black-red post-smoothing) each become one pass over the
# level's memory: the steps trail each other by one slab (a plane in 3D, a row in 2D), which is all the
# 7-point coupling needs, so the result is exactly that of the separate steps.

@njit(cache=True)
def _slab_rows(pshape, ghost, slab):
    """``(u0, u1_lo, u1_hi)`` of slab ``slab``: a plane of a 3D grid, a row of a 2D one."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    if n0 > 1:
        return slab, 0, n1
    return 0, slab, slab + 1


@njit(cache=True)
def _n_slabs(pshape, ghost):
    n0 = pshape[0] - 2 * ghost[0]
    return n0 if n0 > 1 else pshape[1] - 2 * ghost[1]


@njit(cache=True)
def _restrict_slab(diag, coef, offs, x, b, W, pshape, ghost, caxes, cpshape, cghost, out, slab, tmp, half):
    u0, u1_lo, u1_hi = _slab_rows(pshape, ghost, slab)
    p1, p2 = pshape[1], pshape[2]
    n2 = p2 - 2 * ghost[2]
    q1, q2 = cpshape[1], cpshape[2]
    step = 2 if caxes[2] else 1
    c0 = _coarse_base(u0, caxes[0]) + cghost[0]
    m0 = 4 if caxes[0] and (u0 & 1) == 1 else 0
    for u1 in range(u1_lo, u1_hi):
        c1 = _coarse_base(u1, caxes[1]) + cghost[1]
        rowmask = m0 | (2 if caxes[1] and (u1 & 1) == 1 else 0)
        lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
        crow = (c0 * q1 + c1) * q2 + cghost[2]
        _row_residual(diag, coef, offs, x, b, lo, lo + n2, 1, tmp)
        if step == 1:
            _scatter_row(W, tmp, lo, n2, 1, rowmask, 0, crow, q1, q2, out)
            continue
        ne = (n2 + 1) // 2
        for j in range(ne):
            half[j] = tmp[2 * j]
        _scatter_row(W, half, lo, ne, 2, rowmask, 0, crow, q1, q2, out)
        no = n2 // 2
        for j in range(no):
            half[j] = tmp[2 * j + 1]
        _scatter_row(W, half, lo + 1, no, 2, rowmask, 1, crow, q1, q2, out)


@njit(cache=True)
def _prolong_slab(W, e, scale, pshape, ghost, caxes, cpshape, cghost, x, slab, acc):
    u0, u1_lo, u1_hi = _slab_rows(pshape, ghost, slab)
    p1, p2 = pshape[1], pshape[2]
    n2 = p2 - 2 * ghost[2]
    q1, q2 = cpshape[1], cpshape[2]
    step = 2 if caxes[2] else 1
    c0 = _coarse_base(u0, caxes[0]) + cghost[0]
    m0 = 4 if caxes[0] and (u0 & 1) == 1 else 0
    for u1 in range(u1_lo, u1_hi):
        c1 = _coarse_base(u1, caxes[1]) + cghost[1]
        rowmask = m0 | (2 if caxes[1] and (u1 & 1) == 1 else 0)
        lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
        crow = (c0 * q1 + c1) * q2 + cghost[2]
        if step == 1:
            _gather_row(W, e, lo, n2, 1, rowmask, 0, crow, q1, q2, acc)
            xs = x[lo:lo + n2]
            for j in range(n2):
                xs[j] += scale * acc[j]
            continue
        ne = (n2 + 1) // 2
        _gather_row(W, e, lo, ne, 2, rowmask, 0, crow, q1, q2, acc)
        xs = x[lo:lo + n2:2]
        for j in range(ne):
            xs[j] += scale * acc[j]
        no = n2 // 2
        _gather_row(W, e, lo + 1, no, 2, rowmask, 1, crow, q1, q2, acc)
        xs = x[lo + 1:lo + n2:2]
        for j in range(no):
            xs[j] += scale * acc[j]


@njit(cache=True)
def _rb_slab(diag, coef, offs, relax, pshape, ghost, x, b, color, slab, tmp, zero_guess):
    u0, u1_lo, u1_hi = _slab_rows(pshape, ghost, slab)
    _rb_plane(diag, coef, offs, relax, pshape, ghost, x, b, color, u0, u1_lo, u1_hi, tmp, zero_guess)


@njit(cache=True)
def rb_descend(diag, coef, offs, relax, W, pshape, ghost, caxes, cpshape, cghost, x, b, out):
    """Red-black pre-smoothing from ``x = 0`` (red, then black), then ``out = P^T (b - A x)``, in one pass."""
    n2 = pshape[2] - 2 * ghost[2]
    tmp = np.empty(n2, dtype=x.dtype)
    half = np.empty(n2, dtype=x.dtype)
    out[:] = 0.0
    x[:] = 0.0
    ns = _n_slabs(pshape, ghost)
    for s in range(ns + 2):
        if s < ns:
            _rb_slab(diag, coef, offs, relax, pshape, ghost, x, b, 0, s, tmp, True)
        if 0 <= s - 1 < ns:
            _rb_slab(diag, coef, offs, relax, pshape, ghost, x, b, 1, s - 1, tmp, False)
        if 0 <= s - 2 < ns:
            _restrict_slab(diag, coef, offs, x, b, W, pshape, ghost, caxes, cpshape, cghost, out, s - 2, tmp, half)


@njit(cache=True)
def rb_ascend(diag, coef, offs, relax, W, e, scale, pshape, ghost, caxes, cpshape, cghost, x, b):
    """``x += scale P e``, then red-black post-smoothing (black, then red), in one pass."""
    n2 = pshape[2] - 2 * ghost[2]
    tmp = np.empty(n2, dtype=x.dtype)
    ns = _n_slabs(pshape, ghost)
    for s in range(ns + 2):
        if s < ns:
            _prolong_slab(W, e, scale, pshape, ghost, caxes, cpshape, cghost, x, s, tmp)
        if 0 <= s - 1 < ns:
            _rb_slab(diag, coef, offs, relax, pshape, ghost, x, b, 1, s - 1, tmp, False)
        if 0 <= s - 2 < ns:
            _rb_slab(diag, coef, offs, relax, pshape, ghost, x, b, 0, s - 2, tmp, False)


# ----------------------------------------------------------------------------- analysis

def offset_table(grid3):
    """``(table, half)``: box offsets ``q = (d0+1)*9+(d1+1)*3+d2+1`` by unpadded flat offset (up to 4 per offset).

    ``table[diff + half]`` lists the box offsets whose flat offset is ``diff``
    (several only on grids with an axis of length 2); -1 pads the list.
    """
    m0, m1, m2 = grid3
    half = m1 * m2 + m2 + 1
    table = np.full((2 * half + 1, 4), -1, dtype=np.int64)
    for d0 in (-1, 0, 1):
        for d1 in (-1, 0, 1):
            for d2 in (-1, 0, 1):
                if (d0 and m0 == 1) or (d1 and m1 == 1) or (d2 and m2 == 1):
                    continue
                row = table[d0 * m1 * m2 + d1 * m2 + d2 + half]
                row[np.argmax(row < 0)] = (d0 + 1) * 9 + (d1 + 1) * 3 + d2 + 1
    return table, half


@njit(cache=True)
def _box_offset(table, half, diff, u0, u1, u2, m0, m1, m2):
    """The box offset ``q`` of a column ``diff`` away from cell ``u`` that lands inside the grid, or -1."""
    if diff < -half or diff > half:
        return -1
    for t in range(4):
        q = table[diff + half, t]
        if q < 0:
            return -1
        v0 = u0 + q // 9 - 1
        v1 = u1 + (q // 3) % 3 - 1
        v2 = u2 + q % 3 - 1
        if 0 <= v0 < m0 and 0 <= v1 < m1 and 0 <= v2 < m2:
            return q
    return -1


@njit(cache=True)
def stencil_pattern(indptr, indices, data, grid3, table, half, counts):
    """Count the nonzeros per box offset ``q`` of a CSR grid matrix (``counts[q]``).

    Returns the first row holding an entry that is not a neighbour within the
    3x3x3 box of the grid (including couplings that wrap around a grid line),
    or -1. ``table, half`` come from :func:`offset_table`.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.kernels.multigrid import stencil_pattern, offset_table
    >>> A = linsolve.problems.poisson((3, 4, 5)); counts = np.zeros(27, np.int64)
    >>> t, h = offset_table((3, 4, 5))
    >>> int(stencil_pattern(A.indptr, A.indices, A.data, np.array([3, 4, 5]), t, h, counts)), int(counts[13])
    (-1, 60)
    """
    m0, m1, m2 = grid3[0], grid3[1], grid3[2]
    r = -1
    for u0 in range(m0):
        for u1 in range(m1):
            for u2 in range(m2):
                r += 1
                for p in range(indptr[r], indptr[r + 1]):
                    if data[p] == 0.0:
                        continue
                    q = _box_offset(table, half, indices[p] - r, u0, u1, u2, m0, m1, m2)
                    if q < 0:
                        return r
                    counts[q] += 1
    return -1


@njit(cache=True)
def csr_to_stencil(indptr, indices, data, grid3, pshape, ghost, table, half, slot, diag, coef, found):
    """Split a CSR grid matrix into padded stencil arrays.

    ``slot[q]`` is the index in ``coef`` of upper box offset ``q`` (-1 if the
    offset is not stored); lower entries are checked against their upper
    partner. ``found[0, k]`` / ``found[1, k]`` count the upper / lower
    nonzeros of offset ``k``. Returns ``(code, row)``: ``code`` 0 on success, 1
    for an entry outside the stored offsets (or wrapping around a grid
    line), 2 for an asymmetric pair (relative 1e-10), with the first
    offending row (-1 when only the counts disagree).
    """
    m0, m1, m2 = grid3[0], grid3[1], grid3[2]
    p1, p2 = pshape[1], pshape[2]
    scale = 0.0
    for p in range(data.shape[0]):
        scale = max(scale, abs(data[p]))
    tol = 1e-10 * scale
    r = -1
    for u0 in range(m0):
        for u1 in range(m1):
            for u2 in range(m2):
                r += 1
                i = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + u2 + ghost[2]
                for p in range(indptr[r], indptr[r + 1]):
                    v = data[p]
                    if v == 0.0:
                        continue
                    diff = indices[p] - r
                    if diff == 0:
                        diag[i] += v
                        continue
                    # the usual 5/7-point neighbours without the table
                    if diff == 1 and u2 + 1 < m2:
                        q = 14
                    elif diff == -1 and u2 > 0:
                        q = 12
                    elif diff == m2 and u1 + 1 < m1:
                        q = 16
                    elif diff == -m2 and u1 > 0:
                        q = 10
                    elif diff == m1 * m2 and u0 + 1 < m0:
                        q = 22
                    elif diff == -m1 * m2 and u0 > 0:
                        q = 4
                    else:
                        q = _box_offset(table, half, diff, u0, u1, u2, m0, m1, m2)
                    if q < 0:
                        return 1, r
                    if diff > 0:
                        k = slot[q]
                        if k < 0:
                            return 1, r
                        coef[k, i] += v
                        found[0, k] += 1
                    else:
                        k = slot[26 - q]
                        if k < 0:
                            return 1, r
                        found[1, k] += 1
                        j = i + (q // 9 - 1) * p1 * p2 + ((q // 3) % 3 - 1) * p2 + q % 3 - 1
                        if abs(coef[k, j] - v) > tol:
                            return 2, r
    for k in range(found.shape[1]):
        if found[0, k] != found[1, k]:
            return 2, -1
    return 0, -1


@njit(cache=True)
def axis_strength(diag, coef, offs, dvec, pshape, ghost, out):
    """``out[a, i]``: sum of ``|A[i, j]|`` over neighbours ``j`` displaced along axis ``a``."""
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    nk = offs.shape[0]
    for row in range(n0 * n1):
        i0 = row // n1 + ghost[0]
        i1 = row % n1 + ghost[1]
        base = (i0 * p1 + i1) * p2
        for i2 in range(ghost[2], p2 - ghost[2]):
            i = base + i2
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            for k in range(nk):
                v = abs(coef[k, i]) + abs(coef[k, i - offs[k]])
                if dvec[k, 0] != 0:
                    s0 += v
                if dvec[k, 1] != 0:
                    s1 += v
                if dvec[k, 2] != 0:
                    s2 += v
            out[0, i] = s0
            out[1, i] = s1
            out[2, i] = s2


@njit(cache=True)
def unreached_from_dirichlet(diag, coef, offs, active, pshape, ghost, tol, seen):
    """Flood fill from rows with a positive row sum; returns the number of active cells not reached.

    Active cells left with ``seen == 0`` lie in closed regions (pure Neumann
    blocks): the operator is singular there, with the region's constants as
    null space.
    """
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    nk = offs.shape[0]
    stack = np.empty(n0 * n1 * n2 + 1, np.int64)
    top = 0
    total = 0
    for u0 in range(n0):
        for u1 in range(n1):
            for u2 in range(n2):
                i = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + u2 + ghost[2]
                seen[i] = 0
                if active[i] == 0.0:
                    continue
                total += 1
                s = diag[i]
                for k in range(nk):
                    s += coef[k, i] + coef[k, i - offs[k]]
                if s > tol * diag[i]:
                    seen[i] = 1
                    stack[top] = i
                    top += 1
    reached = top
    while top > 0:
        top -= 1
        i = stack[top]
        for k in range(nk):
            o = offs[k]
            for j, v in ((i + o, coef[k, i]), (i - o, coef[k, i - o])):
                if v != 0.0 and seen[j] == 0 and active[j] != 0.0:
                    seen[j] = 1
                    stack[top] = j
                    top += 1
                    reached += 1
    return total - reached


N_FEATURES = 6


@njit(cache=True)
def stencil_features(diag, coef, offs, dvec, pshape, ghost, out):
    """Scale-free per-cell features of a stencil row, the input of learned smoothing parameters.

    ``out[:, i]``: the axis couplings ``|A|`` summed per axis and divided by the
    diagonal, sorted descending (three features, invariant to axis
    permutations), the row sum over the diagonal (how Dirichlet the row is),
    the off-axis share of the couplings (0 on 5/7-point rows), and the
    contrast ``log(max neighbour diagonal / own diagonal)`` clipped to [0, 8]
    (coefficient jumps). Inactive cells get zeros.
    """
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    nk = offs.shape[0]
    for row in range(n0 * n1):
        i0 = row // n1 + ghost[0]
        i1 = row % n1 + ghost[1]
        base = (i0 * p1 + i1) * p2
        for i2 in range(ghost[2], p2 - ghost[2]):
            i = base + i2
            d = diag[i]
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            offaxis = 0.0
            rowsum = d
            nbmax = 0.0
            for k in range(nk):
                o = offs[k]
                vu = coef[k, i]
                vl = coef[k, i - o]
                rowsum += vu + vl
                v = abs(vu) + abs(vl)
                nz = int(dvec[k, 0] != 0) + int(dvec[k, 1] != 0) + int(dvec[k, 2] != 0)
                if nz > 1:
                    offaxis += v
                elif dvec[k, 0] != 0:
                    s0 += v
                elif dvec[k, 1] != 0:
                    s1 += v
                else:
                    s2 += v
                if vu != 0.0:
                    nbmax = max(nbmax, diag[i + o])
                if vl != 0.0:
                    nbmax = max(nbmax, diag[i - o])
            if not d > 0.0 or s0 + s1 + s2 + offaxis == 0.0:
                for f in range(6):
                    out[f, i] = 0.0
                continue
            a = s0 / d
            b = s1 / d
            c = s2 / d
            if a < b:
                a, b = b, a
            if b < c:
                b, c = c, b
            if a < b:
                a, b = b, a
            out[0, i] = a
            out[1, i] = b
            out[2, i] = c
            out[3, i] = rowsum / d
            out[4, i] = offaxis / (s0 + s1 + s2 + offaxis)
            out[5, i] = min(max(np.log(nbmax / d), 0.0), 8.0) if nbmax > 0.0 else 0.0
