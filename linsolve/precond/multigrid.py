"""Structured-grid multigrid preconditioners for pressure matrices: the classical twin and the learned one.

Both read everything from ``A`` (5/7-point or 9/27-point stencil on the full
grid in C order; identity rows of solid/air cells and zero rows of trapped
cells allowed), so they work for the matrices real fluid codes hand over:
ghost-fluid free surfaces, density jumps of 1000:1, cut-cell face fractions,
graded and stretched grids, trapped cells and closed fluid pockets. The
hierarchy (:mod:`linsolve.precond.hierarchy`) is operator-dependent and
Galerkin: black-box interpolation, semicoarsening and line relaxation where
the stencil calls for it.

* :func:`geometric_mg`: the classical twin (Gauss-Seidel ``omega = 1``, unit
  coarse corrections): the honest baseline.
* :func:`fast_learned`: the same hierarchy with learned smoothing: every
  cell's relaxation is a function of its own stencil coefficients (anisotropy,
  Dirichlet share, coefficient contrast), plus a learned scale of each coarse
  correction and of the line blocks. Inference is NumPy/numba only (no torch).

One V-cycle is a symmetric positive definite operator (semi-definite on closed
regions, with the constants there as null space), so plain PCG can use it.
"""
from __future__ import annotations

import os
import threading
import time
from typing import NamedTuple

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._validation import as_sparse_matrix, check_grid_shape
from ..kernels import multigrid as K
from .._grid import FLUID, SOLID, AIR  # noqa: F401  (cell codes, re-exported for callers)
from . import hierarchy as _hier

__all__ = ["geometric_mg", "fast_learned", "GeometricMG", "CoupledBlock", "stencil_from_matrix",
           "load_mg_parameters", "parameter_group", "learned_relaxation", "resolve_grid_shape", "MODEL_ARCHITECTURE",
           "DEFAULT_SMOOTHING_STEPS", "default_smoothing_steps"]

MODEL_ARCHITECTURE = "mg-stencil"
#: A Krylov driver runs on the coupled block alone when it holds at most this share of the rows: extracting
#: the block and the whole-matrix residual check cost about what the shorter vectors save at 0.6 (liquid in a
#: 64^3 tank, learned-pcg: 0.71x the whole-system time at 0.22, 0.87x at 0.45, 0.96x at 0.57, 1.07x at 0.69).
COUPLED_BLOCK_MAX_SHARE = 0.5
DEFAULT_COARSE_SIZE = 128


# ----------------------------------------------------------------------------- grid and stencil

def resolve_grid_shape(A, grid_shape=None, cell_types=None) -> tuple:
    """The grid of ``A``: from ``cell_types``, else ``grid_shape``, else found from A's sparsity pattern.

    Never guessed from ``n`` alone: a 16^3 7-point matrix and a 64x64
    5-point one both have n = 4096.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.precond.multigrid import resolve_grid_shape
    >>> resolve_grid_shape(linsolve.problems.poisson((6, 5, 4)), grid_shape=(6, 5, 4))
    (6, 5, 4)
    """
    n = A.shape[0]
    if cell_types is not None:
        shape = np.shape(cell_types)
        if grid_shape is not None and tuple(int(s) for s in grid_shape) != tuple(shape):
            raise ValueError(f"grid_shape {tuple(grid_shape)} does not match cell_types.shape {shape}")
        return check_grid_shape(shape, n, "cell_types.shape")
    if grid_shape is not None:
        return check_grid_shape(grid_shape, n, "grid_shape")
    try:
        from ..structure import find_grid
    except ImportError:  # pragma: no cover - structure detection not installed
        find_grid = None
    found = find_grid(A) if find_grid is not None else None
    if found is None:
        from ..structure import find_compact_grid

        compact = find_compact_grid(A) if find_compact_grid is not None else None
        if compact is not None:
            raise ValueError(f"A ({n}x{n}) is numbered over {n} cells of a {tuple(compact.shape)} grid only (a "
                             f"fluid-cells-only numbering): this preconditioner needs the full grid (identity rows "
                             f"for the other cells); method='auto' or linsolve.auto_cg lay A back on its grid")
        raise ValueError(f"A ({n}x{n}) is not recognisably a 2D/3D grid stencil: pass grid_shape= or cell_types=")
    if getattr(found, "sign", 1) < 0:
        raise ValueError("A is negative definite on its grid: pass -A (and -b)")
    if getattr(found, "border", None):
        raise ValueError("A is a Lagrange-bordered grid system: strip the border (linsolve.auto_cg does)")
    return tuple(found.shape)


