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

Smoothers
---------
Multicolour Gauss-Seidel: red-black on 5/7-point levels, the eight parity
colours on 9/27-point ones, line Gauss-Seidel on selected segments. A colour's
step is done slab by slab (a plane of a 3D grid, a row of a 2D one) as one
contiguous pass: the residual of the whole slab, then the update masked by the
colour (the relaxation array holds zeros off the colour), which vectorises and
costs about one residual per colour and slab.

Kernels take arrays, write into caller-provided outputs, validate nothing and
know nothing of learning or of the Krylov method that uses them.
"""
from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["layout", "coarse_shape", "upper_offsets", "to_padded", "from_padded", "pad_into", "unpad_into", "pad_box", "unpad_box",
           "stencil_matvec", "stencil_residual", "rb_sweep", "mc_sweep", "line_factor", "line_smooth",
           "colour_relax", "interpolation_weights", "galerkin", "residual_restrict", "restrict", "prolong_add",
           "offset_table", "stencil_pattern", "csr_to_stencil", "axis_strength", "unreached_from_dirichlet",
           "strong_segments", "stencil_features", "learned_omega", "N_FEATURES"]


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


@njit(cache=True)
def pad_into(values, pshape, ghost, out):
    """Copy a flat C-order grid vector into the interior of the padded ``out`` (casting to its dtype)."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    n2 = pshape[2] - 2 * ghost[2]
    p1, p2 = pshape[1], pshape[2]
    src = 0
    for u0 in range(n0):
        for u1 in range(n1):
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            dst = out[lo:lo + n2]
            row = values[src:src + n2]
            for j in range(n2):
                dst[j] = row[j]
            src += n2


@njit(cache=True)
def unpad_into(padded, pshape, ghost, out):
    """Copy the interior of a padded vector into the flat C-order grid vector ``out`` (casting)."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    n2 = pshape[2] - 2 * ghost[2]
    p1, p2 = pshape[1], pshape[2]
    dst = 0
    for u0 in range(n0):
        for u1 in range(n1):
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            row = padded[lo:lo + n2]
            target = out[dst:dst + n2]
            for j in range(n2):
                target[j] = row[j]
            dst += n2


@njit(cache=True)
def pad_box(values, grid3, start, pshape, ghost, out):
    """Copy the box of a flat C-order grid vector (grid ``grid3``, box corner ``start``) into a padded level."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    n2 = pshape[2] - 2 * ghost[2]
    p1, p2 = pshape[1], pshape[2]
    for u0 in range(n0):
        for u1 in range(n1):
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            src = ((start[0] + u0) * grid3[1] + start[1] + u1) * grid3[2] + start[2]
            dst = out[lo:lo + n2]
            row = values[src:src + n2]
            for j in range(n2):
                dst[j] = row[j]


