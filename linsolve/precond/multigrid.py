"""Geometric multigrid V-cycles for pressure matrices on cell grids, classical and learned.

Both preconditioners read the 7-point (3D) or 5-point (2D) stencil straight
from ``A`` (A is the truth; ``cell_types`` only feeds the learned weights), so
they work for any symmetric grid M-matrix in C order: Poisson, variable
coefficients, pressure matrices with identity rows for solid and air cells.

The hierarchy (per frame, a few milliseconds at 64^3):

* coarse operators by aggregation of 2x2x2 blocks scaled by 1/2
  (``0.5 * P0^T A P0``, still a 7-point M-matrix, SPD whenever ``A`` is);
* cell-centred trilinear interpolation ``P``, renormalised next to walls,
  restriction ``P^T``;
* red-black SOR smoothing with per-cell relaxation ``omega_c`` in (0, 2):
  red then black before the coarse correction, black then red after it;
* a dense Cholesky solve on the coarsest grid (<= ``coarse_size`` cells).

The post-smoother is the adjoint of the pre-smoother, restriction is the
transpose of prolongation and the coarse solve is SPD, so one V-cycle is a
symmetric positive definite operator (``M + M^T - A = D (2/omega - 1) > 0``
for the smoother): plain PCG can use it. The learned variant
(:func:`fast_learned`) only changes ``omega_c`` (computed linearly from the
3x3x3 cell-type patch, squashed into (0, 2)) and a positive scale of each
coarse correction, so it keeps all of these properties.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from .._result import SolveResult
from .._validation import as_sparse_matrix, check_grid_shape

__all__ = ["geometric_mg", "fast_learned", "GeometricMG", "stencil_from_matrix",
           "learned_pcg_result", "gmg_pcg_result", "coarsen_cell_types", "parameter_group", "load_mg_parameters"]

FLUID, SOLID, AIR = 0, 1, 2


# ----------------------------------------------------------------------------- stencil

def _grid_shape(n: int, grid_shape=None, cell_types=None) -> tuple:
    if cell_types is not None:
        shape = np.shape(cell_types)
        if grid_shape is not None and tuple(int(s) for s in grid_shape) != tuple(shape):
            raise ValueError(f"grid_shape {tuple(grid_shape)} does not match cell_types.shape {shape}")
        return check_grid_shape(shape, n, "cell_types.shape")
    if grid_shape is not None:
        return check_grid_shape(grid_shape, n, "grid_shape")
    for dim in (3, 2):
        side = int(round(n ** (1.0 / dim)))
        for s in (side - 1, side, side + 1):
            if s > 1 and s ** dim == n:
                return (s,) * dim
    raise ValueError(f"cannot infer the grid of a {n}x{n} matrix: pass grid_shape or cell_types")


def stencil_from_matrix(A, shape) -> tuple:
    """Split a symmetric grid matrix into its 7-point stencil arrays ``(diag, w0, w1, w2)``.

    Parameters
    ----------
    A : sparse matrix, shape (n, n), n = prod(shape), unknowns in C order.
    shape : tuple of 2 or 3 ints
        The grid; 2D grids are treated as 3D with a last axis of length 1.

    Returns
    -------
    diag, w0, w1, w2 : ndarray of shape ``shape3``
        ``w_a[c]`` is minus the entry coupling cell ``c`` to its ``+1``
        neighbour along axis ``a`` (0 on the last plane).

    Raises
    ------
    ValueError
        If ``A`` has entries outside the nearest-neighbour stencil, is not
        symmetric, has a non-positive diagonal or a positive off-diagonal
        entry (multigrid here needs an M-matrix).

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.precond.multigrid import stencil_from_matrix
    >>> d, w0, w1, w2 = stencil_from_matrix(linsolve.problems.poisson((4, 4, 4)), (4, 4, 4))
    >>> float(d.max()), float(w0[0, 0, 0]), float(w0[3, 0, 0])
    (6.0, 1.0, 0.0)
    """
    return _stencil_from_csr(as_sparse_matrix(A, "A"), shape)


def _stencil_from_csr(mat, shape) -> tuple:
    from ..kernels.multigrid import csr_to_stencil

    shape3 = tuple(int(s) for s in shape) + (1,) * (3 - len(shape))
    n = int(np.prod(shape3))
    if mat.shape[0] != n:
        raise ValueError(f"A has {mat.shape[0]} rows but the grid {tuple(shape)} has {n} cells")
    arrays = [np.zeros(n) for _ in range(7)]
    bad = int(csr_to_stencil(mat.indptr.astype(np.int64, copy=False), mat.indices.astype(np.int64, copy=False),
                             mat.data.astype(np.float64, copy=False), shape3[0], shape3[1], shape3[2], *arrays))
    if bad >= 0:
        raise ValueError(f"A has nonzero entries outside the 7-point stencil of the grid {tuple(shape)} "
                         f"(first in row {bad}): pass the right grid_shape or use another preconditioner")
    diag, w0, w1, w2, lo0, lo1, lo2 = arrays
    if not np.all(diag > 0):
        bad = int(np.flatnonzero(~(diag > 0))[0])
        raise ValueError(f"A has a zero or negative diagonal entry in row {bad}; multigrid needs an SPD M-matrix")
    scale = float(diag.max())
    strides = (shape3[1] * shape3[2], shape3[2], 1)
    for w, lo, stride in zip((w0, w1, w2), (lo0, lo1, lo2), strides):
        if stride < n and np.max(np.abs(w[:n - stride] - lo[stride:]), initial=0.0) > 1e-10 * scale:
            raise ValueError("A is not symmetric; the multigrid preconditioner needs a symmetric A")
        if np.any(w < -1e-12 * scale):
            raise ValueError("A has a positive off-diagonal entry; the geometric multigrid needs an M-matrix "
                             "(pressure / Poisson matrices are)")
    return tuple(np.maximum(x, 0.0).reshape(shape3) if x is not diag else x.reshape(shape3)
                 for x in (diag, w0, w1, w2))


def coarsen_cell_types(cell_types: np.ndarray) -> np.ndarray:
    """Cell types of the next coarser grid: FLUID if any child is fluid, else AIR if any is air.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.precond.multigrid import coarsen_cell_types
    >>> coarsen_cell_types(np.array([[[0, 1], [1, 1]], [[1, 1], [1, 1]]])).ravel().tolist()
    [0]
    """
    from ..kernels.multigrid import coarse_shape

    t = np.asarray(cell_types)
    cs = coarse_shape(t.shape)
    padded = np.full(tuple(2 * c if c != s else s for c, s in zip(cs, t.shape)), SOLID, dtype=np.int8)
    padded[tuple(slice(0, s) for s in t.shape)] = t
    blocks = padded.reshape(tuple(x for c, s in zip(cs, t.shape) for x in ((c, 2) if c != s else (c, 1))))
    axes = tuple(range(1, 2 * t.ndim, 2))
    fluid = (blocks == FLUID).any(axis=axes)
    air = (blocks == AIR).any(axis=axes)
    return np.where(fluid, FLUID, np.where(air, AIR, SOLID)).astype(np.int8)


# ----------------------------------------------------------------------------- hierarchy

class _Level:
    __slots__ = ("shape", "diag", "w0", "w1", "w2", "active", "relax", "scale", "pscale",
                 "x", "b", "r", "chol", "dense_active", "cell_types")


def _build_levels(diag, w0, w1, w2, types, coarse_factor, normalize, coarse_size):
    """The operator hierarchy: per level stencil arrays, active mask and transfer scale."""
    from ..kernels import multigrid as K

    coupled = (w0 + w1 + w2) > 0
    coupled[1:] |= w0[:-1] > 0
    coupled[:, 1:] |= w1[:, :-1] > 0
    coupled[:, :, 1:] |= w2[:, :, :-1] > 0
    active = coupled.astype(np.float64)
    levels = []
    while True:
        L = _Level()
        L.shape = diag.shape
        L.diag, L.w0, L.w1, L.w2, L.active, L.cell_types = diag, w0, w1, w2, active, types
        L.x, L.b, L.r = np.zeros(L.shape), np.zeros(L.shape), np.zeros(L.shape)
        L.scale = L.pscale = L.chol = L.dense_active = None
        levels.append(L)
        cs = K.coarse_shape(L.shape)
        if int(np.prod(L.shape)) <= coarse_size or cs == L.shape:
            break
        cdiag, cw0, cw1, cw2, cact = (np.empty(cs) for _ in range(5))
        K.coarsen_operator(diag, w0, w1, w2, active, float(coarse_factor), cdiag, cw0, cw1, cw2, cact)
        L.scale = np.empty(L.shape)
        K.transfer_scale(active, cact, np.array(cs, dtype=np.int64), bool(normalize), L.scale)
        diag, w0, w1, w2, active = cdiag, cw0, cw1, cw2, cact
        types = coarsen_cell_types(types) if types is not None else None
    _factor_coarsest(levels[-1])
    return levels


def _stencil_csr(diag, w0, w1, w2) -> sp.csr_matrix:
    shape = diag.shape
    n = diag.size
    strides = (shape[1] * shape[2], shape[2], 1)
    offsets, data = [0], [diag.ravel()]
    for w, stride, size in zip((w0, w1, w2), strides, shape):
        if size > 1:
            offsets += [stride, -stride]
            data += [-w.ravel()[:n - stride], -w.ravel()[:n - stride]]
    return sp.diags(data, offsets, shape=(n, n), format="csr")


def _factor_coarsest(L) -> None:
    """Dense Cholesky of the coarsest operator on its active cells (eigen-pseudo-inverse if singular)."""
    act = L.active.ravel() > 0
    L.dense_active = np.flatnonzero(act)
    dense = _stencil_csr(L.diag, L.w0, L.w1, L.w2)[act][:, act].toarray()
    if dense.size == 0:
        L.chol = ("empty", None)
        return
    try:
        L.chol = ("chol", scipy.linalg.cho_factor(dense, lower=True))
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(dense)
        keep = vals > 1e-12 * max(vals.max(), 1e-300)
        L.chol = ("eig", (vecs[:, keep], 1.0 / vals[keep]))


def _coarse_solve(L) -> None:
    b = L.b.ravel()
    x = L.x.reshape(-1)
    x[:] = b / L.diag.ravel()
    kind, data = L.chol
    if kind == "chol":
        x[L.dense_active] = scipy.linalg.cho_solve(data, b[L.dense_active], check_finite=False)
    elif kind == "eig":
        vecs, inv = data
        x[L.dense_active] = vecs @ (inv * (vecs.T @ b[L.dense_active]))


def _check_omega_array(omega, shape, name) -> np.ndarray:
    arr = np.asarray(omega, dtype=np.float64)
    if arr.ndim and arr.shape != tuple(shape):
        raise ValueError(f"{name} must be a scalar or an array of shape {tuple(shape)}, got {arr.shape}")
    if not (np.all(arr > 0) and np.all(arr < 2)):
        raise ValueError(f"{name} must lie in (0, 2) everywhere for a positive definite smoother")
    return arr


class GeometricMG(LinearOperator):
    """One symmetric V-cycle of geometric multigrid as an SPD ``LinearOperator``.

    Build it with :func:`geometric_mg` or :func:`fast_learned`. Attributes:
    ``levels`` (per-level stencil arrays and masks), ``setup_time_s``,
    ``grid_shape``, ``name``.
    """

    def __init__(self, A, grid_shape, *, omega=1.0, correction=1.0, smoothing_steps=1,
                 coarse_factor=0.5, normalize=True, coarse_size=512, cell_types=None, name="gmg",
                 _validated=False):
        t0 = time.perf_counter()
        mat = A if _validated else as_sparse_matrix(A, "A")
        self.grid_shape = tuple(int(s) for s in grid_shape)
        shape3 = self.grid_shape + (1,) * (3 - len(self.grid_shape))
        if isinstance(smoothing_steps, bool) or not isinstance(smoothing_steps, (int, np.integer)) \
                or smoothing_steps < 1:
            raise ValueError(f"smoothing_steps must be a positive int, got {smoothing_steps!r}")
        if not np.isfinite(coarse_factor) or coarse_factor <= 0:
            raise ValueError(f"coarse_factor must be > 0, got {coarse_factor!r}")
        if isinstance(coarse_size, bool) or not isinstance(coarse_size, (int, np.integer)) or coarse_size < 1:
            raise ValueError(f"coarse_size must be a positive int, got {coarse_size!r}")
        self.smoothing_steps = int(smoothing_steps)
        self.name = name
        diag, w0, w1, w2 = _stencil_from_csr(mat, self.grid_shape)
        types = None
        if cell_types is not None:
            types = np.asarray(cell_types).reshape(shape3).astype(np.int8)
        self.levels = _build_levels(diag, w0, w1, w2, types, coarse_factor, normalize, coarse_size)
        self.set_parameters(omega, correction)
        self.setup_time_s = time.perf_counter() - t0
        super().__init__(dtype=np.dtype(np.float64), shape=mat.shape)

    def set_parameters(self, omega=1.0, correction=1.0) -> None:
        """Set the relaxation (scalar, per-level list, or per-level arrays) and coarse-correction scales.

        ``omega`` values must lie in (0, 2) and ``correction`` values be > 0,
        which keeps the V-cycle symmetric positive definite.
        """
        nlev = len(self.levels)
        omegas = list(omega) if isinstance(omega, (list, tuple)) else [omega] * nlev
        corrs = list(np.atleast_1d(np.asarray(correction, dtype=float)))
        if len(corrs) == 1:
            corrs = corrs * nlev
        if len(omegas) < nlev:
            omegas += [omegas[-1]] * (nlev - len(omegas))
        if len(corrs) < nlev:
            corrs += [corrs[-1]] * (nlev - len(corrs))
        for lev, L in enumerate(self.levels):
            om = _check_omega_array(omegas[lev], L.shape, f"omega (level {lev})")
            # Decoupled cells are solved exactly by one half-sweep whatever omega is.
            L.relax = np.where(L.active > 0, om, 1.0) / L.diag
            if L.scale is not None:
                c = float(corrs[lev])
                if not np.isfinite(c) or c <= 0:
                    raise ValueError(f"correction (level {lev}) must be > 0, got {c!r}")
                L.pscale = L.scale * c

    def _vcycle(self, lev: int) -> None:
        from ..kernels import multigrid as K

        L = self.levels[lev]
        if lev == len(self.levels) - 1:
            _coarse_solve(L)
            return
        x, b = L.x, L.b
        x[...] = 0.0
        for s in range(self.smoothing_steps):
            K.rb_sweep(L.relax, L.w0, L.w1, L.w2, L.diag, x, b, 0, s == 0)
            K.rb_sweep(L.relax, L.w0, L.w1, L.w2, L.diag, x, b, 1, False)
        K.stencil_residual(L.diag, L.w0, L.w1, L.w2, x, b, L.r)
        nxt = self.levels[lev + 1]
        K.restrict(L.r, L.scale, nxt.active, nxt.b)
        self._vcycle(lev + 1)
        K.prolong_add(nxt.x, L.pscale, nxt.active, x)
        for _ in range(self.smoothing_steps):
            K.rb_sweep(L.relax, L.w0, L.w1, L.w2, L.diag, x, b, 1, False)
            K.rb_sweep(L.relax, L.w0, L.w1, L.w2, L.diag, x, b, 0, False)

    def _matvec(self, r):
        L = self.levels[0]
        L.b[...] = np.asarray(r, dtype=np.float64).reshape(L.shape)
        self._vcycle(0)
        return L.x.ravel().copy()

    def _rmatvec(self, r):
        return self._matvec(r)

    def __repr__(self) -> str:
        return (f"<GeometricMG {self.name!r} grid={self.grid_shape} levels={len(self.levels)} "
                f"coarsest={self.levels[-1].shape}>")


# ----------------------------------------------------------------------------- public constructors

def geometric_mg(A, cell_types=None, *, grid_shape=None, omega=1.0, smoothing_steps=1, normalize=True,
                 coarse_size=512, correction=1.0) -> GeometricMG:
    """Classical geometric-multigrid V-cycle for a grid matrix, as an SPD LinearOperator.

    The non-learned twin of :func:`fast_learned`: the same hierarchy and
    kernels with textbook parameters (Gauss-Seidel ``omega = 1``, unit
    coarse corrections).

    Parameters
    ----------
    A : sparse matrix, shape (n, n)
        Symmetric M-matrix with a nearest-neighbour stencil on the grid, e.g.
        :func:`linsolve.problems.pressure_matrix` or
        :func:`linsolve.problems.poisson` (identity rows are fine).
    cell_types : int array of the grid's shape, optional
        Gives the grid shape (FLUID=0, SOLID=1, AIR=2); the classical V-cycle
        reads everything else from ``A``.
    grid_shape : tuple, optional
        The grid when ``cell_types`` is not given; cubes and squares are inferred.
    omega : float, list or arrays in (0, 2)
        Red-black SOR relaxation, one value for all levels, one per level, or
        one array (of the level's shape) per level.
    smoothing_steps : int
        Red-black sweeps before (and, mirrored, after) each coarse correction.
    normalize : bool
        Renormalise interpolation next to inactive (solid) coarse cells.
    coarse_size : int
        Coarsen until a level has at most this many cells, then solve it densely.
    correction : float or sequence of float > 0
        Scale of each level's coarse-grid correction.

    Returns
    -------
    GeometricMG
        One V-cycle per ``matvec``; symmetric positive definite.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond.multigrid import geometric_mg
    >>> A = linsolve.problems.poisson((32, 32, 32))
    >>> M = geometric_mg(A)
    >>> x, info = linsolve.cg(A, np.ones(A.shape[0]), rtol=1e-8, M=M)
    >>> info
    0
    """
    mat = as_sparse_matrix(A, "A")
    shape = _grid_shape(mat.shape[0], grid_shape, cell_types)
    if cell_types is not None:
        _check_cell_types(cell_types)
    return GeometricMG(mat, shape, omega=omega, correction=correction, smoothing_steps=smoothing_steps,
                       normalize=normalize, coarse_size=coarse_size, cell_types=cell_types, name="gmg",
                       _validated=True)


def _check_cell_types(cell_types) -> np.ndarray:
    # Learned weights index tables by the code, so only integer codes are accepted here; which codes
    # are valid is defined once, with the pressure-matrix generator.
    from ..problems.fluid import check_cell_types

    t = np.asarray(cell_types)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cell_types must be an integer array, got dtype {t.dtype}")
    return check_cell_types(t)


MODEL_ARCHITECTURE = "mg-vcycle"


def _find_model(dims=None):
    """Name of the shipped learned-multigrid model (for ``dims``-D grids when given), or None."""
    from .. import models

    names = [n for n in models.available() if n.startswith("mg-")]
    for name in names:
        try:
            meta = models.info(name)
            if meta.get("architecture") == MODEL_ARCHITECTURE and (dims is None or meta.get("dims") == dims):
                return name
        except (ValueError, OSError):
            continue
    return None


_PARAM_CACHE: dict = {}


def load_mg_parameters(model=None, dims=None) -> dict:
    """Numpy parameters of a learned V-cycle model (no torch needed).

    ``model`` is a shipped name (``linsolve.models.available()``), a path, an
    ``MGVCycle`` torch module, a dict as returned here, or ``None`` for the
    shipped default. Returns ``{"tables": (L, 4, 27), "bias": (L,),
    "log_correction": (L,), "omega_lo", "omega_hi", "name"}``.

    Examples
    --------
    >>> from linsolve.precond.multigrid import load_mg_parameters
    >>> p = load_mg_parameters({"tables": [[[0.0] * 27] * 4], "bias": [0.0], "log_correction": [0.0]})
    >>> p["tables"].shape
    (1, 4, 27)
    """
    if isinstance(model, dict):
        out = {"tables": np.asarray(model["tables"], dtype=np.float64),
               "bias": np.asarray(model["bias"], dtype=np.float64).ravel(),
               "log_correction": np.asarray(model["log_correction"], dtype=np.float64).ravel(),
               "omega_lo": float(model.get("omega_lo", 0.2)), "omega_hi": float(model.get("omega_hi", 1.9)),
               "name": model.get("name", "<dict>")}
        if out["tables"].ndim != 3 or out["tables"].shape[1:] != (4, 27):
            raise ValueError(f"model tables must have shape (levels, 4, 27), got {out['tables'].shape}")
        if not (out["bias"].shape[0] == out["log_correction"].shape[0] == out["tables"].shape[0]):
            raise ValueError("model tables, bias and log_correction must have one entry per level")
        if not (0 < out["omega_lo"] < out["omega_hi"] < 2):
            raise ValueError("model omega range must satisfy 0 < omega_lo < omega_hi < 2")
        for key in ("tables", "bias", "log_correction"):
            if not np.all(np.isfinite(out[key])):
                raise ValueError(f"model {key} contains NaN or Inf")
        return out
    if hasattr(model, "numpy_parameters"):
        return load_mg_parameters(model.numpy_parameters())
    from .. import models
    from ..models._format import read_metadata

    if model is None:
        model = _find_model(dims)
        if model is None:
            raise ValueError(f"no learned multigrid model{f' for {dims}D grids' if dims else ''} is shipped "
                             f"(linsolve.models.available() has none); train one with `linsolve train mg3d` "
                             f"and pass model=PATH, or use method='gmg-pcg'")
    path = models.resolve(model)
    key = (path, __import__("os").path.getmtime(path))
    if key in _PARAM_CACHE:
        return _PARAM_CACHE[key]
    meta = read_metadata(path)
    if meta.get("architecture") != MODEL_ARCHITECTURE:
        raise ValueError(f"{path} holds a {meta.get('architecture')!r} model, not a learned multigrid "
                         f"({MODEL_ARCHITECTURE!r})")
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise ValueError(f"{path} is corrupt: {exc}") from None
    config = meta.get("config", {})
    try:
        params = load_mg_parameters({"tables": tensors["tables"], "bias": tensors["bias"],
                                     "log_correction": tensors["log_correction"],
                                     "omega_lo": config.get("omega_lo", 0.2),
                                     "omega_hi": config.get("omega_hi", 1.9),
                                     "name": __import__("os").path.basename(path)})
    except KeyError as exc:
        raise ValueError(f"{path}: missing tensor {exc}") from None
    _PARAM_CACHE.clear()
    _PARAM_CACHE[key] = params
    return params


def parameter_group(level: int, n_levels: int, n_groups: int) -> int:
    """Which parameter group level ``level`` of an ``n_levels`` hierarchy uses.

    Group 0: the finest level; with 3 groups, group 2 is the level just above
    the coarsest (its coarse solve is exact) and group 1 every level in
    between; with 2 groups every level but the finest uses group 1. This
    keeps a model trained on small grids meaningful on deeper hierarchies.

    Examples
    --------
    >>> from linsolve.precond.multigrid import parameter_group
    >>> [parameter_group(l, 5, 3) for l in range(4)]
    [0, 1, 1, 2]
    """
    if level == 0 or n_groups == 1:
        return 0
    if n_groups >= 3 and level == n_levels - 2:
        return 2
    return 1


def learned_omegas(levels, params) -> list:
    """Per-level relaxation arrays ``omega_lo + (omega_hi - omega_lo) * sigmoid(patch_linear(types))``."""
    from ..kernels.multigrid import patch_linear

    out = []
    nlev = params["tables"].shape[0]
    lo, hi = params["omega_lo"], params["omega_hi"]
    for lev, L in enumerate(levels):
        p = parameter_group(lev, len(levels), nlev)
        z = np.empty(L.shape)
        types = L.cell_types if L.cell_types is not None else np.where(L.active > 0, FLUID, SOLID)
        patch_linear(np.ascontiguousarray(types, dtype=np.int8), params["tables"][p], float(params["bias"][p]), z)
        out.append(lo + (hi - lo) / (1.0 + np.exp(-z)))
    return out


def learned_corrections(levels, params) -> list:
    nlev = params["tables"].shape[0]
    return [float(np.exp(params["log_correction"][parameter_group(lev, len(levels), nlev)]))
            for lev in range(len(levels))]


def fast_learned(A, cell_types=None, model=None, *, grid_shape=None, coarse_size=512) -> GeometricMG:
    """Learned multigrid V-cycle (spatially varying, cell-type-conditioned smoothing), SPD.

    Same hierarchy as :func:`geometric_mg`; the model sets, per level, the
    red-black relaxation of every cell as a linear function of its 3x3x3
    cell-type patch squashed into ``(omega_lo, omega_hi)`` inside (0, 2), and a
    positive scale of the coarse correction. For a given ``A`` it is a fixed
    linear, symmetric positive definite operator: plain PCG can use it.

    Parameters
    ----------
    A : sparse matrix
        Grid M-matrix (see :func:`geometric_mg`).
    cell_types : int array of the grid's shape, optional
        FLUID=0, SOLID=1, AIR=2; without it the patch sees fluid (coupled)
        and solid (decoupled) cells only.
    model : str, path, dict or MGVCycle, optional
        ``None``: the shipped ``mg-*`` model.
    grid_shape : tuple, optional
    coarse_size : int

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond.multigrid import fast_learned
    >>> A = linsolve.problems.poisson((16, 16, 16))
    >>> ident = {"tables": np.zeros((1, 4, 27)), "bias": [0.0], "log_correction": [0.0]}
    >>> M = fast_learned(A, model=ident)
    >>> x, info = linsolve.cg(A, np.ones(A.shape[0]), rtol=1e-8, M=M)
    >>> info
    0
    """
    mat = as_sparse_matrix(A, "A")
    shape = _grid_shape(mat.shape[0], grid_shape, cell_types)
    if cell_types is not None:
        _check_cell_types(cell_types)
    params = load_mg_parameters(model, dims=len(shape))
    t0 = time.perf_counter()
    M = GeometricMG(mat, shape, cell_types=cell_types, coarse_size=coarse_size, name=params["name"],
                    _validated=True)
    M.set_parameters(learned_omegas(M.levels, params), learned_corrections(M.levels, params))
    M.setup_time_s += time.perf_counter() - t0
    return M


# ----------------------------------------------------------------------------- drivers

def _limit_blas():
    """One BLAS thread: CG's dot products on 1e5-1e6 entries only lose from threading on a busy CPU."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl missing
        import contextlib

        return contextlib.nullcontext()


def _mg_pcg(build, name, A, b, x0, rtol, atol, maxiter, M, callback, preconditioner) -> SolveResult:
    from ..krylov.cg import cg_result

    if M is not None:
        raise ValueError(f"method={name!r} builds its own preconditioner; do not pass M "
                         f"(reuse one with preconditioner=...)")
    with _limit_blas():
        t0 = time.perf_counter()
        if preconditioner is not None:
            if not isinstance(preconditioner, GeometricMG):
                raise TypeError("preconditioner must be a GeometricMG from geometric_mg()/fast_learned()")
            precond = preconditioner
        else:
            precond = build()
        setup = time.perf_counter() - t0
        res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=precond, callback=callback)
    res.method = name
    res.setup_time_s = setup
    res.extras.update(levels=len(precond.levels), model=precond.name, preconditioner=precond)
    return res