def stencil_from_matrix(A, shape) -> dict:
    """The stencil of a symmetric grid matrix: ``{"diag": array, (d0, d1, d2): array, ...}`` over the grid.

    Each key ``d`` is an "upper" grid offset (lexicographically positive, 2D
    grids use ``(0, d1, d2)``) and its array holds ``A[c, c + d]`` for every
    cell ``c`` (0 where the neighbour is outside the grid). Raises
    ``ValueError`` if A has entries outside the 3x3(x3) neighbourhood of the
    grid, is not symmetric, has a positive off-diagonal entry or a
    non-positive diagonal in a coupled row.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.precond.multigrid import stencil_from_matrix
    >>> s = stencil_from_matrix(linsolve.problems.poisson((4, 4, 4)), (4, 4, 4))
    >>> float(s["diag"].max()), float(s[(0, 0, 1)][0, 0, 0]), float(s[(0, 0, 1)][0, 0, 3])
    (6.0, -1.0, 0.0)
    """
    mat = as_sparse_matrix(A, "A")
    shape = check_grid_shape(shape, mat.shape[0], "shape")
    L = _hier._level_from_csr(mat, shape)
    grid = tuple(shape)
    out = {"diag": K.from_padded(L.diag, L.grid3).reshape(grid)}
    for k, d in enumerate(L.dvec):
        out[tuple(int(v) for v in d)] = K.from_padded(L.coef[k], L.grid3).reshape(grid)
    return out


def _check_cell_types(cell_types) -> np.ndarray:
    from .._grid import check_cell_types

    t = np.asarray(cell_types)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cell_types must be an integer array, got dtype {t.dtype}")
    return check_cell_types(t)


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- the operator

class CoupledBlock(NamedTuple):
    """The coupled part of a grid matrix that a cropped multigrid covers (see :meth:`GeometricMG.coupled_block`)."""

    rows: np.ndarray
    operator: LinearOperator
    outside_inv: np.ndarray
    outside_zero: np.ndarray


#: A float32 cycle whose asymmetry on two random vectors exceeds this runs in double precision. Stiff clusters
#: (2D random air cells at 1e4-1e5:1, 15-30 %) lose the float32 cycle's definiteness: asymmetry 1e-4 to 0.7 (or
#: a negative energy), PCG 19-71 iterations or a breakdown, against 8-14 with a double cycle on the same
#: hierarchy. Cycles that hold measure 1e-6 (2D, 5 % air or 1e3:1) to 1e-7 (3D); bubbles of radius 1-3 at 1e5:1
#: in 2D measure 4e-5 to 7e-5 and converge alike in both precisions. Only hierarchies with clusters on the
#: finest level are checked (two cycles at set-up); the estimate varies 3x between vector pairs, hence the margin.
SINGLE_MAX_ASYMMETRY = 2e-5