@njit(cache=True)
def unpad_box(padded, pshape, ghost, grid3, start, out):
    """Write the interior of a padded level into its box of the flat C-order grid vector ``out``."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    n2 = pshape[2] - 2 * ghost[2]
    p1, p2 = pshape[1], pshape[2]
    for u0 in range(n0):
        for u1 in range(n1):
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            dst = ((start[0] + u0) * grid3[1] + start[1] + u1) * grid3[2] + start[2]
            row = padded[lo:lo + n2]
            target = out[dst:dst + n2]
            for j in range(n2):
                target[j] = row[j]


# ----------------------------------------------------------------------------- operator application
# Loops run over grid rows (the innermost axis). Inside a row, every array is taken as a 1-D view and the
# neighbour offsets are the outer loop, so the inner loops are plain (or stride-2) streams that LLVM
# vectorises; fastmath only licenses that reordering of independent products.

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
    for row in range(n0 * n1):
        lo = ((row // n1 + ghost[0]) * p1 + row % n1 + ghost[1]) * p2 + ghost[2]
        _slab_residual(diag, coef, offs, x, b, lo, lo + n2, out[lo:lo + n2])


# ----------------------------------------------------------------------------- smoothers

@njit(cache=True, fastmath=True)
def _slab_residual(diag, coef, offs, x, b, lo, hi, out):
    """``out[t] = (b - A x)[lo + t]`` for the contiguous padded range ``[lo, hi)``."""
    m = hi - lo
    ds = diag[lo:hi]
    xs = x[lo:hi]
    bs = b[lo:hi]
    for t in range(m):
        out[t] = bs[t] - ds[t] * xs[t]
    for k in range(offs.shape[0]):
        o = offs[k]
        cu = coef[k, lo:hi]
        cl = coef[k, lo - o:hi - o]
        xu = x[lo + o:hi + o]
        xl = x[lo - o:hi - o]
        for t in range(m):
            out[t] -= cu[t] * xu[t] + cl[t] * xl[t]


@njit(cache=True, fastmath=True)
def _slab_update(diag, coef, offs, relax_c, x, b, lo, hi, tmp, zero_guess):
    """One colour's Gauss-Seidel update on the padded index range ``[lo, hi)`` (a whole plane or row).

    ``relax_c`` is the relaxation times the colour's mask (0 on the other
    colour and on ghosts), so the residual is formed for every cell of the
    range in one contiguous, vectorised pass and only the colour moves.
    """
    xs = x[lo:hi]
    rs = relax_c[lo:hi]
    bs = b[lo:hi]
    m = hi - lo
    if zero_guess:
        for t in range(m):
            xs[t] = rs[t] * bs[t]
        return
    _slab_residual(diag, coef, offs, x, b, lo, hi, tmp)
    for t in range(m):
        xs[t] += rs[t] * tmp[t]


@njit(cache=True)
def _slabs(pshape, ghost):
    """``(size, skip, span, first, count)`` of the slabs of a padded grid: planes in 3D, rows in 2D.

    Slab ``t`` covers the padded indices ``(first + t) * size + skip`` up to
    ``+ span``: from its first interior cell to its last one (the ghost cells
    in between have no couplings and a zero relaxation), so every neighbour
    offset of a 27-point stencil stays inside the array.
    """
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    n2 = pshape[2] - 2 * ghost[2]
    if n0 > 1:
        size = pshape[1] * pshape[2]
        return size, ghost[1] * pshape[2] + ghost[2], (n1 - 1) * pshape[2] + n2, ghost[0], n0
    return pshape[2], ghost[2], n2, ghost[1], n1


@njit(cache=True)
def rb_sweep(diag, coef, offs, relax_first, relax_second, pshape, ghost, x, b, zero_guess):
    """One red-black Gauss-Seidel sweep of a 5/7-point operator, colour after colour.

    ``relax_first`` / ``relax_second`` hold ``omega / diag`` on the cells of
    the colour done first / second and 0 elsewhere. The sweep runs slab by
    slab (planes of a 3D grid, rows of a 2D one), each slab in one contiguous
    pass, the second colour one slab behind the first: one pass over memory
    for the whole sweep, with exactly the result of two full half-sweeps.
    ``zero_guess`` promises ``x == 0`` on entry.
    """
    size, skip, span, first, count = _slabs(pshape, ghost)
    tmp = np.empty(span, dtype=x.dtype)
    for t in range(count + 1):
        if t < count:
            lo = (first + t) * size + skip
            _slab_update(diag, coef, offs, relax_first, x, b, lo, lo + span, tmp, zero_guess)
        if t > 0:
            lo = (first + t - 1) * size + skip
            _slab_update(diag, coef, offs, relax_second, x, b, lo, lo + span, tmp, False)


@njit(cache=True)
def mc_sweep(diag, coef, offs, relax_colors, pshape, ghost, x, b, forward, zero_guess):
    """One eight-colour Gauss-Seidel sweep of a 9/27-point operator, slab by slab.

    Colours are the coordinate parities; ``relax_colors[c]`` holds
    ``omega / diag`` on the cells of colour ``c`` (bit 2: axis 0, bit 1: axis
    1, bit 0: axis 2) and 0 elsewhere. Slabs (planes of a 3D grid, rows of a
    2D one) of one parity do not couple, so the sweep takes the even slabs,
    then the odd ones, and relaxes the in-slab colours of each slab in turn,
    every step one contiguous pass over the slab. ``forward=False`` runs the
    exact reverse order (the adjoint sweep of a symmetric cycle).
    """
    size, skip, span, first, count = _slabs(pshape, ghost)
    slab_bit, inner = (4, 4) if pshape[0] - 2 * ghost[0] > 1 else (2, 2)
    tmp = np.empty(span, dtype=x.dtype)
    for step in range(2 * ((count + 1) // 2) * inner):
        k = step if forward else 2 * ((count + 1) // 2) * inner - 1 - step
        parity = k // (((count + 1) // 2) * inner)
        rest = k % (((count + 1) // 2) * inner)
        t = 2 * (rest // inner) + parity
        c = rest % inner
        if t >= count:
            continue
        colour = (slab_bit if parity else 0) | c
        lo = (first + t) * size + skip
        _slab_update(diag, coef, offs, relax_colors[colour], x, b, lo, lo + span, tmp,
                     zero_guess and parity == 0 and c == 0)


@njit(cache=True)
def line_factor(diag, coef, k_axis, axis_stride, seg_start, seg_len, seg_off, inv_pivot, upper_scaled):
    """LU factors of the tridiagonal block of every line segment, for :func:`line_smooth`.

    Segment ``t`` occupies entries ``seg_off[t]:seg_off[t] + seg_len[t]`` of
    ``inv_pivot`` (``1 / m_q``, the reciprocal Thomas pivots) and
    ``upper_scaled`` (``u_q / m_q``). The blocks depend on the matrix only, so
    a smoothing step does no division. A pivot that vanishes (a segment
    decoupled from everything, e.g. a closed pocket) is replaced by the
    diagonal, which keeps the block solve symmetric positive definite.
    """
    s = axis_stride
    for t in range(seg_start.shape[0]):
        start = seg_start[t]
        length = seg_len[t]
        base = seg_off[t]
        for q in range(length):
            i = start + q * s
            d = diag[i]
            m = d
            if q > 0:
                m -= coef[k_axis, i - s] * upper_scaled[base + q - 1]
            if not m > 1e-14 * d:
                m = d if d > 0.0 else 1.0
            upper = coef[k_axis, i] if q < length - 1 else 0.0
            inv_pivot[base + q] = 1.0 / m
            upper_scaled[base + q] = upper / m


@njit(cache=True)
def line_smooth(diag, coef, offs, x, b, axis_stride, k_axis, seg_start, seg_len, seg_off, seg_color, colors, omega,
                inv_pivot, upper_scaled):
    """Block Gauss-Seidel on line segments (a tridiagonal solve per segment), colour by colour.

    Segment ``t`` starts at padded index ``seg_start[t]``, runs ``seg_len[t]``
    cells along the axis of stride ``axis_stride`` and has colour
    ``seg_color[t]``; colours are processed in the order of ``colors`` and
    segments of one colour do not couple. ``k_axis`` is the index of the
    in-line offset in ``offs``; ``omega`` in (0, 2) relaxes the block update
    (block SOR). ``inv_pivot`` / ``upper_scaled`` (from :func:`line_factor`,
    at ``seg_off[t]``) hold the blocks' factors.
    """
    s = axis_stride
    nk = offs.shape[0]
    maxlen = 1
    for t in range(seg_len.shape[0]):
        maxlen = max(maxlen, seg_len[t])
    rhs = np.empty(maxlen, dtype=x.dtype)
    for color in colors:
        for t in range(seg_start.shape[0]):
            if seg_color[t] != color:
                continue
            start = seg_start[t]
            length = seg_len[t]
            base = seg_off[t]
            prev = 0.0
            for q in range(length):
                i = start + q * s
                r = b[i] - diag[i] * x[i]
                for k in range(nk):
                    o = offs[k]
                    r -= coef[k, i] * x[i + o] + coef[k, i - o] * x[i - o]
                # the correction's block system keeps the in-line couplings on the left: forward elimination
                if q > 0:
                    r -= coef[k_axis, i - s] * prev
                prev = r * inv_pivot[base + q]
                rhs[q] = prev
            for q in range(length - 2, -1, -1):
                rhs[q] -= upper_scaled[base + q] * rhs[q + 1]
            for q in range(length):
                i = start + q * s
                if diag[i] > 0.0:
                    x[i] += omega * rhs[q]


# ----------------------------------------------------------------------------- transfers

@njit(cache=True)
def _coarse_base(u, c):
    return u // 2 if c else u


@njit(cache=True)
def _first(lo, odd, coarsened):
    """First coordinate >= ``lo`` of the given parity along a coarsened axis (any along the others)."""
    if not coarsened:
        return lo
    return lo + ((lo & 1) != odd)


@njit(cache=True)
def interpolation_weights(diag, coef, offs, dvec, active, pshape, ghost, caxes, lo, hi, rho, W):
    """Operator-dependent interpolation weights ``W[delta, f]`` (see the module docstring).

    ``active[f]`` is 1 on cells that couple to a neighbour, else 0 (their rows
    of P stay 0: decoupled cells are solved exactly by the smoother). Cells
    are processed by their number of odd coordinates, so every cell reads
    only neighbours interpolated before it. Only the cells of the box
    ``lo <= u < hi`` (grid coordinates) are (re)computed; the others keep
    their ``W`` and ``rho`` (row sums of the Neumann-version interpolation,
    read by the fallback), which a cell of the box may read. A box covering
    the grid computes everything; a smaller one gives bitwise the same weights
    as the whole grid would when the operator changed only well inside it.
    """
    p1, p2 = pshape[1], pshape[2]
    sfull = np.array([p1 * p2, p2, 1])
    nk = offs.shape[0]
    for u0 in range(lo[0], hi[0]):
        for u1 in range(lo[1], hi[1]):
            base = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            for u2 in range(lo[2], hi[2]):
                W[:, base + u2] = 0.0
                rho[base + u2] = 0.0
    # pass 0: coarse cells
    for u0 in range(_first(lo[0], 0, caxes[0]), hi[0], 2 if caxes[0] else 1):
        for u1 in range(_first(lo[1], 0, caxes[1]), hi[1], 2 if caxes[1] else 1):
            base = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            for u2 in range(_first(lo[2], 0, caxes[2]), hi[2], 2 if caxes[2] else 1):
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
        for u0 in range(_first(lo[0], odd0, caxes[0]), hi[0], 2 if caxes[0] else 1):
            for u1 in range(_first(lo[1], odd1, caxes[1]), hi[1], 2 if caxes[1] else 1):
                base = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
                for u2 in range(_first(lo[2], odd2, caxes[2]), hi[2], 2 if caxes[2] else 1):
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
def galerkin(diag, coef, offs, dvec, active, W, pshape, ghost, caxes, cpshape, cghost, coffs_index, clo, chi,
             cdiag, ccoef):
    """Accumulate the coarse operator ``P^T A P`` (diagonal and upper half) into ``cdiag`` / ``ccoef``.

    Runs over the fine cells once: row ``f`` of ``A P`` is formed in a
    27-entry local array (offsets around ``f // 2``, its nonzero slots listed
    as they appear) and scattered into the rows of the coarse cells ``f``
    interpolates from. ``coffs_index`` maps a coarse offset
    ``(e0+1)*9+(e1+1)*3+e2+1`` to its index in the coarse ``offs`` (-1 for
    lower offsets, which symmetry gives). Only the coarse rows of the box
    ``clo <= U < chi`` (coarse grid coordinates) are accumulated, from every
    fine cell that reaches them, in the order the whole grid would use (so
    bitwise the same); those rows of the outputs must be zero on entry.
    """
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    # fine cells whose coarse corners (base + 0/1 along coarsened axes) can land in the box
    f_lo = np.empty(3, np.int64)
    f_hi = np.empty(3, np.int64)
    for a, n in ((0, n0), (1, n1), (2, n2)):
        f_lo[a] = max(0, 2 * clo[a] - 2) if caxes[a] else clo[a]
        f_hi[a] = min(n, 2 * chi[a]) if caxes[a] else chi[a]
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
    for u0 in range(f_lo[0], f_hi[0]):
        bf0 = _coarse_base(u0, caxes[0])
        odd0 = caxes[0] and (u0 & 1) == 1
        for u1 in range(f_lo[1], f_hi[1]):
            bf1 = _coarse_base(u1, caxes[1])
            odd1 = caxes[1] and (u1 & 1) == 1
            rowbase = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            for u2 in range(f_lo[2], f_hi[2]):
                i = rowbase + u2
                odd2 = caxes[2] and (u2 & 1) == 1
                fmask = (4 if odd0 else 0) | (2 if odd1 else 0) | (1 if odd2 else 0)
                if active[i] == 0.0:  # decoupled cells interpolate from nothing: no part in P^T A P
                    continue
                bf2 = _coarse_base(u2, caxes[2])
                # axes along which the corner at offset 0 (``out0``) / 1 (``out1``) lies outside the box
                out0 = (4 if bf0 < clo[0] or bf0 >= chi[0] else 0) | (2 if bf1 < clo[1] or bf1 >= chi[1] else 0) \
                    | (1 if bf2 < clo[2] or bf2 >= chi[2] else 0)
                out1 = (4 if bf0 + 1 < clo[0] or bf0 + 1 >= chi[0] else 0) \
                    | (2 if bf1 + 1 < clo[1] or bf1 + 1 >= chi[1] else 0) \
                    | (1 if bf2 + 1 < clo[2] or bf2 + 1 >= chi[2] else 0)
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
                    if pw != 0.0 and (out1 & sub) == 0 and (out0 & ~sub & 7) == 0:
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


@njit(cache=True)
def _plane_classes(caxes, u0):
    """Row-parity classes of a plane: ``(count, steps1, step2, coarse row/col offset of class 1, plane mask)``."""
    return (2 if caxes[1] else 1), (2 if caxes[1] else 1), (2 if caxes[2] else 1), 4 if caxes[0] and (u0 & 1) == 1 else 0


@njit(cache=True, fastmath=True)
def _transfer_plane(W, fine, coarse, pshape, ghost, caxes, cpshape, cghost, u0, restrict_mode, scale):
    """Restriction (``coarse += P^T fine``) or prolongation (``fine += scale P coarse``) of one fine plane.

    ``fine`` is the fine plane (an ``(n1, p2)`` view, cell ``(u1, u2)`` at
    ``[u1, u2]``) holding the fine vector for restriction or receiving the
    update for prolongation. Cells of one row and column parity share their
    corner set, so each (parity class, corner) pair is one 2-D strided loop.
    """
    n1 = pshape[1] - 2 * ghost[1]
    n2 = pshape[2] - 2 * ghost[2]
    p1, p2 = pshape[1], pshape[2]
    q1, q2 = cpshape[1], cpshape[2]
    nclass1, s1, s2, m0 = _plane_classes(caxes, u0)
    c0 = _coarse_base(u0, caxes[0]) + cghost[0]
    base = (u0 + ghost[0]) * p1 * p2
    for r1 in range(nclass1):
        for r2 in range(s2):
            rows = (n1 - r1 + s1 - 1) // s1
            cols = (n2 - r2 + s2 - 1) // s2
            if rows <= 0 or cols <= 0:
                continue
            mask = m0 | (2 if (caxes[1] and r1 == 1) else 0) | (1 if (caxes[2] and r2 == 1) else 0)
            sub = mask
            while True:
                w = W[sub, base:base + p1 * p2].reshape((p1, p2))[ghost[1] + r1:ghost[1] + n1:s1,
                                                                   ghost[2] + r2:ghost[2] + n2:s2]
                f = fine[r1:n1:s1, r2:n2:s2]
                d0 = c0 + ((sub >> 2) & 1)
                d1 = cghost[1] + ((sub >> 1) & 1)
                d2 = cghost[2] + (sub & 1)
                cplane = coarse[d0 * q1 * q2:(d0 + 1) * q1 * q2].reshape((q1, q2))
                cv = cplane[d1:d1 + rows, d2:d2 + cols]
                if restrict_mode:
                    for i in range(rows):
                        for j in range(cols):
                            cv[i, j] += w[i, j] * f[i, j]
                else:
                    for i in range(rows):
                        for j in range(cols):
                            f[i, j] += scale * w[i, j] * cv[i, j]
                if sub == 0:
                    break
                sub = (sub - 1) & mask


@njit(cache=True)
def residual_restrict(diag, coef, offs, x, b, W, pshape, ghost, caxes, cpshape, cghost, out):
    """``out = P^T (b - A x)`` plane by plane (the fine residual is never stored)."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    p1, p2 = pshape[1], pshape[2]
    out[:] = 0.0
    plane = np.zeros(n1 * p2, dtype=out.dtype)
    for u0 in range(n0):
        lo = ((u0 + ghost[0]) * p1 + ghost[1]) * p2 + ghost[2]
        _slab_residual(diag, coef, offs, x, b, lo, lo + (n1 - 1) * p2 + pshape[2] - 2 * ghost[2], plane)
        _transfer_plane(W, plane.reshape((n1, p2)), out, pshape, ghost, caxes, cpshape, cghost, u0, True, 0.0)


