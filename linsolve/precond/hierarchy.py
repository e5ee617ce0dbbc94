"""The structured multigrid hierarchy and its V-cycle, written once for every array backend.

:func:`build_hierarchy` turns a symmetric grid M-matrix (5/7-point or 9/27-point
stencil on the full grid in C order; identity rows and zero rows allowed) into
levels of stencil operators:

* **Coarsening** keeps every other cell along the axes it coarsens. Which axes:
  those whose total coupling is at least ``semicoarsen`` times the strongest
  (PFMG-style semicoarsening: a grid stretched along one axis is coarsened
  along that axis until it is isotropic).
* **Interpolation** is operator-dependent (Dendy's black-box multigrid, de
  Zeeuw's MGD9V, see :mod:`linsolve.kernels.multigrid`), so it follows jumps of
  the coefficients (two-phase density ratios, cut cells, ghost-fluid weights).
* **Coarse operators** are Galerkin, ``R A P`` with ``R = P^T`` (9/27 points);
  rows that sum to zero exactly (no Dirichlet coupling within reach) are
  kept so against rounding, and rows of pure rounding become zero rows.
* **Smoothing**: multicolour Gauss-Seidel (red-black on 5/7-point levels, 4/8
  colours on 9/27-point ones) with a per-cell relaxation, plus line Gauss-Seidel
  (a tridiagonal solve per grid line) along every axis on the lines that hold
  a strongly anisotropic cell (coupling along the axis more than
  ``line_threshold`` times the mean of the others: graded or stretched grids),
  plus an exact correction of the constant of every *cluster*: a small
  component of strong couplings bordered by weak ones (an air bubble of a few
  cells in water), whose constant point smoothing cannot reduce.
* **Inactive cells** (rows without off-diagonal entries: identity rows of solid
  or air cells, zero rows of trapped cells) are left out of interpolation and
  solved exactly by the smoother. **Closed regions** (fluid with no Dirichlet
  face, a singular block) are found by a flood fill and reported in
  :attr:`Hierarchy.closed_labels` so that a Krylov driver can project their
  null space.
* **Coarsest level**: a dense Cholesky factor (null spaces of closed regions
  deflated by a rank-one term each).

:func:`vcycle` is the one V-cycle: it only calls a *kernels* object
(:class:`NumbaKernels` for NumPy arrays here, :class:`linsolve.backends.torch_kernels.TorchCycleKernels`
for torch tensors, used for GPU inference and for training), so the NumPy
inference, the torch inference and the training run the same cycle. The
post-smoother applies the pre-smoother's colour steps in reverse order,
restriction is the transpose of interpolation and the coarse solve is SPD,
so one cycle is a symmetric positive (semi-)definite operator for any
relaxation in (0, 2) and any positive coarse-correction scale.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import scipy.linalg
import scipy.ndimage
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..kernels import multigrid as K

__all__ = ["DEFAULT_LINE_THRESHOLD", "Level", "LineSet", "Hierarchy", "build_hierarchy", "vcycle", "NumbaKernels", "CycleSteps"]

LINE_MARGIN = 1
#: Default anisotropy ratio above which a cell's lines are relaxed (see :func:`build_hierarchy`). Galerkin
#: coarse levels (9/27-point) spread an axis's coupling over the corner entries, which count toward every
#: axis they touch, so a fine-grid ratio of 3-4 reads as 1.5-2 there: at 2.0 a gently graded grid (widths
#: 1.02-1.05x per cell up to a 50x stretch, 256^2-1024^2) lost its lines on the coarse levels and took 21-58
#: PCG iterations, growing with the grid; at 1.5, 9-25 (stretch 10: 18 -> 8 at 1024^2; 3D, 32^3-64^3: 10-21 ->
#: 8-19). In 2D the cells beside a wall or a free surface (couplings 2 : 1) now get lines too: 1-2 % of the
#: cells on the fluid scenes, whose iterations stay within one of what they were.
DEFAULT_LINE_THRESHOLD = 1.5


@dataclass
class LineSet:
    """Line segments along ``axis`` relaxed by block Gauss-Seidel on one level."""

    axis: int
    k_axis: int
    stride: int
    starts: np.ndarray
    lengths: np.ndarray
    colors: np.ndarray
    order: np.ndarray
    omega: float = 1.0


@dataclass
class ClusterSet:
    """Clusters of a level, in colour order (see :func:`_find_clusters` and ``K.cluster_correct``).

    Per cluster ``c``: cells ``members[m_start[c]:m_start[c+1]]`` (padded
    indices) with ``leak`` (each cell's row sum over the cluster,
    ``a_ii + sum_{j in c} a_ij``), couplings to cells outside
    ``e_col[e_start[c]:e_start[c+1]]`` / ``e_weight``, and ``inv_d =
    1 / 1_c^T A 1_c``. Clusters ``colour_start[k]:colour_start[k+1]`` share
    colour ``k`` and do not couple to each other. ``member_cluster`` /
    ``edge_cluster``: the cluster of each member / coupling (for backends
    that update a whole colour at once).
    """

    members: np.ndarray
    leak: np.ndarray
    m_start: np.ndarray
    e_col: np.ndarray
    e_weight: np.ndarray
    e_start: np.ndarray
    inv_d: np.ndarray
    colour_start: np.ndarray
    member_cluster: np.ndarray
    edge_cluster: np.ndarray
    #: The smallest ``1^T A 1`` of a cluster over its diagonal sum: how nearly singular the corrections are.
    min_leak_ratio: float = 1.0

    @property
    def size(self) -> int:
        return int(self.inv_d.size)


@dataclass
class Level:
    """One level: a stencil operator on a padded grid (see :mod:`linsolve.kernels.multigrid`)."""

    grid3: tuple
    pshape: np.ndarray
    ghost: np.ndarray
    offs: np.ndarray
    dvec: np.ndarray
    diag: np.ndarray
    coef: np.ndarray
    active: np.ndarray
    strength: Optional[np.ndarray] = None
    relax: Optional[np.ndarray] = None
    point_colors: np.ndarray = field(default_factory=lambda: np.array([-1, -2]))
    lines: List[LineSet] = field(default_factory=list)
    caxes: Optional[np.ndarray] = None
    W: Optional[np.ndarray] = None
    rho: Optional[np.ndarray] = None
    correction: float = 1.0
    coarse: Optional[dict] = None
    #: Cells (grid-shaped bool) whose row of the exact operator may have a nonzero sum: they couple to a
    #: Dirichlet value, or lie within reach of one through interpolation (see :func:`_snap_row_sums`).
    leaky: Optional[np.ndarray] = None
    #: Strongly coupled clusters whose constants the smoother corrects (see :func:`_find_clusters`).
    clusters: Optional["ClusterSet"] = None

    @property
    def npad(self) -> int:
        return int(np.prod(self.pshape))

    @property
    def ncells(self) -> int:
        return int(np.prod(self.grid3))

    def interior(self) -> np.ndarray:
        """Flat padded indices of the grid cells, in C order."""
        return np.flatnonzero(K.to_padded(np.ones(self.ncells), self.grid3))


@dataclass
class Hierarchy:
    """Levels of a structured multigrid, finest first; see the module docstring."""

    grid_shape: tuple
    levels: List[Level]
    closed_labels: Optional[np.ndarray]
    n_closed: int
    zero_rows: np.ndarray
    precision: str = "double"
    box: Optional[tuple] = None
    outside_inv: Optional[np.ndarray] = None
    setup_time_s: float = 0.0
    #: Coarsenings taken over in part from a ``previous`` hierarchy (see :func:`build_hierarchy`).
    reused_levels: int = 0
    #: Per level, the box ``(lo, hi)`` of cells whose operator differs from the same level of the
    #: ``previous`` hierarchy (``lo == hi``: none), or None where the levels cannot be compared.
    changed: Optional[list] = None

    @property
    def interior(self) -> np.ndarray:
        if self.box is not None:
            raise ValueError("this hierarchy is cropped to the box of its coupled cells; build it with crop=False")
        return self.levels[0].interior()

    def box_index(self) -> np.ndarray:
        """Flat indices (caller's C order) of the cells the levels cover, in the levels' own C order."""
        grid3, _, _ = K.layout(self.grid_shape)
        if self.box is None:
            return np.arange(int(np.prod(grid3)))
        axes = [np.arange(a, b) for a, b in zip(*self.box)]
        return np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), grid3).ravel()


# ----------------------------------------------------------------------------- level construction

def _level_from_csr(mat: sp.csr_matrix, grid_shape) -> Level:
    grid3, pshape, ghost = K.layout(grid_shape)
    indptr, indices = mat.indptr, mat.indices  # int32 or int64: the kernels take either
    data = mat.data.astype(np.float64, copy=False)
    g3 = np.array(grid3, dtype=np.int64)
    table, half = K.offset_table(grid3)
    _, dvec_all = K.upper_offsets(grid3, "box")
    q_of = [int((d[0] + 1) * 9 + (d[1] + 1) * 3 + d[2] + 1) for d in dvec_all]
    npad = int(np.prod(pshape))
    # One pass for the usual 5/7-point matrix; a second one only when other offsets turn up.
    present = [k for k, d in enumerate(dvec_all) if np.abs(d).sum() == 1]
    for attempt in range(2):
        dvec = np.ascontiguousarray(dvec_all[present]).reshape(-1, 3)
        slot = np.full(27, -1, dtype=np.int64)
        for j, k in enumerate(present):
            slot[q_of[k]] = j
        diag = np.zeros(npad)
        coef = np.zeros((len(present), npad))
        found = np.zeros((2, max(len(present), 1)), dtype=np.int64)
        code, row = K.csr_to_stencil(indptr, indices, data, g3, np.array(pshape, dtype=np.int64),
                                     np.array(ghost, dtype=np.int64), table, half, slot, diag, coef, found)
        if code != 1 or attempt == 1:
            break
        counts = np.zeros(27, dtype=np.int64)
        bad = int(K.stencil_pattern(indptr, indices, data, g3, table, half, counts))
        if bad >= 0:
            raise ValueError(f"A has nonzero entries outside the 3x3x3 neighbourhood of the grid "
                             f"{tuple(grid_shape)} (first in row {bad}): pass the right grid_shape or use another "
                             f"preconditioner")
        present = [k for k in range(len(dvec_all)) if counts[q_of[k]] or counts[26 - q_of[k]]]
    if code == 0:  # offsets without an entry (an axis with no coupling) would only cost time
        used = found[0, :len(present)] > 0
        dvec, coef = np.ascontiguousarray(dvec[used]).reshape(-1, 3), np.ascontiguousarray(coef[used])
    strides = np.array([pshape[1] * pshape[2], pshape[2], 1], dtype=np.int64)
    offs = dvec @ strides
    if code == 1:
        raise ValueError(f"A has nonzero entries outside the grid stencil of {tuple(grid_shape)} (row {row})")
    if code == 2:
        where = f" (row {row})" if row >= 0 else ""
        raise ValueError(f"A is not symmetric{where}; the multigrid preconditioner needs a symmetric A (rows "
                         f"replaced by unit rows to pin values, their columns left in A, make it so: "
                         f"method='auto' moves those columns to b, see linsolve.structure.pinned_rows)")
    scale = float(np.max(np.abs(diag))) if diag.size else 0.0
    if coef.size and coef.max() > 1e-12 * max(scale, 1e-300):
        raise ValueError("A has a positive off-diagonal entry; the structured multigrid needs an M-matrix "
                         "(non-positive couplings, as pressure and Poisson matrices have); use amg-cg instead")
    L = Level(grid3=grid3, pshape=np.array(pshape, dtype=np.int64), ghost=np.array(ghost, dtype=np.int64),
              offs=offs, dvec=dvec, diag=diag, coef=coef, active=np.zeros(npad))
    _analyse(L)
    coupled = L.active > 0
    if np.any(diag[coupled] <= 0):
        i = int(np.flatnonzero(coupled & (diag <= 0))[0])
        raise ValueError(f"A has a zero or negative diagonal entry in coupled row {_unpad_index(L, i)}: it is not "
                         f"positive definite (a negative definite matrix must be negated first)")
    decoupled = ~coupled & (np.abs(diag) > 0)
    if np.any(diag[decoupled] < 0):
        i = int(np.flatnonzero(decoupled & (diag < 0))[0])
        raise ValueError(f"A has a negative diagonal entry in decoupled row {_unpad_index(L, i)}")
    return L


#: A 2D level on which at least ``SINGLE_MAX_ANISOTROPIC_SHARE`` of the coupled cells couple more than
#: ``SINGLE_MAX_ANISOTROPY`` times as strongly along one axis as along the other keeps its interpolation weights
#: in double precision for a single-precision cycle (see :func:`_single_loses_weak_axis`).
SINGLE_MAX_ANISOTROPY = 100.0
SINGLE_MAX_ANISOTROPIC_SHARE = 0.05


def _single_loses_weak_axis(L: Level) -> bool:
    """Whether Galerkin levels formed from float32-rounded weights would lose the weak axis of a graded 2D grid.

    Where a cell couples ``S`` times more strongly along one axis, the coarse couplings along the weak axis are
    ~1/S of the terms ``P^T A P`` sums, and weights rounded to float32 (no longer summing to one) leave errors of
    ~1e-7 S there: a tanh-graded 1024^2 cavity (walls, 50x stretch: 22 % of the cells above 100) took 23 PCG
    iterations with float32 weights, 9 with double ones and the same float32 cycle (1.97 -> 1.02 s; an all-double
    cycle: 9, 1.22 s); 20x stretch (9 %): 13 -> 6 (1.22 -> 0.84 s). The fluid scenes keep float32 weights (at most
    0.3 % of such cells, at cut cells). 3D graded grids gain nothing from double precision (17 / 17 iterations
    at 64^3, 50x): their limit is the missing plane relaxation, so only 2D levels are asked.
    """
    real = [a for a in range(3) if L.grid3[a] > 1]
    if len(real) != 2 or L.strength is None:
        return False
    coupled = int(np.count_nonzero(L.active))
    if coupled == 0:
        return False
    first, second = L.strength[real[0]], L.strength[real[1]]  # views: this runs on every 2D build
    # decoupled cells have no strength on either axis, and 0 > 100 * 0 is false
    anisotropic = np.count_nonzero(first > SINGLE_MAX_ANISOTROPY * second) + \
        np.count_nonzero(second > SINGLE_MAX_ANISOTROPY * first)
    return bool(anisotropic >= SINGLE_MAX_ANISOTROPIC_SHARE * coupled)


#: Crop only when the box of coupled cells leaves out at least this share of the grid.
CROP_MIN_SAVING = 0.05


def _active_box(L: Level):
    """``(start, stop)`` (grid3 coordinates) of the coupled cells, or None when cropping would not pay."""
    active = K.from_padded(L.active, L.grid3).reshape(L.grid3) > 0
    if not active.any():
        return None
    start, stop = [], []
    for a in range(3):
        other = tuple(b for b in range(3) if b != a)
        hits = np.flatnonzero(active.any(axis=other))
        start.append(int(hits[0]))
        stop.append(int(hits[-1]) + 1)
    volume = int(np.prod([b - a for a, b in zip(start, stop)]))
    if volume > (1.0 - CROP_MIN_SAVING) * L.ncells:
        return None
    return tuple(start), tuple(stop)


def _crop(L: Level, box) -> Level:
    """The level restricted to ``box``: no coupling crosses its faces, since every cell outside is decoupled."""
    start, stop = box
    grid3 = tuple(b - a for a, b in zip(start, stop))
    _, pshape, ghost = K.layout(grid3)
    full = tuple(slice(g + a, g + b) for g, a, b in zip(L.ghost, start, stop))
    inside = tuple(slice(g, g + m) for g, m in zip(ghost, grid3))
    npad = int(np.prod(pshape))

    def cut(values):
        """Rows of ``values`` (one per field, over L's padded grid) cut to the box, zero ghosts."""
        out = np.zeros((values.shape[0],) + tuple(pshape))
        out[(slice(None),) + inside] = values.reshape((values.shape[0],) + tuple(L.pshape))[(slice(None),) + full]
        return out.reshape(values.shape[0], npad)

    strides = np.array([pshape[1] * pshape[2], pshape[2], 1], dtype=np.int64)
    C = Level(grid3=grid3, pshape=np.array(pshape, dtype=np.int64), ghost=np.array(ghost, dtype=np.int64),
              offs=L.dvec @ strides if len(L.dvec) else np.zeros(0, dtype=np.int64), dvec=L.dvec,
              diag=cut(L.diag[None])[0], coef=cut(L.coef), active=np.zeros(npad))
    # no coupling crosses the box, so the strengths are those of the whole grid
    _analyse(C, cut(L.strength))
    return C


def _unpad_index(L: Level, i: int) -> int:
    coords = np.unravel_index(i, tuple(L.pshape))
    u = [c - g for c, g in zip(coords, L.ghost)]
    return int(np.ravel_multi_index(u, L.grid3))


def _analyse(L: Level, strength: Optional[np.ndarray] = None) -> None:
    """Per-axis coupling strength (unless given), active mask and the point-smoother colouring of a level."""
    if strength is None:
        strength = np.zeros((3, L.npad))
        K.axis_strength(L.diag, L.coef, L.offs, L.dvec, L.pshape, L.ghost, strength)
    L.strength = strength
    L.active = (L.strength.sum(axis=0) > 0).astype(np.float64)
    if _axis_only(L):
        L.point_colors = np.array([-1, -2], dtype=np.int64)  # red-black
    else:
        # parity colours in the order of linsolve.kernels.multigrid.mc_sweep: slabs of one parity at a time
        L.point_colors = np.array([c for c in range(8) if not ((c >> 2) & 1 and L.grid3[0] == 1)
                                   and not ((c >> 1) & 1 and L.grid3[1] == 1) and not (c & 1 and L.grid3[2] == 1)],
                                  dtype=np.int64)


def _axis_only(L: Level) -> bool:
    return bool(np.all(np.abs(L.dvec).sum(axis=1) == 1)) if len(L.dvec) else True


def _choose_axes(L: Level, semicoarsen: float) -> np.ndarray:
    # An axis of two cells would coarsen to one, which the layout stores without ghost layers (a 2D grid's
    # unit axis), where the interpolation of the odd cell has no ghost corner to point at: keep it.
    can = np.array([m > 2 for m in L.grid3])
    totals = L.strength.sum(axis=1)
    smax = max((totals[a] for a in range(3) if can[a]), default=0.0)
    if smax <= 0:
        return can
    return can & (totals >= semicoarsen * smax)


def _select_lines(L: Level, threshold: float) -> List[LineSet]:
    """Segments of strongly anisotropic cells along each axis (grown by LINE_MARGIN, at least two cells long)."""
    real = [a for a in range(3) if L.grid3[a] > 1]
    if not threshold or threshold <= 0 or len(real) < 2:
        return []
    strides = np.array([L.pshape[1] * L.pshape[2], L.pshape[2], 1])
    out = []
    axis_only = _axis_only(L)
    for a in real:
        k_axis = next((k for k, d in enumerate(L.dvec) if d[a] == 1 and np.abs(d).sum() == 1), -1)
        if k_axis < 0:
            continue
        cap = L.ncells // 2 + 1
        starts, lengths, colours = (np.empty(cap, dtype=np.int64) for _ in range(3))
        count = K.strong_segments(L.strength, a, float(threshold), len(real), LINE_MARGIN, L.pshape, L.ghost,
                                  starts, lengths, colours, 0 if axis_only else 1)
        if count == 0:
            continue
        order = np.array([0, 1]) if axis_only else np.array([0, 3, 1, 2])
        out.append(LineSet(axis=a, k_axis=int(k_axis), stride=int(strides[a]), starts=starts[:count].copy(),
                           lengths=lengths[:count].copy(), colors=colours[:count].copy(),
                           order=order.astype(np.int64)))
    return out


def _coarsen(L: Level, w_dtype=np.float64, reuse: Optional["_Reuse"] = None) -> Level:
    """Interpolation weights of ``L`` and the Galerkin operator of the next level.

    ``w_dtype`` is the precision the cycle will apply the weights in; the
    Galerkin product is formed (in float64) from the weights as stored, so the
    coarse operator is exactly ``P^T A P`` for the ``P`` the cycle uses.
    ``reuse``: the same level of a previous hierarchy and the box of cells
    where ``L`` differs from it; only what that box can reach is recomputed.
    """
    caxes = L.caxes
    grid = np.array(L.grid3, dtype=np.int64)
    if reuse is not None and np.all(reuse.box[0] == reuse.box[1]):  # nothing changed: the same arrays serve
        P, C_prev = reuse.fine, reuse.coarse
        L.W, L.rho = P.W, P.rho
        C = Level(grid3=C_prev.grid3, pshape=C_prev.pshape, ghost=C_prev.ghost, offs=C_prev.offs, dvec=C_prev.dvec,
                  diag=C_prev.diag, coef=C_prev.coef, active=np.zeros(C_prev.npad))
        _analyse(C)
        C.leaky = C_prev.leaky
        return C
    cgrid3 = K.coarse_shape(L.grid3, caxes)
    _, cpshape, cghost = K.layout(cgrid3)
    coffs, cdvec = K.upper_offsets(cgrid3, "box")
    index = np.full(27, -1, dtype=np.int64)
    for k, d in enumerate(cdvec):
        index[(d[0] + 1) * 9 + (d[1] + 1) * 3 + d[2] + 1] = k
    cnpad = int(np.prod(cpshape))
    cp = np.array(cpshape, dtype=np.int64)
    cg = np.array(cghost, dtype=np.int64)
    cgrid = np.array(cgrid3, dtype=np.int64)
    if reuse is None:
        L.W = np.zeros((8, L.npad), dtype=w_dtype)
        L.rho = np.zeros(L.npad)
        w_lo, w_hi = np.zeros(3, dtype=np.int64), grid
        c_lo, c_hi = np.zeros(3, dtype=np.int64), cgrid
        cdiag = np.zeros(cnpad)
        ccoef = np.zeros((len(coffs), cnpad))
    else:
        P, C_prev = reuse.fine, reuse.coarse
        lo, hi = reuse.box
        # a coarse row gathers the fine cells up to two cells around it and their neighbours' weights
        w_lo, w_hi = np.maximum(lo - _W_REACH, 0), np.minimum(hi + _W_REACH, grid)
        f_lo, f_hi = np.maximum(w_lo - 1, 0), np.minimum(w_hi + 1, grid)
        c_lo = np.where(caxes, f_lo // 2 - 1, f_lo - 1).clip(0, None)
        c_hi = np.minimum(np.where(caxes, (f_hi - 1) // 2 + 2, f_hi + 1), cgrid)
        L.W, L.rho = P.W.copy(), P.rho.copy()
        cdiag = C_prev.diag.copy()
        ccoef = np.zeros((len(coffs), cnpad))
        for k, d in enumerate(C_prev.dvec):
            ccoef[index[(d[0] + 1) * 9 + (d[1] + 1) * 3 + d[2] + 1]] = C_prev.coef[k]
        box = tuple(slice(g + a, g + b) for g, a, b in zip(cg, c_lo, c_hi))
        cdiag.reshape(cpshape)[box] = 0.0
        ccoef.reshape((len(coffs),) + tuple(cpshape))[(slice(None),) + box] = 0.0
    K.interpolation_weights(L.diag, L.coef, L.offs, L.dvec, L.active, L.pshape, L.ghost, caxes, w_lo, w_hi,
                            L.rho, L.W)
    K.galerkin(L.diag, L.coef, L.offs, L.dvec, L.active, L.W, L.pshape, L.ghost, caxes, cp, cg, index, c_lo, c_hi,
               cdiag, ccoef)
    keep = np.flatnonzero(np.abs(ccoef).max(axis=1) > 0) if ccoef.size else np.zeros(0, dtype=np.int64)
    C = Level(grid3=cgrid3, pshape=cp, ghost=cg, offs=np.ascontiguousarray(coffs[keep]),
              dvec=np.ascontiguousarray(cdvec[keep]), diag=cdiag, coef=np.ascontiguousarray(ccoef[keep]),
              active=np.zeros(cnpad))
    _analyse(C)
    _snap_row_sums(L, C)
    _drop_rounding_rows(C)
    # A closed fluid pocket that one coarse point interpolates to whole leaves that point decoupled with the
    # diagonal 1^T A 1 = 0 up to rounding (1e-16 of the entries); a smoother or the coarse solve would divide
    # the pocket's residual by it (M ~ 1e32, a PCG breakdown). It is a zero row: the pocket's constant is in
    # A's null space, which the Krylov driver projects out.
    rounding = (C.active == 0) & (C.diag > 0) & (C.diag <= COARSE_ZERO_DIAGONAL * max(float(C.diag.max()), 0.0))
    if rounding.any():
        C.diag[rounding] = 0.0
    return C


def _row_sums(L: Level, with_diagonal: bool = True) -> np.ndarray:
    """Row sums of a level's operator (padded), or of its off-diagonal entries only."""
    s = L.diag.copy() if with_diagonal else np.zeros_like(L.diag)
    for k, o in enumerate(L.offs):
        s += L.coef[k]
        s[o:] += L.coef[k, :-o]  # the lower entry of row i is stored at i - o
    return s


def _leaky_rows(L: Level, rowsum_tol: float) -> np.ndarray:
    """Grid-shaped mask of the active cells whose row sum is positive (beyond ``rowsum_tol`` of the diagonal)."""
    leaky = (L.active > 0) & (_row_sums(L) > rowsum_tol * L.diag)
    return K.from_padded(leaky, L.grid3).reshape(L.grid3)


#: Reach (fine cells along a coarsened axis) of a positive row sum into the rows of ``P^T A P``: a weight
#: reads the row sums of the cells in its 2x2x2 block (one cell), ``A`` one more, and a column of ``P``
#: spans one cell either side of its coarse point.
_LEAK_REACH = 3

#: A row snapped to a zero sum (see :func:`_snap_row_sums`) may differ from the computed one by at most this
#: fraction of its diagonal; a larger difference is not rounding, and the row is left as computed.
SNAP_MAX_CHANGE = 1e-3


def _snap_row_sums(L: Level, C: Level) -> None:
    """Restore the exact zero row sums of the coarse operator ``C`` of ``L`` that rounding has spoilt.

    Where no row of ``A`` within reach has a positive sum, the rows of
    ``P^T A P`` sum to zero exactly: interpolation reproduces constants
    there. Formed in floating point, they do not: the product cancels the
    large entries of a high-density-ratio (or strongly graded) operator down
    to the small ones, and the weights of the next level divide that
    rounding by a small collapsed centre, so the error grows by about the
    coefficient ratio at every level (a 1e5:1 closed box: row sums 1e-11,
    8e-7, 5e-5 of the diagonal on levels 1-3). The coarsest level then no
    longer holds a closed region's constants in its null space, the
    deflation that makes its factor definite misses them, and the cycle
    returns ~1e17 times a constant: PCG stalls. Setting those diagonals to
    minus their off-diagonal sums keeps every level exactly singular on
    closed regions and exactly Neumann where the fine operator is.

    Only with double-precision weights: float32 weights reproduce constants
    to 1e-7 only, and the exact ``P^T A P`` of that ``P`` has row sums of that
    size times the coefficient ratio; a coarse operator snapped away from it
    makes the cycle indefinite (closed regions always get double weights).
    """
    if L.leaky is None or L.W.dtype != np.float64:
        return
    reach = L.leaky.astype(np.uint8)
    for axis in range(3):
        if reach.shape[axis] > 1:
            radius = _LEAK_REACH if L.caxes[axis] else 1
            reach = scipy.ndimage.maximum_filter1d(reach, 2 * radius + 1, axis=axis, mode="constant")
    C.leaky = reach[tuple(slice(None, None, 2) if c else slice(None) for c in L.caxes)].astype(bool)
    if C.leaky.shape != tuple(C.grid3):  # a layout this rule does not know: keep the computed rows
        C.leaky = np.ones(C.grid3, dtype=bool)
        return
    off = _row_sums(C, with_diagonal=False)
    snap = (C.active > 0) & ~K.to_padded(C.leaky, C.grid3, dtype=bool) & (-off > 0) \
        & (np.abs(C.diag + off) <= SNAP_MAX_CHANGE * C.diag)
    C.diag[snap] = -off[snap]
    C.leaky |= K.from_padded((C.active > 0) & ~snap, C.grid3).reshape(C.grid3) \
        & (np.abs(K.from_padded(C.diag + off, C.grid3).reshape(C.grid3)) > 0)


#: A coupling is strong when at least this fraction of the largest coupling of either of its cells.
CLUSTER_STRENGTH = 0.01
#: A cluster is kept when its constant is nearly a null vector: ``1^T A 1`` below this share of its diagonal.
CLUSTER_MAX_LEAK = 0.05
#: A cluster is kept when it holds at most this share of the level's coupled cells (larger ones are the
#: background phase, which the coarse grid handles); clusters are looked for only while they hold at most
#: this share together.
CLUSTER_MAX_SHARE = 0.5


def _find_clusters(L: Level) -> Optional[ClusterSet]:
    """The clusters of strongly coupled cells whose constants the point smoother cannot reduce.

    A small air bubble in water at a density ratio of 1e5 couples its own
    cells 1e5 times more strongly than it couples to the water around it:
    Gauss-Seidel reduces its constant by ~1e-5 per sweep, and coarsening by
    two cannot represent it once it is a few cells wide (3D bubbles of 2-7
    cells at 1e5: 165 PCG iterations). A cluster is a component of strong
    couplings that weak ones border, whose constant is nearly a null vector
    (``1^T A 1 < CLUSTER_MAX_LEAK`` of its diagonal); the smoother corrects
    each cluster's constant exactly after the point sweeps (see
    ``K.cluster_correct``): 165 -> 12 iterations there, 29 -> 8 for radius-3
    bubbles. None when the level has no such cluster.
    """
    labels = np.empty(L.npad, dtype=np.int64)
    if not len(L.offs) or not K.strong_components(L.coef, L.offs, L.active, CLUSTER_STRENGTH, labels):
        return None
    n = L.npad
    size, bordered = np.empty(n, dtype=np.int64), np.empty(n, dtype=bool)
    inside, d, diag_sum = np.empty(n), np.empty(n), np.empty(n)
    K.component_sums(L.diag, L.coef, L.offs, labels, size, bordered, inside, d, diag_sum)
    n_coupled = int((labels >= 0).sum())
    keep = bordered & (size >= 2) & (size <= CLUSTER_MAX_SHARE * n_coupled) & (d > 0) \
        & (d < CLUSTER_MAX_LEAK * diag_sum)
    roots = np.flatnonzero(keep)
    if not roots.size or size[roots].sum() > CLUSTER_MAX_SHARE * n_coupled:
        return None  # clusters everywhere are the lines of a stretched grid, which line relaxation solves
    cluster_of = np.full(L.npad, -1, dtype=np.int64)
    cluster_of[roots] = np.arange(roots.size)
    cell_cluster = np.where(labels >= 0, cluster_of[np.maximum(labels, 0)], -1)
    # couplings from a cluster's cells to cells outside it (both directions of every stored upper entry)
    rows, cols, weights = [], [], []
    for k, o in enumerate(L.offs):
        a = L.coef[k, :-o]
        lo, hi = cell_cluster[:-o], cell_cluster[o:]
        for src, dst, shift in ((lo, hi, 0), (hi, lo, o)):
            sel = np.flatnonzero((src >= 0) & (src != dst) & (a != 0.0))
            rows.append(sel + shift)
            cols.append(sel + (o - shift))
            weights.append(a[sel])
    e_row, e_col, e_weight = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    # colour the clusters so that no two of a colour couple (a whole colour is then one Jacobi step)
    e_cl, nb = cell_cluster[e_row], cell_cluster[e_col]
    pair = nb >= 0
    adj = sp.csr_matrix((np.ones(int(pair.sum())), (e_cl[pair], nb[pair])), shape=(roots.size, roots.size))
    colours = np.empty(roots.size, dtype=np.int64)
    K.greedy_colours(adj.indptr.astype(np.int64), adj.indices.astype(np.int64), colours)
    order = np.lexsort((np.arange(roots.size), colours))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    members = np.flatnonzero(cell_cluster >= 0)
    m_cl = rank[cell_cluster[members]]
    m_sort = np.argsort(m_cl, kind="stable")
    e_cl = rank[e_cl]
    e_sort = np.argsort(e_cl, kind="stable")
    m_cl, e_cl = m_cl[m_sort], e_cl[e_sort]
    members = members[m_sort]
    return ClusterSet(
        members=members, leak=inside[members], m_start=np.searchsorted(m_cl, np.arange(roots.size + 1)),
        e_col=e_col[e_sort], e_weight=e_weight[e_sort], e_start=np.searchsorted(e_cl, np.arange(roots.size + 1)),
        inv_d=1.0 / d[roots][order], colour_start=np.searchsorted(colours[order], np.arange(colours.max() + 2)),
        member_cluster=m_cl, edge_cluster=e_cl, min_leak_ratio=float(np.min(d[roots] / diag_sum[roots])))


#: A float32 cycle divides a cluster's residual sum, rounded to 1e-7 of its terms, by ``1^T A 1``: below this
#: share of the cluster's diagonal (a density ratio beyond ~1e6) the hierarchy is built and run in double
#: precision (3D bubbles at 1e8:1, 24^3-40^3: no convergence in 300 iterations in float32 with the cluster
#: corrections, 14-24 without them, 5 in double; at 1e7:1 float32 still converges in 6-7).
SINGLE_MIN_CLUSTER_LEAK = 1e-6


#: A coarse row whose diagonal is at most this fraction of the level's largest holds rounding only (see
#: :func:`_drop_rounding_rows`); a coefficient ratio of 1e14 would be needed to reach it legitimately.
COARSE_ROUNDING_ROW = 1e-14


def _drop_rounding_rows(C: Level) -> None:
    """Make zero rows of the coarse rows that hold only rounding.

    A coarse point whose interpolation reaches no cell that a neighbour's
    weight does not cancel (next to a wall, in a two-phase box at 1e6:1)
    gets a Galerkin row of ~1e-26 of the level's entries: it counts as
    coupled, its diagonal makes the coarsest factor nearly singular in as
    many directions, and the cycle returns ~1e23 times them (a PCG
    breakdown). Its entries are rounding: the row and its column are
    zeroed, which leaves a zero row, solved as one.
    """
    if not C.diag.size:
        return
    garbage = (C.active > 0) & (C.diag <= COARSE_ROUNDING_ROW * float(C.diag.max()))
    if not garbage.any():
        return
    C.diag[garbage] = 0.0
    for k, o in enumerate(C.offs):
        C.coef[k, garbage] = 0.0
        C.coef[k, :-o][garbage[o:]] = 0.0  # the lower entries of those rows: their upper neighbours' slots
    _analyse(C)
    if C.leaky is not None:
        C.leaky &= K.from_padded(C.active > 0, C.grid3).reshape(C.grid3)


#: A decoupled coarse cell whose Galerkin diagonal is at most this fraction of the level's largest is a zero row
#: (see :func:`_coarsen`).
COARSE_ZERO_DIAGONAL = 1e-10


#: A level changed over more than this share of its cells is coarsened afresh (copying would not pay).
REUSE_MAX_SHARE = 0.5

#: How far (cells, along every axis) a change of the stored operator reaches into the interpolation
#: weights: a row reads entries stored one cell away, and a weight reads the weights of neighbours one
#: step along each odd axis, all inside the 3x3x3 block around it (2 suffices; one more for safety).
_W_REACH = 3


@dataclass
class _Reuse:
    """A level of a previous hierarchy, its next level, and the box where the new level differs from it."""

    fine: Level
    coarse: Level
    box: tuple


def _changed_box(L: Level, P: Level):
    """``(lo, hi)`` grid coordinates of the cells whose operator differs between ``L`` and ``P``.

    None when they cannot be compared cell by cell (another grid or stencil);
    an empty box (``lo == hi``) when nothing changed.
    """
    if L.grid3 != P.grid3 or L.offs.shape != P.offs.shape or not np.array_equal(L.offs, P.offs):
        return None
    changed = (L.diag != P.diag) | (L.active != P.active)
    for k in range(len(L.offs)):
        changed |= L.coef[k] != P.coef[k]
    where = np.flatnonzero(changed)
    if where.size == 0:
        return np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64)
    coords = np.array(np.unravel_index(where, tuple(L.pshape))) - L.ghost[:, None]
    grid = np.array(L.grid3, dtype=np.int64)
    # entries stored in a ghost cell (a coupling across the grid's face) count for the cell inside
    return coords.min(axis=1).clip(0, grid - 1), coords.max(axis=1).clip(0, grid - 1) + 1


def _stencil_to_csr(L: Level, rows: np.ndarray) -> sp.csr_matrix:
    """CSR (over the padded index space, restricted to ``rows``) of a level's operator."""
    n = L.npad
    data, r, c = [L.diag[rows]], [rows], [rows]
    pos = np.full(n, -1, dtype=np.int64)
    pos[rows] = np.arange(rows.size)
    for k, o in enumerate(L.offs):
        v = L.coef[k, rows]
        nz = v != 0
        data += [v[nz], v[nz]]
        r += [rows[nz], rows[nz] + o]
        c += [rows[nz] + o, rows[nz]]
    data, r, c = np.concatenate(data), np.concatenate(r), np.concatenate(c)
    keep = (pos[r] >= 0) & (pos[c] >= 0)
    return sp.csr_matrix((data[keep], (pos[r[keep]], pos[c[keep]])), shape=(rows.size, rows.size))


def _factor_coarsest(L: Level, rowsum_tol: float = 1e-10) -> None:
    """Dense SPD factor of the coarsest operator on its coupled cells (closed regions deflated).

    ``rowsum_tol``: row sums below this fraction of the diagonal count as zero
    (closed regions); single-precision weights leave ~1e-7 of rounding there.
    """
    rows = np.flatnonzero(L.active > 0)
    L.coarse = {"rows": rows, "kind": "empty"}
    inv_diag = np.where(L.diag > 0, 1.0 / np.where(L.diag > 0, L.diag, 1.0), 0.0)
    L.coarse["inv_diag"] = inv_diag
    if rows.size == 0:
        return
    dense = _stencil_to_csr(L, rows).toarray()
    seen = np.zeros(L.npad, dtype=np.int64)
    n_closed = K.unreached_from_dirichlet(L.diag, L.coef, L.offs, L.active, L.pshape, L.ghost, rowsum_tol, seen)
    if n_closed:
        closed = seen[rows] == 0
        sub = _stencil_to_csr(L, rows[closed])
        ncomp, labels = connected_components(sub, directed=False)
        scale = float(np.max(np.diag(dense)))
        idx = np.flatnonzero(closed)
        for comp in range(ncomp):
            members = idx[labels == comp]
            # The Galerkin operator keeps the constants of a closed region in its null space (interpolation
            # reproduces constants there): a rank-one term makes the block definite without changing the
            # solution of a consistent right-hand side.
            dense[np.ix_(members, members)] += scale / members.size
    try:
        L.coarse.update(kind="chol", factor=scipy.linalg.cho_factor(dense, lower=True, check_finite=False))
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(dense)
        keep = vals > 1e-12 * max(float(vals.max()), 1e-300)
        L.coarse.update(kind="eig", vecs=vecs[:, keep], inv=1.0 / vals[keep])


def coarse_inverse(L: Level) -> np.ndarray:
    """The dense inverse the coarse solve applies on ``L.coarse["rows"]`` (for backends without a factor)."""
    c = L.coarse
    if c["kind"] == "chol":
        m = c["rows"].size
        return scipy.linalg.cho_solve(c["factor"], np.eye(m), check_finite=False)
    if c["kind"] == "eig":
        return (c["vecs"] * c["inv"]) @ c["vecs"].T
    return np.zeros((0, 0))


def build_hierarchy(A, grid_shape, *, coarse_size: int = 512, line_threshold: float = DEFAULT_LINE_THRESHOLD,
                    semicoarsen: float = 0.5, max_levels: int = 40, precision: str = "double",
                    crop: bool = True, previous: Optional[Hierarchy] = None) -> Hierarchy:
    """Build the levels for a symmetric grid M-matrix ``A`` (CSR, full grid in C order).

    Parameters
    ----------
    A : scipy.sparse.csr_matrix
        Canonical CSR (sorted, no duplicates), validated by the caller.
    grid_shape : tuple of 2 or 3 ints
    coarse_size : int
        Coarsen until a level has at most this many cells, then factor it.
    line_threshold : float
        Anisotropy ratio above which a cell's lines are relaxed by line
        Gauss-Seidel (0 turns line relaxation off).
    semicoarsen : float
        Axes whose total coupling is below this fraction of the strongest
        are not coarsened on that level (1.0: coarsen only the strongest).
    precision : {"double", "single"}
        Precision of the interpolation weights (that of the cycle).
    crop : bool
        Build the levels on the bounding box of the coupled cells when it is
        clearly smaller than the grid (a liquid filling part of its tank): the
        decoupled cells outside it are solved exactly by ``1 / diag`` and cost
        nothing in the cycle.
    previous : Hierarchy, optional
        The hierarchy of the previous matrix of a sequence (the last time
        step), built with the same options. Where ``A`` differs from it only
        in part of the grid (a moving obstacle), the interpolation weights
        and Galerkin rows that the change cannot reach are taken over instead
        of recomputed. The result is bitwise the hierarchy built without
        ``previous``; a previous hierarchy that does not fit (another grid,
        stencil, crop box, coarsening or precision) is ignored.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.precond.hierarchy import build_hierarchy
    >>> H = build_hierarchy(linsolve.problems.poisson((32, 32, 32)), (32, 32, 32))
    >>> [L.grid3 for L in H.levels]
    [(32, 32, 32), (16, 16, 16), (8, 8, 8)]
    """
    t0 = time.perf_counter()
    if previous is not None and not isinstance(previous, Hierarchy):
        raise TypeError(f"previous must be a Hierarchy (of the last matrix of the sequence) or None, got "
                        f"{type(previous).__name__}")
    w_dtype = np.float32 if precision == "single" else np.float64
    full = _level_from_csr(A, grid_shape)
    zero_rows = K.from_padded((full.active == 0) & (full.diag == 0), full.grid3).astype(bool)
    box, outside_inv = None, None
    L = full
    if crop:
        box = _active_box(full)
        if box is not None:
            L = _crop(full, box)
            inside = np.zeros(full.grid3, dtype=bool)
            inside[tuple(slice(a, b) for a, b in zip(*box))] = True
            d = K.from_padded(full.diag, full.grid3)
            outside_inv = np.where(~inside.ravel() & (d > 0), 1.0 / np.where(d > 0, d, 1.0), 0.0)
    seen = np.zeros(L.npad, dtype=np.int64)
    n_unreached = K.unreached_from_dirichlet(L.diag, L.coef, L.offs, L.active, L.pshape, L.ghost, 1e-10, seen)
    closed_labels, n_closed = None, 0
    if n_unreached:
        cells = np.flatnonzero((seen == 0) & (L.active > 0))
        sub = _stencil_to_csr(L, cells)
        n_closed, comp = connected_components(sub, directed=False)
        labels_pad = np.full(L.npad, -1, dtype=np.int64)
        labels_pad[cells] = comp
        labels = K.from_padded(labels_pad, L.grid3).astype(np.int64)
        if box is not None:  # labels are reported on the caller's whole grid
            whole = np.full(full.grid3, -1, dtype=np.int64)
            whole[tuple(slice(a, b) for a, b in zip(*box))] = labels.reshape(L.grid3)
            labels = whole.ravel()
        closed_labels = labels
    first_clusters = _find_clusters(L)
    if n_closed:  # singular blocks: see GeometricMG; their levels are built and run in double precision
        w_dtype, precision = np.float64, "double"
    elif precision == "single" and first_clusters is not None \
            and first_clusters.min_leak_ratio < SINGLE_MIN_CLUSTER_LEAK:
        w_dtype, precision = np.float64, "double"  # see SINGLE_MIN_CLUSTER_LEAK; GeometricMG follows
    elif precision == "single" and _single_loses_weak_axis(L):
        w_dtype = np.float64  # the Galerkin levels from double weights; the cycle still runs in float32
    if w_dtype == np.float64:  # exact zero row sums are kept on double-weight levels only (_snap_row_sums)
        L.leaky = _leaky_rows(L, 1e-10)
    prev_levels = []
    if previous is not None and previous.precision == precision and previous.box == box \
            and tuple(previous.grid_shape) == tuple(int(s) for s in grid_shape):
        prev_levels = previous.levels
    levels = [L]
    reused = 0
    changed = [_changed_box(L, prev_levels[0]) if prev_levels else None]
    while True:
        L.lines = _select_lines(L, line_threshold)
        if L.ncells <= coarse_size or len(levels) >= max_levels or not np.any(L.active):
            break
        L.caxes = _choose_axes(L, semicoarsen)
        if not L.caxes.any():
            break
        reuse = None
        lev = len(levels) - 1
        P = prev_levels[lev] if lev + 1 < len(prev_levels) else None
        if P is not None and changed[lev] is not None and P.caxes is not None and np.array_equal(P.caxes, L.caxes) \
                and P.W.dtype == w_dtype and P.rho is not None \
                and np.prod(changed[lev][1] - changed[lev][0]) <= REUSE_MAX_SHARE * L.ncells:
            reuse = _Reuse(fine=P, coarse=prev_levels[lev + 1], box=changed[lev])
        # clusters of a coarse level come from those of the finest (bubbles coarsened): none there, none below
        L.clusters = first_clusters if len(levels) == 1 else _find_clusters(L) if first_clusters else None
        C = _coarsen(L, w_dtype, reuse)
        reused += reuse is not None
        levels.append(C)
        L = C
        changed.append(_changed_box(L, prev_levels[lev + 1]) if lev + 1 < len(prev_levels) else None)
    L.lines = []
    L.caxes = None
    L.W = None
    _factor_coarsest(L, 1e-5 if precision == "single" else 1e-10)
    H = Hierarchy(grid_shape=tuple(int(s) for s in grid_shape), levels=levels, closed_labels=closed_labels,
                  n_closed=int(n_closed), zero_rows=zero_rows, precision=precision, box=box,
                  outside_inv=outside_inv, reused_levels=reused, changed=changed if prev_levels else None)
    set_relaxation(H, 1.0)
    H.setup_time_s = time.perf_counter() - t0
    return H


def set_relaxation(H: Hierarchy, omega=1.0, correction=1.0, line_omega=1.0) -> None:
    """Set the smoothing parameters of every level.

    ``omega``: point relaxation, a scalar, one value per level, or per-level
    arrays over the level's padded cells, in (0, 2). ``correction``: scale of
    each level's coarse-grid correction, > 0. ``line_omega``: relaxation of
    the line-segment blocks, in (0, 2). Any such values keep the V-cycle
    symmetric positive definite.
    """
    nlev = len(H.levels)
    omegas = list(omega) if isinstance(omega, (list, tuple)) else [omega] * nlev
    corr = list(np.atleast_1d(np.asarray(correction, dtype=float)))
    lines = list(np.atleast_1d(np.asarray(line_omega, dtype=float)))
    omegas += [omegas[-1]] * (nlev - len(omegas))
    corr += [corr[-1]] * (nlev - len(corr))
    lines += [lines[-1]] * (nlev - len(lines))
    for lev, L in enumerate(H.levels):
        om = np.asarray(omegas[lev], dtype=np.float64)
        if om.ndim and om.shape != (L.npad,):
            raise ValueError(f"omega (level {lev}) must be a scalar or an array of {L.npad} padded cells")
        if not (np.all(om > 0) and np.all(om < 2)):
            raise ValueError(f"omega (level {lev}) must lie in (0, 2) for a positive definite smoother")
        c = float(corr[lev])
        if not np.isfinite(c) or c <= 0:
            raise ValueError(f"correction (level {lev}) must be > 0, got {c!r}")
        positive = L.diag > 0
        # Decoupled cells are solved exactly by one step whatever omega is; zero rows stay 0.
        L.relax = np.where(positive, np.where(L.active > 0, om, 1.0) / np.where(positive, L.diag, 1.0), 0.0)
        L.correction = c
        lw = float(lines[lev])
        if not 0 < lw < 2:
            raise ValueError(f"line_omega (level {lev}) must lie in (0, 2), got {lw!r}")
        for ls in L.lines:
            ls.omega = lw


# ----------------------------------------------------------------------------- the V-cycle

def vcycle(H: Hierarchy, kernels, b, steps: int = 1):
    """One symmetric V-cycle ``x = M^{-1} b`` on padded fine arrays of the kernels' backend.

    ``kernels`` supplies ``descend`` / ``ascend`` (see :class:`CycleSteps`,
    which composes them from ``zeros``, ``smooth(level, x, b, pre, first)``,
    ``residual_restrict`` and ``prolong_add``) and ``coarse_solve``; this
    function fixes the cycle, so every backend runs the same operator.
    """
    return _cycle(H, kernels, 0, b, steps)


def _cycle(H, kernels, lev, b, steps):
    if lev == len(H.levels) - 1:
        return kernels.coarse_solve(lev, b)
    x, coarse_b = kernels.descend(lev, b, steps)
    e = _cycle(H, kernels, lev + 1, coarse_b, steps)
    return kernels.ascend(lev, x, e, b, steps)


class CycleSteps:
    """The descent and ascent of a level composed from the primitive steps (any backend).

    ``descend``: pre-smoothing from ``x = 0``, then ``P^T (b - A x)``;
    ``ascend``: ``x += c P e``, then the post-smoothing (the adjoint order).
    A backend may override them with fused kernels that compute the same.
    """

    def descend(self, lev, b, steps):
        x = self.zeros(lev)
        for s in range(steps):
            x = self.smooth(lev, x, b, True, s == 0)
        return x, self.residual_restrict(lev, x, b)

    def ascend(self, lev, x, e, b, steps):
        x = self.prolong_add(lev, x, e)
        for _ in range(steps):
            x = self.smooth(lev, x, b, False, False)
        return x


def _colour_split(L: Level, dtype) -> tuple:
    """``(relax on red cells, relax on black cells)``, 0 elsewhere (ghosts included)."""
    out = np.empty((2, L.npad), dtype=dtype)
    K.colour_relax(L.relax, np.array([-1, -2], dtype=np.int64), L.pshape, L.ghost, out)
    return out[0], out[1]


def _colour_masks(L: Level, dtype) -> np.ndarray:
    """``(8, npad)``: the relaxation on the cells of each parity colour, 0 elsewhere."""
    out = np.empty((8, L.npad), dtype=dtype)
    K.colour_relax(L.relax, np.arange(8, dtype=np.int64), L.pshape, L.ghost, out)
    return out


def _line_factors(ls: LineSet, diag, coef) -> tuple:
    """``(offsets, inverse pivots, scaled uppers)`` of a line set's tridiagonal blocks (see ``K.line_factor``)."""
    offsets = np.zeros(ls.lengths.size, dtype=np.int64)
    np.cumsum(ls.lengths[:-1], out=offsets[1:])
    total = int(ls.lengths.sum())
    inv, upper = np.empty(total, diag.dtype), np.empty(total, diag.dtype)
    K.line_factor(diag, coef, ls.k_axis, ls.stride, ls.starts, ls.lengths, offsets, inv, upper)
    return offsets, inv, upper


def _correct_clusters(cs: ClusterSet, x, b, forward: bool) -> None:
    K.cluster_correct(cs.m_start, cs.members, cs.leak, cs.e_start, cs.e_col, cs.e_weight, cs.inv_d, x, b, forward)


class NumbaKernels(CycleSteps):
    """:func:`vcycle` kernels for NumPy arrays: the compiled stencil kernels, in place on per-level buffers.

    ``dtype`` is the precision the cycle runs in: float32 halves the memory
    traffic of a bandwidth-bound cycle; the hierarchy itself is built in
    float64 and the coarsest level is solved in float64 either way.
    """

    def __init__(self, H: Hierarchy, dtype=np.float64):
        self.H = H
        self.dtype = np.dtype(dtype)
        dt = self.dtype
        self._x = [np.zeros(L.npad, dt) for L in H.levels]
        self._r = [np.zeros(L.npad, dt) for L in H.levels]
        self._b = [np.zeros(L.npad, dt) for L in H.levels]
        self._diag = [L.diag.astype(dt) for L in H.levels]
        self._coef = [L.coef.astype(dt) for L in H.levels]
        self._relax = [L.relax.astype(dt) for L in H.levels]
        self._W = [None if L.W is None else np.asarray(L.W, dtype=dt) for L in H.levels]
        self._scale = [dt.type(L.correction) for L in H.levels]
        self._reverse = [(L.point_colors[::-1].copy(), [ls.order[::-1].copy() for ls in L.lines]) for L in H.levels]
        # the relaxation split by colour, so a colour's step is one masked pass per slab
        self._red_black = [_colour_split(L, dt) if L.point_colors[0] < 0 else None for L in H.levels]
        self._colours = [None if L.point_colors[0] < 0 else _colour_masks(L, dt) for L in H.levels]
        self._line_factors = [[_line_factors(ls, d, c) for ls in L.lines]
                              for L, d, c in zip(H.levels, self._diag, self._coef)]

    def zeros(self, lev):
        x = self._x[lev]
        if self._red_black[lev] is None:  # a red-black sweep from zero overwrites the whole interior itself
            x[:] = 0.0
        return x

    def smooth(self, lev, x, b, pre, first):
        L = self.H.levels[lev]
        diag, coef = self._diag[lev], self._coef[lev]
        rb = self._red_black[lev]
        if pre:
            if rb is not None:
                K.rb_sweep(diag, coef, L.offs, rb[0], rb[1], L.pshape, L.ghost, x, b, first)
            else:
                K.mc_sweep(diag, coef, L.offs, self._colours[lev], L.pshape, L.ghost, x, b, True, first)
            for ls, (off, inv, up) in zip(L.lines, self._line_factors[lev]):
                K.line_smooth(diag, coef, L.offs, x, b, ls.stride, ls.k_axis, ls.starts, ls.lengths, off,
                              ls.colors, ls.order, ls.omega, inv, up)
            if L.clusters is not None:
                _correct_clusters(L.clusters, x, b, True)
        else:
            if L.clusters is not None:
                _correct_clusters(L.clusters, x, b, False)
            colors, orders = self._reverse[lev]
            for ls, order, (off, inv, up) in zip(reversed(L.lines), reversed(orders),
                                                 reversed(self._line_factors[lev])):
                K.line_smooth(diag, coef, L.offs, x, b, ls.stride, ls.k_axis, ls.starts, ls.lengths, off,
                              ls.colors, order, ls.omega, inv, up)
            if rb is not None:
                K.rb_sweep(diag, coef, L.offs, rb[1], rb[0], L.pshape, L.ghost, x, b, False)
            else:
                K.mc_sweep(diag, coef, L.offs, self._colours[lev], L.pshape, L.ghost, x, b, False, False)
        return x

    def residual(self, lev, x, b):
        L = self.H.levels[lev]
        r = self._r[lev]
        K.stencil_residual(self._diag[lev], self._coef[lev], L.offs, L.pshape, L.ghost, x, b, r)
        return r

    def residual_restrict(self, lev, x, b):
        L, C = self.H.levels[lev], self.H.levels[lev + 1]
        out = self._b[lev + 1]
        K.residual_restrict(self._diag[lev], self._coef[lev], L.offs, x, b, self._W[lev], L.pshape, L.ghost, L.caxes,
                            C.pshape, C.ghost, out)
        return out

    def restrict(self, lev, r):
        L, C = self.H.levels[lev], self.H.levels[lev + 1]
        out = self._b[lev + 1]
        K.restrict(self._W[lev], r, L.pshape, L.ghost, L.caxes, C.pshape, C.ghost, out)
        return out

    def prolong_add(self, lev, x, e):
        L, C = self.H.levels[lev], self.H.levels[lev + 1]
        K.prolong_add(self._W[lev], e, self._scale[lev], L.pshape, L.ghost, L.caxes, C.pshape, C.ghost, x)
        return x

    def coarse_solve(self, lev, b):
        L = self.H.levels[lev]
        x = self._x[lev]
        c = L.coarse
        np.multiply(b, c["inv_diag"], out=x, casting="unsafe")
        rows = c["rows"]
        if c["kind"] == "chol":
            x[rows] = scipy.linalg.cho_solve(c["factor"], b[rows].astype(np.float64), check_finite=False)
        elif c["kind"] == "eig":
            x[rows] = c["vecs"] @ (c["inv"] * (c["vecs"].T @ b[rows].astype(np.float64)))
        return x