class GeometricMG(LinearOperator):
    """One symmetric V-cycle of the structured multigrid as an SPD ``LinearOperator``.

    Build it with :func:`geometric_mg` or :func:`fast_learned`. Attributes:
    ``hierarchy`` (:class:`~linsolve.precond.hierarchy.Hierarchy`), ``levels``,
    ``setup_time_s``, ``grid_shape``, ``name``, ``smoothing_steps``.
    ``nullspace_labels`` / ``n_closed`` describe closed regions (singular
    blocks) and ``zero_rows`` the rows of A that are entirely zero; a Krylov
    driver projects those out (see :func:`linsolve.krylov.pcg.mg_pcg_result`).
    """

    def __init__(self, hierarchy, *, name="gmg", smoothing_steps=None, precision="single"):
        if precision not in ("single", "double"):
            raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
        self.hierarchy = hierarchy
        self.levels = hierarchy.levels
        self.grid_shape = hierarchy.grid_shape
        self.name = name
        if precision == "single" and (hierarchy.n_closed or hierarchy.precision == "double"):
            # Closed regions make the levels singular; single-precision rounding of the restricted residuals
            # then feeds their null spaces until the cycle stops being definite (a porous 512^2 medium: no
            # convergence in single, 15 iterations in double). Double precision is kept for such matrices,
            # and for those the hierarchy was built in double for (hierarchy.SINGLE_MIN_CLUSTER_LEAK).
            precision = "double"
        self.smoothing_steps = default_smoothing_steps(len(hierarchy.grid_shape)) if smoothing_steps is None \
            else _check_int(smoothing_steps, "smoothing_steps")
        self.setup_time_s = hierarchy.setup_time_s
        self._learned_omegas = None  # (model signature, per-level omegas) of fast_learned, for its next call
        self._block = None
        self._set_cycle_precision(precision)
        # The cycle works in place on per-level buffers: threads sharing one preconditioner (auto_cg keeps
        # one per matrix) take turns; without it two solves overwrote each other's levels mid-cycle.
        self._cycle_lock = threading.Lock()
        if hierarchy.box is not None:
            grid3, _, _ = K.layout(self.grid_shape)
            self._grid3 = np.array(grid3, dtype=np.int64)
            self._start = np.array(hierarchy.box[0], dtype=np.int64)
        n = int(np.prod(self.grid_shape))
        super().__init__(dtype=np.dtype(np.float64), shape=(n, n))
        if precision == "single" and self.levels[0].clusters is not None \
                and self._float32_asymmetry() > SINGLE_MAX_ASYMMETRY:
            self._set_cycle_precision("double")

    def _set_cycle_precision(self, precision) -> None:
        self.precision = precision
        self._cycle_dtype = np.float32 if precision == "single" else np.float64
        self._kernels = _hier.NumbaKernels(self.hierarchy, self._cycle_dtype)
        self._b = np.zeros(self.levels[0].npad, self._cycle_dtype)

    def _float32_asymmetry(self) -> float:
        """``|u^T M v - v^T M u| / sqrt(u^T M u v^T M v)`` for two fixed random vectors (inf if not positive)."""
        u, v = np.random.default_rng(0).standard_normal((2, self.shape[0]))
        mu, mv = self.matvec(u), self.matvec(v)
        uu, vv = float(u @ mu), float(v @ mv)
        if not (uu > 0 and vv > 0):
            return np.inf
        return abs(float(u @ mv) - float(v @ mu)) / np.sqrt(uu * vv)

    @property
    def nullspace_labels(self):
        return self.hierarchy.closed_labels

    @property
    def n_closed(self) -> int:
        return self.hierarchy.n_closed

    @property
    def zero_rows(self) -> np.ndarray:
        return self.hierarchy.zero_rows

    def set_parameters(self, omega=1.0, correction=1.0, line_omega=1.0) -> None:
        """See :func:`linsolve.precond.hierarchy.set_relaxation`."""
        _hier.set_relaxation(self.hierarchy, omega, correction, line_omega)
        self._kernels = _hier.NumbaKernels(self.hierarchy, self._cycle_dtype)

    def coupled_block(self):
        """The cells the levels cover, when the hierarchy is cropped to at most
        :data:`COUPLED_BLOCK_MAX_SHARE` of the grid; None otherwise.

        Returns a :class:`CoupledBlock`: ``rows`` (flat indices in the caller's
        C order, sorted), ``operator`` (this V-cycle on vectors over ``rows``
        alone), ``outside_inv`` (``1 / a_ii`` on the decoupled rows outside,
        0 elsewhere) and ``outside_zero`` (the entirely zero rows outside).
        Every row outside is decoupled, so a Krylov driver can solve the block
        and the outside apart (:func:`linsolve.krylov.pcg.pcg_with` does):
        its vectors then skip the cells no coupling reaches.
        """
        H = self.hierarchy
        if H.box is None or np.prod(np.subtract(H.box[1], H.box[0])) > COUPLED_BLOCK_MAX_SHARE * self.shape[0]:
            return None
        if self._block is None:
            rows = self.hierarchy.box_index()
            inv = self.hierarchy.outside_inv
            outside_zero = inv == 0
            outside_zero[rows] = False
            operator = LinearOperator((rows.size, rows.size), matvec=self._cycle_on_levels,
                                      rmatvec=self._cycle_on_levels, dtype=np.float64)
            self._block = CoupledBlock(rows, operator, inv, outside_zero)
        return self._block

    def _cycle_on_levels(self, r):
        """One V-cycle on a vector over the finest level's own cells (the box when cropped)."""
        L0 = self.levels[0]
        r = np.asarray(r).reshape(-1)
        dtype = np.result_type(r.dtype, np.float64) if r.dtype.kind == "f" else np.float64
        out = np.empty(r.size, dtype=dtype)
        with self._cycle_lock:
            K.pad_into(r, L0.pshape, L0.ghost, self._b)
            x = _hier.vcycle(self.hierarchy, self._kernels, self._b, self.smoothing_steps)
            K.unpad_into(x, L0.pshape, L0.ghost, out)
        return out

    def _matvec(self, r):
        L0 = self.levels[0]
        r = np.asarray(r).reshape(-1)
        dtype = np.result_type(r.dtype, np.float64) if r.dtype.kind == "f" else np.float64
        if self.hierarchy.box is None:
            return self._cycle_on_levels(r)
        # cropped: decoupled cells outside the box are solved exactly, the box by the cycle
        out = (r * self.hierarchy.outside_inv).astype(dtype, copy=False)
        with self._cycle_lock:
            K.pad_box(r, self._grid3, self._start, L0.pshape, L0.ghost, self._b)
            x = _hier.vcycle(self.hierarchy, self._kernels, self._b, self.smoothing_steps)
            K.unpad_box(x, L0.pshape, L0.ghost, self._grid3, self._start, out)
        return out

    def _rmatvec(self, r):
        return self._matvec(r)

    def __repr__(self) -> str:
        return (f"<GeometricMG {self.name!r} grid={self.grid_shape} levels={len(self.levels)} "
                f"coarsest={self.levels[-1].grid3}>")


