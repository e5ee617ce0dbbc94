"""PCMG on cell-centred DMDA hierarchies: interpolation, Galerkin coarse operators, per-level parameters.

Why not ``DMCoarsen`` + DMDA interpolation as they come? A DMDA hierarchy is
vertex-centred: a non-periodic axis of ``M`` points coarsens to ``(M-1)/2+1``
points and needs ``M-1`` divisible by 2 at every level, while pressure grids
are cell-centred (64, 96, 100, ... cells). Its Q0 variant coarsens cell grids
but interpolates piecewise constants. So the hierarchy here is built from
DMDAs directly:

* each coarse level is a DMDA with ``ceil(n/2)`` cells per axis (odd sizes
  included), owned by the rank that owns the first child, so interpolation
  rows are local up to one coarse ghost cell;
* interpolation ``P`` is cell-centred trilinear (weights 3/4 and 1/4 per axis),
  the same operator as linsolve's geometric multigrid
  (:mod:`linsolve.kernels.multigrid`);
* coarse operators are Galerkin, ``A_c = P^T A P`` (``MatPtAP``, recomputed in
  place when ``A`` changes), restriction is ``P^T``.

Cells that do not couple to any neighbour (identity rows of SOLID/AIR cells,
fluid cells surrounded by air, the identity rows that replace zero rows of
trapped cells) would poison plain trilinear Galerkin products: a coarse cell
straddling a wall would get identity contributions from the solid side and
couple fluid on both sides of a thin wall. As in linsolve's multigrid, they
are *inactive*: their ``P`` rows are zero (the smoother solves them exactly),
interpolation weights are renormalised over active coarse cells (a constant is
interpolated exactly next to walls), and a coarse cell all of whose children
are inactive becomes inactive too. To keep every coarse operator nonsingular
such a coarse cell injects into its children (``P[s, parent] = 1`` for inactive
``s`` under an inactive parent), so its Galerkin row is a positive diagonal
with no coupling, never a zero row.

Coarse-correction scale. PETSc has no option for it (``PCMGSetRScale`` scales
restricted *states* for FAS, not corrections). Here the interpolation of level
``k`` is ``c_k P`` while the restriction stays ``P^T`` and ``A_c`` is built from
the unscaled ``P``, so the correction is exactly ``c_k P A_c^{-1} P^T r``: symmetric,
and positive definite inside CG for ``0 < c_k < 2``. With ``c_k = 1`` this is
PETSc's own ``-pc_mg_galerkin both`` with interpolation ``P``.
"""
from __future__ import annotations

import itertools
from typing import Dict, List, Optional

import numpy as np

from ._core import _mpi, require_petsc

__all__ = ["level_parameters", "mg_options", "CellHierarchy"]

FLUID = 0


# ----------------------------------------------------------------------------- parameters