@njit(cache=True)
def restrict(W, r, pshape, ghost, caxes, cpshape, cghost, out):
    """``out = P^T r`` (``out`` is overwritten)."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    p1, p2 = pshape[1], pshape[2]
    out[:] = 0.0
    for u0 in range(n0):
        lo = ((u0 + ghost[0]) * p1 + ghost[1]) * p2 + ghost[2]
        plane = r[lo:lo + n1 * p2].reshape((n1, p2))
        _transfer_plane(W, plane, out, pshape, ghost, caxes, cpshape, cghost, u0, True, 0.0)


@njit(cache=True)
def prolong_add(W, e, scale, pshape, ghost, caxes, cpshape, cghost, x):
    """``x += scale * P e`` on the fine interior."""
    n0 = pshape[0] - 2 * ghost[0]
    n1 = pshape[1] - 2 * ghost[1]
    p1, p2 = pshape[1], pshape[2]
    for u0 in range(n0):
        lo = ((u0 + ghost[0]) * p1 + ghost[1]) * p2 + ghost[2]
        plane = x[lo:lo + n1 * p2].reshape((n1, p2))
        _transfer_plane(W, plane, e, pshape, ghost, caxes, cpshape, cghost, u0, False, scale)


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
    null space. ``tol`` is relative to the diagonal (the rounding of the
    coefficients decides what counts as a zero row sum).
    """
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    nk = offs.shape[0]
    stack = np.empty(n0 * n1 * n2 + 1, np.int64)
    rowsum = np.empty(n2)
    seen[:] = 0
    top = 0
    total = 0
    for u0 in range(n0):
        for u1 in range(n1):
            lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            ds = diag[lo:lo + n2]
            for t in range(n2):
                rowsum[t] = ds[t]
            for k in range(nk):
                o = offs[k]
                cu = coef[k, lo:lo + n2]
                cl = coef[k, lo - o:lo - o + n2]
                for t in range(n2):
                    rowsum[t] += cu[t] + cl[t]
            for t in range(n2):
                i = lo + t
                if active[i] == 0.0:
                    continue
                total += 1
                if rowsum[t] > tol * ds[t]:
                    seen[i] = 1
                    stack[top] = i
                    top += 1
    reached = top
    while top > 0:
        top -= 1
        i = stack[top]
        for k in range(nk):
            o = offs[k]
            j = i + o
            if seen[j] == 0 and coef[k, i] != 0.0 and active[j] != 0.0:
                seen[j] = 1
                stack[top] = j
                top += 1
                reached += 1
            j = i - o
            if seen[j] == 0 and coef[k, j] != 0.0 and active[j] != 0.0:
                seen[j] = 1
                stack[top] = j
                top += 1
                reached += 1
    return total - reached