def _previous_hierarchy(previous):
    if previous is None:
        return None
    if isinstance(previous, GeometricMG):
        return previous.hierarchy
    if isinstance(previous, _hier.Hierarchy):
        return previous
    raise TypeError(f"previous must be a GeometricMG (the last preconditioner of a sequence) or None, "
                    f"got {type(previous).__name__}")


def _build(A, cell_types, grid_shape, coarse_size, line_threshold, semicoarsen, precision, crop=True,
           previous=None):
    previous = _previous_hierarchy(previous)
    mat = as_sparse_matrix(A, "A")
    shape = resolve_grid_shape(mat, grid_shape, cell_types)
    if cell_types is not None:
        _check_cell_types(cell_types)
    coarse_size = _check_int(coarse_size, "coarse_size")
    if not np.isfinite(line_threshold) or line_threshold < 0:
        raise ValueError(f"line_threshold must be >= 0 (0: no line relaxation), got {line_threshold!r}")
    if not 0 < semicoarsen <= 1:
        raise ValueError(f"semicoarsen must lie in (0, 1], got {semicoarsen!r}")
    if precision not in ("single", "double"):
        raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
    return _hier.build_hierarchy(mat, shape, coarse_size=coarse_size, line_threshold=float(line_threshold),
                                 semicoarsen=float(semicoarsen), precision=precision, crop=bool(crop),
                                 previous=previous)