def level_parameters(model=None, n_levels: int = 4) -> List[Dict[str, float]]:
    """Per-level ``{"omega", "correction"}`` for PCMG, finest level first.

    ``omega`` is the SOR relaxation of level ``k``; ``correction`` scales the
    coarse-grid correction that level ``k + 1`` brings to level ``k`` (the
    coarsest level's entry is unused: it is solved directly).

    Parameters
    ----------
    model : None, str, path, dict or ``"classical"``
        ``"classical"``: the twin, ``omega = 1`` and ``correction = 1`` everywhere.
        Otherwise a learned multigrid model as accepted by
        :func:`linsolve.precond.multigrid.load_mg_parameters` (``None``: the
        shipped 3D model). Its parameter group of each level
        (:func:`~linsolve.precond.multigrid.parameter_group`) gives ``omega``
        = the relaxation the model gives an interior cell of a uniform 7-point
        operator (stencil features ``(1/3, 1/3, 1/3, 0, 0, 0)``, see
        :func:`linsolve.kernels.multigrid.stencil_features`) and
        ``correction = exp(log_correction)``.
    n_levels : int
        Levels of the hierarchy (>= 1).

    Returns
    -------
    list of dict
        ``n_levels`` entries, finest first.

    Examples
    --------
    >>> from linsolve.backends.petsc import level_parameters
    >>> level_parameters("classical", 3)
    [{'omega': 1.0, 'correction': 1.0}, {'omega': 1.0, 'correction': 1.0}, {'omega': 1.0, 'correction': 1.0}]
    >>> plain = {"weights": [[0.0] * 6], "bias": [0.0], "log_correction": [0.0]}
    >>> [round(p["omega"], 3) for p in level_parameters(plain, 2)]
    [1.05, 1.05]
    """
    if isinstance(n_levels, bool) or not isinstance(n_levels, (int, np.integer)) or n_levels < 1:
        raise ValueError(f"n_levels must be a positive int, got {n_levels!r}")
    if isinstance(model, str) and model == "classical":
        return [{"omega": 1.0, "correction": 1.0} for _ in range(n_levels)]
    from ...precond.multigrid import load_mg_parameters, parameter_group

    params = load_mg_parameters(model, dims=3)
    groups = params["weights"].shape[0]
    lo, hi = params["omega_lo"], params["omega_hi"]
    interior = np.array([1 / 3, 1 / 3, 1 / 3, 0.0, 0.0, 0.0])
    out = []
    for level in range(n_levels):
        g = parameter_group(level, n_levels, groups)
        z = float(params["bias"][g] + params["weights"][g] @ interior)
        out.append({"omega": float(lo + (hi - lo) / (1.0 + np.exp(-z))),
                    "correction": float(np.exp(params["log_correction"][g]))})
    return out


def mg_options(parameters: List[Dict[str, float]], *, smoothing_steps: int = 1, ranks: int = 1) -> Dict[str, str]:
    """PETSc options (without prefix) that set up the PCMG smoothers and coarse solve for ``parameters``.

    Levels are numbered the PETSc way in the keys (0 = coarsest). Every level
    smooths with ``smoothing_steps`` Richardson iterations of local symmetric
    SOR (SSOR on each rank's block; the only symmetric SOR on a parallel
    matrix) with the level's ``omega``; the coarsest level is solved by LU
    (redundantly on every rank when there are several).

    Examples
    --------
    >>> from linsolve.backends.petsc import mg_options
    >>> opts = mg_options([{"omega": 1.2, "correction": 1.0}, {"omega": 1.0, "correction": 1.0}])
    >>> opts["mg_levels_1_pc_sor_omega"], opts["mg_levels_pc_type"], opts["mg_coarse_pc_type"]
    ('1.2', 'sor', 'lu')
    """
    n = len(parameters)
    opts = {
        "pc_mg_type": "multiplicative",
        "pc_mg_cycle_type": "v",
        "mg_levels_ksp_type": "richardson",
        "mg_levels_ksp_max_it": str(int(smoothing_steps)),
        "mg_levels_ksp_norm_type": "none",
        "mg_levels_pc_type": "sor",
        "mg_levels_pc_sor_local_symmetric": "",
        "mg_coarse_ksp_type": "preonly",
    }
    if ranks > 1:
        opts.update({"mg_coarse_pc_type": "redundant", "mg_coarse_redundant_pc_type": "lu"})
    else:
        opts["mg_coarse_pc_type"] = "lu"
    for k, p in enumerate(parameters[:-1]):  # finest first; the coarsest has no smoother
        omega = float(p["omega"])
        if not 0.0 < omega < 2.0:
            raise ValueError(f"omega of level {k} must lie in (0, 2), got {omega!r}")
        opts[f"mg_levels_{n - 1 - k}_pc_sor_omega"] = repr(omega)
    return opts


# ----------------------------------------------------------------------------- hierarchy