@njit(cache=True)
def colour_relax(relax, colours, pshape, ghost, out):
    """``out[c] = relax`` on the cells of colour ``colours[c]`` (3-bit parity mask, -1/-2: red/black), else 0."""
    p1, p2 = pshape[1], pshape[2]
    n0 = pshape[0] - 2 * ghost[0]
    n1 = p1 - 2 * ghost[1]
    n2 = p2 - 2 * ghost[2]
    out[:, :] = 0.0
    for c in range(colours.shape[0]):
        colour = colours[c]
        for u0 in range(n0):
            for u1 in range(n1):
                lo = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
                if colour < 0:
                    start = (-1 - colour + u0 + u1) & 1
                else:
                    if (u0 & 1) != ((colour >> 2) & 1) or (u1 & 1) != ((colour >> 1) & 1):
                        continue
                    start = colour & 1
                for u2 in range(start, n2, 2 if n2 > 1 else 1):
                    out[c, lo + u2] = relax[lo + u2]


@njit(cache=True)
def strong_segments(strength, axis, threshold, n_axes, margin, pshape, ghost, starts, lengths, colours, colour_mode):
    """Line segments along ``axis`` over the cells strongly coupled along it; returns their count.

    A cell is strong when its coupling along ``axis`` exceeds ``threshold``
    times the mean of its couplings along the other ``n_axes - 1`` real axes;
    runs of strong cells are grown by ``margin`` cells at both ends and kept
    when at least two cells long. ``starts`` / ``lengths`` / ``colours``
    receive the segments (first padded index, cell count, colour: the parity
    of the other two coordinates, summed for ``colour_mode == 0`` (5/7-point
    levels), as two bits otherwise).
    """
    p1, p2 = pshape[1], pshape[2]
    n = (pshape[0] - 2 * ghost[0], p1 - 2 * ghost[1], p2 - 2 * ghost[2])
    strides = (p1 * p2, p2, 1)
    other = (1, 2) if axis == 0 else ((0, 2) if axis == 1 else (0, 1))
    length = n[axis]
    flag = np.zeros(length + 2 * margin + 2, np.uint8)
    count = 0
    for a in range(n[other[0]]):
        for c in range(n[other[1]]):
            base = (a + ghost[other[0]]) * strides[other[0]] + (c + ghost[other[1]]) * strides[other[1]] \
                + ghost[axis] * strides[axis]
            flag[:] = 0
            anything = False
            for t in range(length):
                i = base + t * strides[axis]
                s = strength[axis, i]
                rest = strength[0, i] + strength[1, i] + strength[2, i] - s
                if s > 0.0 and s > threshold * rest / (n_axes - 1):
                    lo = max(t - margin, 0)
                    hi = min(t + margin, length - 1)
                    for q in range(lo, hi + 1):
                        flag[q] = 1
                    anything = True
            if not anything:
                continue
            t = 0
            while t < length:
                if flag[t] == 0 or strength[axis, base + t * strides[axis]] == 0.0:
                    t += 1
                    continue
                first = t
                while t < length and flag[t] == 1 and strength[axis, base + t * strides[axis]] > 0.0:
                    t += 1
                if t - first >= 2:
                    starts[count] = base + first * strides[axis]
                    lengths[count] = t - first
                    colours[count] = ((a + c) & 1) if colour_mode == 0 else ((a & 1) * 2 + (c & 1))
                    count += 1
    return count