#: Smoothing sweeps before (and, mirrored, after) each coarse correction when none are asked for, per grid
#: dimensionality. Two in 3D: PCG at rtol 1e-6 with the hierarchy built every frame, 64^3 scenes, one sweep / two:
#: dam break 9 / 5-6 iterations, 44 / 37 ms per frame; rising bubble 9-10 / 6-7, 171 / 157 ms; moving sphere
#: 8-9 / 5, 167 / 156 ms; graded sphere 9-10 / 6, 245 / 242 ms; a kept hierarchy (bubble 64^3) 66 / 51 ms; a grid
#: graded 1.3x per cell (stretch 20, 32^3) 17 / 11 iterations, stretch 100 (48^3) 31 / 20. One in 2D: 512^2
#: scenes 6-8 / 5-6 iterations at equal time, a kept 256^2 Poisson 7.0 / 8.0 ms.
DEFAULT_SMOOTHING_STEPS = {2: 1, 3: 2}


def default_smoothing_steps(dims: int) -> int:
    """:data:`DEFAULT_SMOOTHING_STEPS` for a ``dims``-D grid (one sweep for any other)."""
    return DEFAULT_SMOOTHING_STEPS.get(dims, 1)


def geometric_mg(A, cell_types=None, *, grid_shape=None, omega=1.0, smoothing_steps=None, correction=1.0,
                 coarse_size=DEFAULT_COARSE_SIZE, line_threshold=_hier.DEFAULT_LINE_THRESHOLD, semicoarsen=0.5,
                 precision="single", crop=True, previous=None) -> GeometricMG:
    """Classical structured multigrid V-cycle for a grid matrix, as an SPD LinearOperator.

    The non-learned twin of :func:`fast_learned`: the same robust hierarchy
    (operator-dependent interpolation, Galerkin coarse operators,
    semicoarsening, line relaxation on anisotropic cells) with textbook
    parameters (Gauss-Seidel ``omega = 1``, unit coarse corrections).

    Parameters
    ----------
    A : sparse matrix, shape (n, n)
        Symmetric M-matrix with a 3x3(x3)-neighbourhood stencil on a grid
        (pressure and Poisson matrices; identity and zero rows allowed).
    cell_types : int array of the grid's shape, optional
        Only gives the grid shape here (everything else is read from A).
    grid_shape : tuple, optional
        The grid; without it and ``cell_types`` the grid is found from A's
        sparsity pattern (:func:`linsolve.structure.find_grid`).
    omega : float in (0, 2), or a list of them per level
        Point Gauss-Seidel relaxation.
    smoothing_steps : int, optional
        Smoothing steps before (and, mirrored, after) each coarse correction;
        by default :data:`DEFAULT_SMOOTHING_STEPS` (two in 3D, one in 2D).
    correction : float or sequence of float > 0
        Scale of each level's coarse-grid correction.
    coarse_size : int
        Coarsen until a level has at most this many cells, then factor it.
    line_threshold : float
        Relax line segments of cells whose coupling along an axis exceeds this
        multiple of the mean of the others (0 turns line relaxation off).
    semicoarsen : float in (0, 1]
        Coarsen only the axes whose total coupling reaches this fraction of the
        strongest one.
    precision : {"single", "double"}
        Arithmetic of the cycle. ``"single"`` halves the memory traffic of the
        (bandwidth-bound) cycle, and an outer CG in double precision converges
        as with ``"double"``; the Galerkin products are formed in double either
        way (from double-precision weights on a 2D grid strongly graded over
        a large share of its cells: ``hierarchy.SINGLE_MAX_ANISOTROPY``). A
        matrix with closed regions (singular blocks) always gets a
        double-precision cycle (``M.precision`` says which ran).
    crop : bool
        Run the levels on the bounding box of the coupled cells when that box
        leaves out a twentieth of the grid or more (a liquid in part of its tank,
        the walls of a box); the decoupled cells outside are solved exactly.
    previous : GeometricMG, optional
        The preconditioner of the previous matrix in a sequence (the last time
        step). Where the matrix changed only in part of the grid (a moving
        obstacle), the untouched interpolation weights and coarse-operator rows
        are taken over: the same preconditioner, bitwise, built faster. One
        that does not fit is ignored.

    Returns
    -------
    GeometricMG
        One V-cycle per ``matvec``; symmetric positive definite.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond.multigrid import geometric_mg
    >>> A = linsolve.problems.poisson((32, 32, 32))
    >>> M = geometric_mg(A, grid_shape=(32, 32, 32))
    >>> x, info = linsolve.cg(A, np.ones(A.shape[0]), rtol=1e-8, M=M)
    >>> info
    0
    """
    t0 = time.perf_counter()
    H = _build(A, cell_types, grid_shape, coarse_size, line_threshold, semicoarsen, precision, crop, previous)
    _hier.set_relaxation(H, omega, correction)
    M = GeometricMG(H, name="gmg", smoothing_steps=smoothing_steps, precision=precision)
    M.setup_time_s = time.perf_counter() - t0
    return M