def _coarse_ranges(ranges):
    """Coarse ownership along one axis: coarse cell c belongs to the owner of its first child 2c."""
    return [((s + 1) // 2, (e + 1) // 2) for s, e in ranges]


class _Level:
    __slots__ = ("shape", "ranges", "owned", "da", "ltog", "gstart", "gshape", "active", "vec_g", "vec_l")


class CellHierarchy:
    """Cell-centred DMDA levels, trilinear interpolations and Galerkin operators for one :class:`PressureDMDA`.

    Levels are listed finest first. :meth:`update` recomputes the active
    masks, the interpolation values (the sparsity never changes) and the
    Galerkin operators in place after the fine matrix changed.

    Parameters
    ----------
    dm : PressureDMDA
    coarse_size : int
        Stop coarsening once a level has at most this many cells.
    max_levels : int, optional

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.petsc import PressureDMDA
    >>> from linsolve.backends.petsc.mg import CellHierarchy
    >>> dm = PressureDMDA((20, 20, 20))  # doctest: +SKIP
    >>> A = dm.assemble(np.zeros((20, 20, 20), dtype=np.int8))  # doctest: +SKIP
    >>> H = CellHierarchy(dm); H.update()  # doctest: +SKIP
    >>> [lev.shape for lev in H.levels]  # doctest: +SKIP
    [(20, 20, 20), (10, 10, 10), (5, 5, 5)]
    """

    def __init__(self, dm, *, coarse_size: int = 512, max_levels: Optional[int] = None):
        PETSc = require_petsc()
        self.PETSc = PETSc
        self.dm = dm
        self.comm = dm.comm
        ndim = dm.ndim
        # Per axis: every rank's (start, end) of the finest level.
        mpi = _mpi(self.comm)
        boxes = mpi.allgather(tuple((s.start, s.stop) for s in dm.owned))
        ranges = []
        for axis in range(ndim):
            ranges.append(sorted(set(b[axis] for b in boxes)))
        shapes, all_ranges = [dm.grid_shape], [ranges]
        while True:
            shape, rng = shapes[-1], all_ranges[-1]
            if int(np.prod(shape)) <= coarse_size or (max_levels is not None and len(shapes) >= max_levels):
                break
            if all(n == 1 for n in shape):
                break
            cshape = tuple(1 if n == 1 else (n + 1) // 2 for n in shape)
            crng = [r if n == 1 else _coarse_ranges(r) for n, r in zip(shape, rng)]
            # Every rank must keep at least one coarse cell per axis (a DMDA cannot have empty ranks).
            if any(e - s < 1 for r in crng for s, e in r):
                break
            shapes.append(cshape)
            all_ranges.append(crng)
        self.levels: List[_Level] = []
        for shape, rng in zip(shapes, all_ranges):
            self.levels.append(self._make_level(shape, rng))
        self.P: List = []        # P[k]: level k+1 -> level k (unscaled; also the restriction, transposed)
        self.P_scaled: List = []  # c_k P[k] when c_k != 1, else the same Mat
        self.ops: List = []       # ops[k]: operator of level k (ops[0] is dm.mat)
        self._patterns: List = []
        self.corrections = [1.0] * len(self.levels)
        self.interpolation_updated = False

    def _make_level(self, shape, ranges):
        PETSc = self.PETSc
        L = _Level()
        L.shape = shape
        L.ranges = ranges
        sizes = [tuple(e - s for s, e in r) for r in ranges]
        # Box stencil of width 2: interpolation rows of the finer level read coarse cells up to two away
        # from this rank's coarse box (diagonal neighbours included).
        L.da = PETSc.DMDA().create(dim=len(shape), dof=1, sizes=shape[::-1], stencil_width=2,
                                   stencil_type=PETSc.DMDA.StencilType.BOX, ownership_ranges=tuple(sizes[::-1]),
                                   proc_sizes=tuple(len(s) for s in sizes[::-1]), comm=self.comm, setup=True)
        L.owned = tuple(slice(s, e) for s, e in L.da.getRanges()[::-1])
        g = L.da.getGhostRanges()[::-1]
        L.gstart = tuple(s for s, _ in g)
        L.gshape = tuple(e - s for s, e in g)
        L.ltog = np.asarray(L.da.getLGMap().getIndices()).reshape(L.gshape)
        L.vec_g = L.da.createGlobalVec()
        L.vec_l = L.da.createLocalVec()
        L.active = None
        return L

    # ------------------------------------------------------------------------- masks

    def _exchange(self, L, owned_values) -> np.ndarray:
        """Ghosted copy (width 2, box) of an owned array on level ``L``."""
        L.vec_g.setArray(np.ascontiguousarray(owned_values, dtype=np.float64).ravel())
        L.da.globalToLocal(L.vec_g, L.vec_l)
        return np.array(L.vec_l.getArray(readonly=True)).reshape(L.gshape)

    def _masks(self):
        """Active masks of every level, ghosted (width 2)."""
        fine = self.levels[0]
        owned = self.dm.active_mask().astype(np.float64)
        fine.active = self._exchange(fine, owned)
        for k in range(1, len(self.levels)):
            F, C = self.levels[k - 1], self.levels[k]
            cact = np.zeros(tuple(s.stop - s.start for s in C.owned))
            for offs in itertools.product(*[(0, 1) if F.shape[a] != C.shape[a] else (0,)
                                           for a in range(len(C.shape))]):
                idx = []
                for a in range(len(C.shape)):
                    coarse = np.arange(C.owned[a].start, C.owned[a].stop)
                    child = coarse * (2 if F.shape[a] != C.shape[a] else 1) + offs[a]
                    ok = child < F.shape[a]
                    idx.append((np.clip(child, 0, F.shape[a] - 1) - F.gstart[a], ok))
                vals = F.active[np.ix_(*[i for i, _ in idx])]
                ok = np.ones(vals.shape, dtype=bool)
                for a, (_, valid) in enumerate(idx):
                    shp = [1] * len(idx)
                    shp[a] = -1
                    ok = ok & valid.reshape(shp)
                cact = np.maximum(cact, np.where(ok, vals, 0.0))
            C.active = self._exchange(C, cact)

    # ------------------------------------------------------------------------- interpolation

    def _interp_rows(self, k):
        """CSR (pattern + values) of the rows of P[k] owned here: fine level k from coarse level k+1."""
        F, C = self.levels[k], self.levels[k + 1]
        ndim = len(F.shape)
        fine_idx = [np.arange(F.owned[a].start, F.owned[a].stop) for a in range(ndim)]
        # Per axis: two candidate coarse cells and their weights.
        per_axis = []
        for a in range(ndim):
            i = fine_idx[a]
            if F.shape[a] == C.shape[a]:
                per_axis.append(((i, np.ones(i.size)), (i, np.zeros(i.size))))
                continue
            c = i // 2
            other = np.where(i % 2 == 0, c - 1, c + 1)
            w_other = np.where((other >= 0) & (other < C.shape[a]), 0.25, 0.0)
            per_axis.append(((c, np.full(i.size, 0.75)), (np.clip(other, 0, C.shape[a] - 1), w_other)))

        def along(a, values):  # broadcastable view of a per-axis array
            shape = [1] * ndim
            shape[a] = -1
            return values.reshape(shape)

        out_shape = tuple(x.size for x in fine_idx)
        cols, weights = [], []
        for combo in itertools.product((0, 1), repeat=ndim):
            local = tuple(along(a, per_axis[a][combo[a]][0] - C.gstart[a]) for a in range(ndim))
            w = np.ones(out_shape)
            for a in range(ndim):
                w = w * along(a, per_axis[a][combo[a]][1])
            cols.append(np.broadcast_to(C.ltog[local], out_shape))
            weights.append((w, C.active[local]))
        fine_active = F.active[tuple(slice(o.start - g, o.stop - g) for o, g in zip(F.owned, F.gstart))] > 0
        total = sum(w * act for w, act in weights)
        parent_active = weights[0][1] > 0  # combo (0, ..., 0) is the parent cell
        vals = []
        for j, (w, act) in enumerate(weights):
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(fine_active & (total > 0), w * act / total, 0.0)
            if j == 0:
                v = np.where(~fine_active & ~parent_active, 1.0, v)
            vals.append(v)
        structural = np.stack([(w > 0).ravel() for w, _ in weights], axis=1)
        cols = np.stack([c.ravel() for c in cols], axis=1)
        vals = np.stack([v.ravel() for v in vals], axis=1)
        return structural, cols, vals

    def update(self, corrections=None) -> None:
        """(Re)compute masks, interpolation values and Galerkin operators from ``dm.mat``. Collective."""
        from mpi4py import MPI

        PETSc = self.PETSc
        if corrections is not None:
            self.corrections = [float(c) for c in corrections] + [1.0] * (len(self.levels) - len(corrections))
        previous = [None if L.active is None else L.active.copy() for L in self.levels]
        self._masks()
        first = not self.P
        # Interpolation depends on A only through the active masks (and the scales): skip it when neither changed.
        same = (not first and corrections is None
                and all(p is not None and np.array_equal(p, L.active) for p, L in zip(previous, self.levels)))
        same = bool(_mpi(self.comm).allreduce(int(same), op=MPI.MIN))
        self.interpolation_updated = not same
        for k in range(len(self.levels) - 1):
            if same:
                break
            structural, cols, vals = self._interp_rows(k)
            if first:
                counts = structural.sum(axis=1)
                indptr = np.concatenate([[0], np.cumsum(counts)]).astype(PETSc.IntType)
                indices = cols[structural].astype(PETSc.IntType)
                self._patterns.append((indptr, indices, structural))
                F, C = self.levels[k], self.levels[k + 1]
                m = int(np.prod([s.stop - s.start for s in F.owned]))
                mc = int(np.prod([s.stop - s.start for s in C.owned]))
                P = PETSc.Mat().createAIJ(size=((m, int(np.prod(F.shape))), (mc, int(np.prod(C.shape)))),
                                          csr=(indptr, indices, vals[structural].astype(PETSc.ScalarType)),
                                          comm=self.comm)
                P.assemble()
                self.P.append(P)
                self.P_scaled.append(None)
            else:
                indptr, indices, structural = self._patterns[k]
                self.P[k].setValuesCSR(indptr, indices, vals[structural].astype(PETSc.ScalarType))
                self.P[k].assemble()
            c = self.corrections[k]
            if c != 1.0:
                if self.P_scaled[k] is None or self.P_scaled[k] is self.P[k]:
                    self.P_scaled[k] = self.P[k].copy()
                else:
                    self.P[k].copy(self.P_scaled[k], structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
                self.P_scaled[k].scale(c)
            else:
                self.P_scaled[k] = self.P[k]
        # Galerkin operators, in place after the first frame (same pattern: MatPtAP reuse).
        A = self.dm.mat
        if first:
            self.ops = [A]
            for k in range(len(self.levels) - 1):
                self.ops.append(self.ops[k].ptap(self.P[k]))
        else:
            self.ops[0] = A
            for k in range(len(self.levels) - 1):
                self.ops[k].ptap(self.P[k], result=self.ops[k + 1])

    def configure(self, pc) -> None:
        """Install the levels in a PCMG (PETSc numbering: 0 = coarsest). Call after :meth:`update`."""
        PETSc = self.PETSc
        n = len(self.levels)
        pc.setType(PETSc.PC.Type.MG)
        pc.setMGLevels(n)
        for k in range(n - 1):  # our level k (finest first) is PETSc level n-1-k
            lev = n - 1 - k
            pc.setMGInterpolation(lev, self.P_scaled[k])
            pc.setMGRestriction(lev, self.P[k])
        for k in range(1, n):
            lev = n - 1 - k
            ksp = pc.getMGCoarseSolve() if lev == 0 else pc.getMGSmoother(lev)
            ksp.setOperators(self.ops[k], self.ops[k])

    @property
    def shapes(self):
        return [L.shape for L in self.levels]

    def destroy(self) -> None:
        for P, Ps in zip(self.P, self.P_scaled):
            if Ps is not None and Ps is not P:
                Ps.destroy()
            P.destroy()
        for op in self.ops[1:]:
            op.destroy()
        for L in self.levels:
            L.vec_g.destroy()
            L.vec_l.destroy()
            L.da.destroy()
        self.P, self.P_scaled, self.ops, self.levels = [], [], [], []