def gmg_pcg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                   cell_types=None, grid_shape=None, preconditioner=None, **mg_options) -> SolveResult:
    """PCG with the classical geometric-multigrid V-cycle (:func:`geometric_mg`); ``method="gmg-pcg"``.

    ``preconditioner`` reuses a V-cycle built earlier (A fixed across frames);
    ``mg_options`` go to :func:`geometric_mg`. ``residual_norms`` are the CG
    recurrence residuals; the true residual of ``x`` is checked before
    ``converged`` is claimed. ``setup_time_s`` is the hierarchy build.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond.multigrid import gmg_pcg_result
    >>> A = linsolve.problems.poisson((24, 24, 24))
    >>> res = gmg_pcg_result(A, np.ones(A.shape[0]), rtol=1e-8)
    >>> res.converged, res.iterations < 20
    (True, True)
    """
    return _mg_pcg(lambda: geometric_mg(A, cell_types, grid_shape=grid_shape, **mg_options), "gmg-pcg",
                   A, b, x0, rtol, atol, maxiter, M, callback, preconditioner)


def learned_pcg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                       cell_types=None, grid_shape=None, model=None, preconditioner=None) -> SolveResult:
    """PCG with the learned multigrid V-cycle (:func:`fast_learned`); ``method="learned-pcg"``.

    Same contract as :func:`gmg_pcg_result`; ``model=None`` uses the shipped
    ``mg-*`` model.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond.multigrid import learned_pcg_result
    >>> A = linsolve.problems.poisson((16, 16, 16))
    >>> ident = {"tables": np.zeros((1, 4, 27)), "bias": [0.0], "log_correction": [0.0]}
    >>> res = learned_pcg_result(A, np.ones(A.shape[0]), rtol=1e-8, model=ident)
    >>> res.converged
    True
    """
    return _mg_pcg(lambda: fast_learned(A, cell_types, model, grid_shape=grid_shape), "learned-pcg",
                   A, b, x0, rtol, atol, maxiter, M, callback, preconditioner)


def _auto_rule(A, options):
    """``method="auto"``: the learned V-cycle when the grid is known, A is a grid stencil and a model ships."""
    if "cell_types" not in options and "grid_shape" not in options:
        return None
    n = A.shape[0]
    if n < 20_000:
        return None
    mat = getattr(A, "A", None) if not sp.issparse(A) else A
    if mat is None or not sp.issparse(mat) or mat.nnz > 7 * n:
        return None
    shape = _grid_shape(n, options.get("grid_shape"), options.get("cell_types"))
    stencil_from_matrix(mat, shape)  # raises (-> "no opinion") when A is not a grid M-matrix
    return "learned-pcg" if _find_model(len(shape)) is not None else "gmg-pcg"