# ----------------------------------------------------------------------------- learned parameters

def parameter_group(level: int, n_levels: int, n_groups: int) -> int:
    """Which parameter group level ``level`` of an ``n_levels`` hierarchy uses.

    Group 0: the finest level; with 3 groups, group 2 is the level just above
    the coarsest (its coarse solve is exact) and group 1 every level in
    between; with 2 groups every level but the finest uses group 1. This keeps
    a model trained on small grids meaningful on deeper hierarchies.

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


def _find_model(dims=None):
    """Name of the shipped learned-multigrid model for ``dims``-D grids (any dims when None), or None."""
    from .. import models

    names = models.find(dims, architecture=MODEL_ARCHITECTURE)
    return names[0] if names else None


_PARAM_CACHE: dict = {}
_PARAM_KEYS = ("weights", "bias", "log_correction", "line_bias")


def load_mg_parameters(model=None, dims=None) -> dict:
    """NumPy parameters of a learned multigrid model (no torch needed).

    ``model`` is a shipped name (``linsolve.models.available()``), a path, a
    torch ``MGStencilModel``, a dict as returned here, or ``None`` for the
    shipped model of ``dims``-D grids. Returns ``{"weights": (G, F), "bias":
    (G,), "log_correction": (G,), "line_bias": (G,), "omega_lo", "omega_hi",
    "dims", "name"}`` with ``F = linsolve.kernels.multigrid.N_FEATURES``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.precond.multigrid import load_mg_parameters
    >>> p = load_mg_parameters({"weights": np.zeros((1, 6)), "bias": [0.0], "log_correction": [0.0]})
    >>> p["weights"].shape, p["line_bias"].tolist()
    ((1, 6), [0.0])
    """
    if isinstance(model, dict):
        weights = np.asarray(model["weights"], dtype=np.float64)
        groups = weights.shape[0] if weights.ndim == 2 else 0
        out = {"weights": weights,
               "bias": np.asarray(model["bias"], dtype=np.float64).ravel(),
               "log_correction": np.asarray(model["log_correction"], dtype=np.float64).ravel(),
               "line_bias": np.asarray(model.get("line_bias", np.zeros(max(groups, 1))), dtype=np.float64).ravel(),
               "omega_lo": float(model.get("omega_lo", 0.2)), "omega_hi": float(model.get("omega_hi", 1.9)),
               "dims": model.get("dims"), "name": model.get("name", "<dict>")}
        if weights.ndim != 2 or weights.shape[1] != K.N_FEATURES:
            raise ValueError(f"model weights must have shape (groups, {K.N_FEATURES}), got {weights.shape}")
        if not all(out[k].shape == (groups,) for k in ("bias", "log_correction", "line_bias")):
            raise ValueError("model weights, bias, log_correction and line_bias must have one entry per group")
        if not (0 < out["omega_lo"] < out["omega_hi"] < 2):
            raise ValueError("model omega range must satisfy 0 < omega_lo < omega_hi < 2")
        for key in _PARAM_KEYS:
            if not np.all(np.isfinite(out[key])):
                raise ValueError(f"model {key} contains NaN or Inf")
        return out
    if hasattr(model, "numpy_parameters"):
        return load_mg_parameters(model.numpy_parameters())
    from .. import models

    if model is None:
        model = _find_model(dims)
        if model is None:
            raise ValueError(f"no learned multigrid model{f' for {dims}D grids' if dims else ''} is shipped "
                             f"(linsolve.models.available() has none); train one with `linsolve train "
                             f"mg{dims or 3}d` and pass model=PATH, or use method='gmg-pcg'")
    path = models.resolve(model)
    key = (path, os.path.getmtime(path))
    params = _PARAM_CACHE.get(key) or _read_mg_file(path)
    if dims is not None and params["dims"] not in (None, dims):
        raise ValueError(f"{path} is a model for {params['dims']}D grids, but A lives on a {dims}D grid")
    _PARAM_CACHE.clear()
    _PARAM_CACHE[key] = params
    return params


def _read_mg_file(path) -> dict:
    from ..models._format import read_metadata

    meta = read_metadata(path)
    if meta.get("architecture") != MODEL_ARCHITECTURE:
        raise ValueError(f"{path} holds a {meta.get('architecture')!r} model, not a learned multigrid "
                         f"({MODEL_ARCHITECTURE!r}); models of the older 'mg-vcycle' format must be retrained "
                         f"(`linsolve train mg3d`)")
    from safetensors import SafetensorError
    from safetensors.numpy import load as st_load

    with open(path, "rb") as handle:
        data = handle.read()
    try:
        tensors = st_load(data)
    except SafetensorError as exc:
        raise ValueError(f"{path} is corrupt: {exc}") from None
    for key, value in tensors.items():
        if value.dtype.kind != "f":  # a cast would drop an imaginary part or take integers as weights
            raise ValueError(f"{path}: tensor {key!r} has dtype {value.dtype}, a learned multigrid needs real "
                             f"floating-point weights")
    config = meta.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"{path}: metadata 'config' must be a JSON object, got {type(config).__name__}")
    try:
        params = load_mg_parameters({**{k: tensors[k] for k in _PARAM_KEYS},
                                     "omega_lo": config.get("omega_lo", 0.2), "omega_hi": config.get("omega_hi", 1.9),
                                     "dims": meta.get("dims"), "name": os.path.basename(path)})
    except KeyError as exc:
        raise ValueError(f"{path}: missing tensor {exc}") from None
    return params


def level_features(L) -> np.ndarray:
    """Per-cell stencil features of a level (``(N_FEATURES, npad)``; see :func:`~linsolve.kernels.multigrid.stencil_features`)."""
    out = np.zeros((K.N_FEATURES, L.npad))
    K.stencil_features(L.diag, L.coef, L.offs, L.dvec, L.pshape, L.ghost, out)
    return out


def learned_relaxation(hierarchy, params, previous=None) -> tuple:
    """``(omegas, corrections, line_omegas)`` per level from a learned model's parameters.

    ``previous``: the ``omegas`` this gave, with the same ``params``, for the
    hierarchy that ``hierarchy`` was built from (``build_hierarchy(...,
    previous=)``); only the cells around the changes are evaluated again.

    A cell's relaxation is ``omega_lo + (omega_hi - omega_lo) * sigmoid(bias
    + weights . features)`` with the features of its own stencil row, so it
    follows anisotropy, Dirichlet rows and coefficient jumps wherever they
    are; corrections are ``exp(log_correction)`` and line blocks relax with
    ``omega_lo + (omega_hi - omega_lo) * sigmoid(line_bias)``.
    """
    groups = params["weights"].shape[0]
    lo, hi = params["omega_lo"], params["omega_hi"]
    nlev = len(hierarchy.levels)
    omegas, corrections, lines = [], [], []
    changed = hierarchy.changed or [None] * nlev
    for lev, L in enumerate(hierarchy.levels):
        g = parameter_group(lev, nlev, groups)
        grid = np.array(L.grid3, dtype=np.int64)
        box_lo, box_hi = np.zeros(3, dtype=np.int64), grid
        kept = previous[lev] if previous is not None and lev < len(previous) else None
        if changed[lev] is not None and kept is not None and kept.shape == (L.npad,) \
                and parameter_group(lev, len(previous), groups) == g:
            # a cell's features read its own row, stored up to one cell away
            omega = kept.copy()
            box_lo = np.maximum(changed[lev][0] - 1, 0)
            box_hi = np.where(changed[lev][1] > changed[lev][0], np.minimum(changed[lev][1] + 1, grid), box_lo)
        else:
            omega = np.ones(L.npad)
        K.learned_omega(L.diag, L.coef, L.offs, L.dvec, L.pshape, L.ghost, np.ascontiguousarray(params["weights"][g]),
                        float(params["bias"][g]), float(lo), float(hi), box_lo, box_hi, omega)
        omegas.append(omega)
        corrections.append(float(np.exp(params["log_correction"][g])))
        lines.append(float(lo + (hi - lo) / (1.0 + np.exp(-params["line_bias"][g]))))
    return omegas, corrections, lines


def _parameter_signature(params) -> tuple:
    """Identity of a model's parameters by value (two loads of one file compare equal)."""
    return tuple(np.asarray(params[k], dtype=np.float64).tobytes() for k in _PARAM_KEYS) \
        + (params["omega_lo"], params["omega_hi"])