N_FEATURES = 6


@njit(cache=True)
def _cell_features(diag, coef, offs, dvec, i, feats):
    """The :func:`stencil_features` of cell ``i`` into ``feats``; False for a cell without couplings."""
    nk = offs.shape[0]
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
            feats[f] = 0.0
        return False
    a = s0 / d
    b = s1 / d
    c = s2 / d
    if a < b:
        a, b = b, a
    if b < c:
        b, c = c, b
    if a < b:
        a, b = b, a
    feats[0] = a
    feats[1] = b
    feats[2] = c
    feats[3] = rowsum / d
    feats[4] = offaxis / (s0 + s1 + s2 + offaxis)
    feats[5] = min(max(np.log(nbmax / d), 0.0), 8.0) if nbmax > 0.0 else 0.0
    return True


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
    feats = np.empty(6)
    for row in range(n0 * n1):
        base = ((row // n1 + ghost[0]) * p1 + row % n1 + ghost[1]) * p2
        for i2 in range(ghost[2], p2 - ghost[2]):
            i = base + i2
            _cell_features(diag, coef, offs, dvec, i, feats)
            for f in range(6):
                out[f, i] = feats[f]


@njit(cache=True)
def learned_omega(diag, coef, offs, dvec, pshape, ghost, weights, bias, lo, hi, box_lo, box_hi, out):
    """``out = lo + (hi - lo) * sigmoid(bias + weights . features)`` per cell, 1 where a cell has no couplings.

    The inference of the learned smoothing in one pass (the features are never
    stored), on the cells ``box_lo <= u < box_hi`` (grid coordinates) only;
    ``out`` keeps its values elsewhere.
    """
    p1, p2 = pshape[1], pshape[2]
    feats = np.empty(6)
    for u0 in range(box_lo[0], box_hi[0]):
        for u1 in range(box_lo[1], box_hi[1]):
            base = ((u0 + ghost[0]) * p1 + u1 + ghost[1]) * p2 + ghost[2]
            for u2 in range(box_lo[2], box_hi[2]):
                i = base + u2
                out[i] = 1.0
                if not _cell_features(diag, coef, offs, dvec, i, feats):
                    continue
                z = bias
                for f in range(6):
                    z += weights[f] * feats[f]
                out[i] = lo + (hi - lo) / (1.0 + np.exp(-z))


# ----------------------------------------------------------------------------- strongly coupled clusters

@njit(cache=True)
def _root(parent, i):
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@njit(cache=True)
def strong_components(coef, offs, active, theta, labels):
    """Label the components of the strong couplings; returns whether there are several.

    A coupling ``a_ij`` is strong when ``|a_ij| >= theta * max(m_i, m_j)``,
    ``m_i`` the largest coupling of row ``i``: the cells of an air bubble in
    water (couplings 1 inside, 1e-5 across its surface) form one component,
    bordered by weak couplings. ``labels[i]`` is the root (a padded index) of
    cell ``i``'s component, ``-1`` on decoupled cells. Nothing is labelled
    when no coupling is weak (one component, or none coupled).
    """
    npad = labels.size
    nk = offs.shape[0]
    rowmax = np.zeros(npad)
    for k in range(nk):
        o = offs[k]
        for i in range(npad - o):
            v = abs(coef[k, i])
            if v > rowmax[i]:
                rowmax[i] = v
            if v > rowmax[i + o]:
                rowmax[i + o] = v
    any_weak = False
    for k in range(nk):
        o = offs[k]
        for i in range(npad - o):
            v = abs(coef[k, i])
            if v > 0.0 and v < theta * max(rowmax[i], rowmax[i + o]):
                any_weak = True
                break
        if any_weak:
            break
    if not any_weak:
        labels[:] = -1
        return False
    parent = np.arange(npad)
    for k in range(nk):
        o = offs[k]
        for i in range(npad - o):
            v = abs(coef[k, i])
            if v > 0.0 and v >= theta * max(rowmax[i], rowmax[i + o]):
                a = _root(parent, i)
                c = _root(parent, i + o)
                if a != c:
                    parent[max(a, c)] = min(a, c)
    roots = 0
    for i in range(npad):
        if active[i] != 0.0:
            labels[i] = _root(parent, i)
            roots += labels[i] == i
        else:
            labels[i] = -1
    return roots > 1


@njit(cache=True)
def greedy_colours(adj_ptr, adj_idx, colours):
    """Colour a graph (CSR adjacency) greedily in node order: neighbours never share a colour."""
    n = colours.size
    colours[:] = -1
    used = np.full(n + 1, -1, np.int64)
    for c in range(n):
        for p in range(adj_ptr[c], adj_ptr[c + 1]):
            k = colours[adj_idx[p]]
            if k >= 0:
                used[k] = c
        k = 0
        while used[k] == c:
            k += 1
        colours[c] = k


@njit(cache=True)
def cluster_correct(m_start, members, leak, e_start, e_col, e_weight, inv_d, x, b, forward):
    """One exact correction along each cluster's constant, cluster after cluster.

    Cluster ``c`` (cells ``members[m_start[c]:m_start[c+1]]``) moves by
    ``delta = 1_c^T (b - A x) / 1_c^T A 1_c``. The residual sum is formed
    without the strong couplings inside the cluster (they cancel):
    ``sum_i (b_i - leak_i x_i) - sum_e w_e x_{col_e}`` over its cells and
    its couplings to other cells, so it keeps the digits of the weak ones.
    Clusters come in colour order and no two of a colour couple, so this is
    one Jacobi step per colour; ``forward=False`` runs the adjoint order.
    """
    nc = inv_d.size
    for t in range(nc):
        c = t if forward else nc - 1 - t
        s = 0.0
        for p in range(m_start[c], m_start[c + 1]):
            i = members[p]
            s += b[i] - leak[p] * x[i]
        for p in range(e_start[c], e_start[c + 1]):
            s -= e_weight[p] * x[e_col[p]]
        delta = s * inv_d[c]
        for p in range(m_start[c], m_start[c + 1]):
            x[members[p]] += delta


@njit(cache=True)
def component_sums(diag, coef, offs, labels, size, bordered, inside, leak_sum, diag_sum):
    """Per component root (see :func:`strong_components`): its cell count, whether a weak coupling borders
    it, ``1^T A 1`` over it (``leak_sum``) and its diagonal sum; ``inside[i]``: row ``i``'s sum over its own
    component. All outputs are overwritten."""
    npad = labels.size
    nk = offs.shape[0]
    for i in range(npad):
        inside[i] = diag[i]
        size[i] = 0
        bordered[i] = False
        leak_sum[i] = 0.0
        diag_sum[i] = 0.0
    for k in range(nk):
        o = offs[k]
        for i in range(npad - o):
            a = coef[k, i]
            if a == 0.0:
                continue
            li, lj = labels[i], labels[i + o]
            if li >= 0 and li == lj:
                inside[i] += a
                inside[i + o] += a
            else:
                if li >= 0:
                    bordered[li] = True
                if lj >= 0:
                    bordered[lj] = True
    for i in range(npad):
        r = labels[i]
        if r >= 0:
            size[r] += 1
            leak_sum[r] += inside[i]
            diag_sum[r] += diag[i]