def fast_learned(A, cell_types=None, model=None, *, grid_shape=None, coarse_size=DEFAULT_COARSE_SIZE,
                 line_threshold=_hier.DEFAULT_LINE_THRESHOLD, semicoarsen=0.5, precision="single", crop=True,
                 previous=None, smoothing_steps=None) -> GeometricMG:
    """Learned multigrid V-cycle (stencil-conditioned smoothing on the robust hierarchy), SPD.

    Same hierarchy as :func:`geometric_mg`; the model sets every cell's
    relaxation from its own stencil row, a positive scale of each coarse
    correction and the relaxation of the line blocks (see
    :func:`learned_relaxation`). For a given ``A`` it is a fixed linear,
    symmetric positive definite operator: plain PCG can use it. Needs no torch.

    Parameters
    ----------
    A : sparse matrix
        Grid M-matrix (see :func:`geometric_mg`).
    cell_types : int array of the grid's shape, optional
        Only gives the grid shape.
    model : str, path, dict or MGStencilModel, optional
        ``None``: the shipped ``mg-*`` model for A's dimensionality.
    grid_shape, coarse_size, line_threshold, semicoarsen, precision, crop, previous, smoothing_steps
        As in :func:`geometric_mg`.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond.multigrid import fast_learned
    >>> A = linsolve.problems.poisson((16, 16, 16))
    >>> plain = {"weights": np.zeros((1, 6)), "bias": [0.0], "log_correction": [0.0]}
    >>> M = fast_learned(A, model=plain, grid_shape=(16, 16, 16))
    >>> x, info = linsolve.cg(A, np.ones(A.shape[0]), rtol=1e-8, M=M)
    >>> info
    0
    """
    t0 = time.perf_counter()
    mat = as_sparse_matrix(A, "A")
    shape = resolve_grid_shape(mat, grid_shape, cell_types)
    params = load_mg_parameters(model, dims=len(shape))
    H = _build(mat, cell_types, shape, coarse_size, line_threshold, semicoarsen, precision, crop, previous)
    signature = _parameter_signature(params)
    kept = getattr(previous, "_learned_omegas", None)
    omegas, corrections, line_omegas = learned_relaxation(
        H, params, kept[1] if kept is not None and kept[0] == signature else None)
    _hier.set_relaxation(H, omegas, corrections, line_omegas)
    M = GeometricMG(H, name=params["name"], smoothing_steps=smoothing_steps, precision=precision)
    M._learned_omegas = (signature, omegas)
    M.setup_time_s = time.perf_counter() - t0
    return M
