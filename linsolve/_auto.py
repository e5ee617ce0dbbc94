"""The rule behind ``method="auto"``: which method is fastest for this matrix, from the matrix.

Measured on pressure matrices with a moving obstacle (``fluid_sequence(...,
scene="moving_sphere")``), ``rtol=1e-6``, one core, total time of one solve
(setup included); see ``bench/auto_rule.py`` for the script and the numbers:

* **Grid matrices** (:func:`linsolve.find_grid`, or a ``grid_shape`` /
  ``cell_types`` hint): the structured-multigrid CG (setup included) beats
  plain CG from about 3,000 cells in 2D (48²: 5.1 ms against 4.3 ms; 56²:
  5.8 against 6.0 ms; 64²: 6.1 against 7.8 ms, medians of 24 solves) and about
  12,000 cells in 3D (22³: 10.6 ms against 9.8 ms; 24³: 10-12 ms against
  25 ms). With the preconditioner kept (a sequence whose matrix does not
  change) it wins earlier still. The learned smoothing is
  used where a shipped model fits the grid's dimensionality.
* **Other matrices**: PyAMG's Ruge-Stuben hierarchy was as fast as or faster
  than smoothed aggregation on every non-grid matrix we tried (permuted 2D
  pressure 256²: 177 against 259 ms; rotated anisotropic FE 250²: 129 against
  342 ms; 2D/3D P1 meshes: 1.4 against 1.8 s), except permuted 3D 7-point
  matrices (40³: 740 against 561 ms). Its setup only pays off from about
  30,000 unknowns (permuted pressure 32³: CG 46 ms, AMG 202-265 ms; 128²: a
  tie at 16k), below which plain CG wins.

The thresholds are module constants so the rule can be re-measured without
touching the code that applies it.
"""
from __future__ import annotations

from typing import Optional

import collections
import time

import numpy as np
import scipy.sparse as sp

__all__ = ["GRID_MIN_CELLS", "AMG_MIN_ROWS", "AMG_KIND", "GRID_METHODS", "NEGATE", "choose_method", "choose",
           "learned_model_for", "with_row_signs", "condition_bound", "CG_MAX_CONDITION",
           "GRID_CG_MAX_CONDITION", "diagonal_contrast", "small_grid_needs_multigrid", "amg_pays",
           "AMG_MIN_LINE", "AMG_KEPT_MIN_CG_ITERATIONS",
           "AMG_MIN_ROWS_JUMPS_2D", "AMG_HIGH_CONTRAST", "AMG_MIN_ROWS_HIGH_CONTRAST",
           "KEPT_MULTIGRID_CG_ITERATIONS", "kept_multigrid_cg_iterations", "cold_multigrid_cg_iterations",
           "cg_iteration_bound", "grid_cg_pays",
           "cg_condition_bound", "cg_condition_bounds", "BANDED_MAX_BANDWIDTH", "banded_pays", "narrow_band",
           "FACTOR_SOLVE_SPMVS", "FACTOR_BUILD_SOLVES", "factor_candidate", "factor_pays", "FactorRental",
           "JACOBI_MAX_CONDITION", "jacobi_pays"]

#: Smallest grid (cells) on which the multigrid path beats plain CG, per dimensionality.
GRID_MIN_CELLS = {2: 3_000, 3: 12_000}
#: Below GRID_MIN_CELLS a grid still takes multigrid when its coupled diagonal varies by more than this
#: factor (density jumps, ghost-fluid weights) and it has at least SMALL_GRID_MIN_CELLS cells: a 48^2 rising
#: bubble (ratio 1000) took plain CG 2,822 iterations / 54 ms, gmg-pcg 3.2 ms.
SMALL_GRID_CONTRAST = 10.0
SMALL_GRID_MIN_CELLS = 500
#: Smallest non-grid system on which building an AMG hierarchy beats plain CG.
AMG_MIN_ROWS = 30_000
#: The same for a 2D-like matrix (at most 6 entries per row) whose coefficients jump: a free surface numbered
#: over its fluid cells (ghost-fluid weights, diagonal contrast 20-100) in an order that keeps no grid (in grid
#: order linsolve.structure.find_compact_grid puts it back on one). RS-AMG-PCG / CG ms, a pool with
#: a drop: 888 rows 4.7 / 2.4, 1,617 5.9 / 4.5, 3,713 8.6 / 10.6, 6,672 13.5 / 20.8, 15,196 24 / 126; the
#: dam_break scene: 2,535 rows 14.7 / 8.3, 5,764 24 / 15, 10,297 34 / 49. In 3D CG keeps up longer
#: (9,708 rows: 28 / 13 ms; 35,000 rows: 99 / 131 ms), so AMG_MIN_ROWS holds there.
AMG_MIN_ROWS_JUMPS_2D = 6_000
#: Coefficients jumping by more than this (a diagonal ratio: density ratios of 1000, P1 elements on an irregular
#: mesh with a jumping conductivity) make CG hopeless at any size: AMG from AMG_MIN_ROWS_HIGH_CONTRAST rows on.
#: P1 Delaunay meshes (7 entries per row, so taken for 3D), conductivity jump, RS-AMG-PCG / CG: 5,000 rows
#: 82 ms / not converged in 20,000 iterations (767 ms), 8,000 rows 152 ms / (1,097 ms).
AMG_HIGH_CONTRAST = 500.0
AMG_MIN_ROWS_HIGH_CONTRAST = 2_000
#: A non-grid matrix of no jumping coefficients takes AMG when ``n^(1/d)`` (the cells of a grid line, ``d``
#: guessed from the entries per row) reaches this; see :func:`amg_pays`.
AMG_MIN_LINE = 250
#: A non-grid matrix that comes back unchanged (a periodic domain with fixed obstacles, solved every time step)
#: takes AMG, its set-up paid once, when plain CG needed at least this many iterations on it: a kept
#: RS-AMG-PCG solve costs 90-120 plain-CG iterations (periodic Poisson, rtol 1e-6: 2D lines of 64 / 128 / 192
#: cells CG 135 / 252 / 350 iterations, kept AMG 0.76 / 0.40 / 0.31 of its time; 3D 32 / 48 / 64: CG 102 /
#: 146 / 190, AMG 1.18 / 0.60 / 0.52).
AMG_KEPT_MIN_CG_ITERATIONS = 150
#: The AMG kind used for non-grid matrices.
AMG_KIND = "rs"
#: A non-grid matrix whose Jacobi-scaled Gershgorin bound on the condition number is at most this is
#: solved by plain CG: CG then needs at most ~0.5 sqrt(kappa) ln(2 / rtol) iterations (about 70 at rtol
#: 1e-6), fewer SpMVs than an AMG set-up costs. A periodic backward-Euler heat step on 64^3 (kappa <= 13):
#: AMG RS-CG took 4-30x SciPy's plain CG.
CG_MAX_CONDITION = 100.0
#: The same for a matrix that may lie on a grid it does not show (numbered over its fluid cells only), before
#: the grid is looked for; a grid matrix found takes :func:`grid_cg_pays`. A backward-Euler heat step
#: ``I + c L`` solved by ``solve()`` (hierarchy built per call) against plain CG, 256^2 / 64^3: bound 9 / 13:
#: CG 6.8 / 60 ms, multigrid 27 / 165 ms; bound 81 / 121: CG 19 / 181 ms, multigrid 29 / 182 ms.
GRID_CG_MAX_CONDITION = 50.0
#: A kept multigrid-PCG solve (the hierarchy built before: about 5 iterations of V-cycle and SpMV) costs
#: at least about this many plain-CG iterations (512^2 and 64^3 heat steps ``I + 8 L``: 23-24, one core); on
#: smaller grids a solve's fixed costs weigh more (:func:`kept_multigrid_cg_iterations`).
KEPT_MULTIGRID_CG_ITERATIONS = 24.0
#: Set in ``choose_method``'s options when the grid's block is negative definite: the row signs ``s``
#: (-1 on coupled rows and on decoupled rows with a negative diagonal, +1 on the others) that make
#: ``S A`` symmetric positive definite; the caller solves ``(S A) x = S b``, the same system.
NEGATE = "_negate"
#: A matrix whose entries all lie within this many places of the diagonal (a 1D problem, a grid strip a few cells
#: wide, in any of its orders) takes an exact banded Cholesky factor as preconditioner (``"banded-cg"``), where CG
#: would need about as many iterations as the strip is long and no grid multigrid coarsens it well. Factor time in
#: SpMVs of the same matrix, 200,000 rows, one core: 21 at bandwidth 1, 23 at 4, 43 at 8, 78 at 16, 124 at 32,
#: 347 at 64; a back-solve 10-17. See :func:`banded_pays`.
BANDED_MAX_BANDWIDTH = 32
#: A fixed 2D grid matrix solved again and again (static obstacles, a constant time step) takes a sparse factor
#: (:func:`linsolve.precond.sparse_factor`) once the solves spent on it have paid for one. An ``auto_cg`` solve
#: with the factor (one back-solve, three SpMVs, conversions) costs about this many SpMVs of the matrix (SuperLU,
#: minimum-degree ordering of ``A + A^T``, one core: 20 at 128^2, 38 at 256^2, 41 at 512^2; the back-solve alone
#: 17 / 24 / 31, and 24 at 1024^2) ...
FACTOR_SOLVE_SPMVS = 40.0
#: ... and the factorisation about this many such solves (37 at 128^2, 30 at 256^2, 36 at 512^2; 1.1 s there
#: against 0.74 ms an SpMV). See :func:`factor_pays`.
FACTOR_BUILD_SOLVES = 40.0
#: Kept multigrid solves must cost at least this multiple of the predicted back-solve for the factor to be built.
FACTOR_MIN_GAIN = 1.25
#: A matrix whose Jacobi-scaled Gershgorin bound is at most this, while its unscaled one is at least
#: ``JACOBI_MIN_GAIN`` times larger, takes CG preconditioned by the diagonal (``"jacobi-cg"``): at most
#: ``0.5 sqrt(8) ln(2 / 1e-8) = 27`` iterations to rtol 1e-8, no setup. FiPy-style transient step on 48^3, cell
#: widths jumping 10x, dt = 1e-5 (diagonal 0.97-906): plain CG 43 iterations / 28 ms, the multigrid 79 ms,
#: Jacobi-CG 5 iterations / 12 ms. See :func:`jacobi_pays`.
JACOBI_MAX_CONDITION = 8.0
JACOBI_MIN_GAIN = 4.0
#: Methods of the grid path (they take ``grid_shape`` / ``cell_types`` and a reusable ``preconditioner``).
GRID_METHODS = ("learned-pcg", "gmg-pcg")

_LEARNED_ARCHITECTURE = "mg-stencil"  # linsolve.precond.multigrid.MODEL_ARCHITECTURE


def learned_model_for(dims: int) -> Optional[str]:
    """Name of the shipped learned-multigrid model for ``dims``-D grids, or ``None``.

    Examples
    --------
    >>> from linsolve._auto import learned_model_for
    >>> learned_model_for(3) is not None, learned_model_for(7)
    (True, None)
    """
    from . import models

    names = models.find(dims, architecture=_LEARNED_ARCHITECTURE)
    return names[0] if names else None


def _grid_structure(matrix, options: dict):
    """The hinted shape (a tuple: hints are taken at their word, the multigrid checks the stencil when it
    builds), or what :func:`linsolve.find_grid` reads off the pattern (or None)."""
    from ._validation import check_grid_shape

    n = matrix.shape[0]
    if options.get("cell_types") is not None:
        return check_grid_shape(np.shape(options["cell_types"]), n, "cell_types.shape")
    if options.get("grid_shape") is not None:
        return check_grid_shape(options["grid_shape"], n, "grid_shape")
    from .structure import find_grid

    return find_grid(matrix)


def choose_method(matrix, options: dict, negate: bool = False, rtol: float = 1e-6, kept: bool = False) -> tuple:
    """``(method, extra_options)`` for ``solve(..., method="auto")`` on an explicit matrix.

    ``matrix`` is a validated CSR matrix, or ``None`` for a LinearOperator
    (then plain CG: nothing to build a preconditioner from). With ``negate``
    a grid whose block is negative definite takes the grid path too, with
    ``extra_options[NEGATE]`` holding the row signs ``s`` (see :data:`NEGATE`):
    the caller solves ``(S A) x = S b``. Decoupled rows keep a positive
    diagonal, so PhiFlow's ``+1`` obstacle rows beside a ``+Laplacian`` block
    qualify too. A grid matrix that plain CG solves to ``rtol`` in fewer
    iterations than a multigrid costs (:func:`grid_cg_pays`; ``kept``: the
    multigrid would serve later solves of the matrix too) takes plain CG.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve._auto import choose_method
    >>> choose_method(linsolve.problems.poisson((128, 64)), {})
    ('learned-pcg', {'grid_shape': (128, 64)})
    >>> choose_method(linsolve.problems.poisson((16, 16)), {})
    ('cg', {})
    >>> choose_method(linsolve.problems.poisson((32, 32, 32)), {})[0]
    'learned-pcg'
    >>> method, extra = choose_method(-linsolve.problems.poisson((128, 64)), {}, negate=True)
    >>> method, extra["grid_shape"], set(extra[NEGATE].tolist())
    ('learned-pcg', (128, 64), {-1.0})
    """
    if matrix is None or not sp.issparse(matrix):
        return "cg", {}
    n = matrix.shape[0]
    if jacobi_pays(matrix):
        return "jacobi-cg", {}
    if options.get("grid_shape") is None and options.get("cell_types") is None and banded_pays(matrix, rtol):
        return "banded-cg", {}
    found = _grid_structure(matrix, options)
    hinted = isinstance(found, tuple)
    negated = negate and not hinted and found is not None and found.border is None and found.sign < 0
    inactive = found.inactive if negated else None
    if negate and hinted:
        # the grid is given, its sign is read off the diagonal of the coupled rows
        diag = matrix.diagonal()
        decoupled = (np.diff(matrix.indptr) - (diag != 0)) == 0
        coupled = diag[~decoupled]
        if coupled.size and np.all(coupled < 0):
            negated, inactive = True, decoupled
    shape = found if hinted else (found.shape if found is not None and found.border is None else None)
    if shape is not None and (hinted or found.sign > 0 or negated):
        if n < GRID_MIN_CELLS.get(len(shape), n + 1) and not small_grid_needs_multigrid(matrix):
            return "cg", {}
        if grid_cg_pays(n, cg_condition_bound(matrix, -1 if negated else 1), rtol, kept):
            return "cg", {}
        extra = {} if hinted else {"grid_shape": shape}
        if negated:
            extra[NEGATE] = np.where(inactive & (matrix.diagonal() > 0), 1.0, -1.0)
        return ("learned-pcg" if learned_model_for(len(shape)) else "gmg-pcg"), extra
    if not amg_pays(matrix):
        return "cg", {}
    return "amg-cg", {} if "amg_kind" in options else {"amg_kind": AMG_KIND}


def narrow_band(matrix) -> Optional[int]:
    """The bandwidth of a CSR matrix (two rows or more) when it is at most :data:`BANDED_MAX_BANDWIDTH`, else None;
    one pass that stops at the first entry further out (nothing on a 2D/3D grid matrix)."""
    from .kernels.structure import bandwidth

    if not sp.issparse(matrix) or matrix.format != "csr" or matrix.shape[0] < 2:
        return None
    bw = int(bandwidth(matrix.indptr, matrix.indices, matrix.data, BANDED_MAX_BANDWIDTH))
    return bw if bw <= BANDED_MAX_BANDWIDTH else None


def banded_pays(matrix, rtol: float = 1e-6, kappa: Optional[float] = None) -> bool:
    """Whether a banded Cholesky factor (``"banded-cg"``) beats plain CG and any grid method on ``matrix``.

    The band must be at most :data:`BANDED_MAX_BANDWIDTH` wide and the diagonal of one sign; the factor and a
    back-solve cost about ``35 + 3.5 bw`` SpMVs (measured, see the constant), a plain-CG iteration about two,
    so plain CG keeps a matrix whose iteration bound (:func:`cg_iteration_bound` of ``kappa``, the
    :func:`cg_condition_bound` when not given; at most ``2 n / bw``, twice the strip's length) is below
    ``18 + 1.75 bw``. A singular matrix (pure Neumann)
    passes here and is refused by the factorisation, which ``auto`` answers with plain CG.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> from linsolve._auto import banded_pays
    >>> L1 = sp.diags([-np.ones(999), 2 * np.ones(1000), -np.ones(999)], [-1, 0, 1], format="csr")
    >>> banded_pays(L1), banded_pays(sp.identity(1000, format="csr") + 0.1 * L1), banded_pays(
    ...     linsolve.problems.poisson((64, 64)))
    (True, False, False)
    """
    bw = narrow_band(matrix)
    if bw is None:
        return False
    n = matrix.shape[0]
    from ._validation import definite_sign

    sign = definite_sign(matrix.diagonal())
    if not sign:
        return False
    if kappa is None:
        kappa = cg_condition_bound(matrix, sign)
    # CG on a strip needs at least about twice as many iterations as the strip is long (n / bw cells): a
    # small square grid (16 x 16, bandwidth 16) stays with plain CG even where no finite bound is known
    return min(cg_iteration_bound(kappa, rtol), 2.0 * n / max(bw, 1)) > 18.0 + 1.75 * bw


def amg_pays(matrix, sign: int = 0) -> bool:
    """Whether a matrix of no known grid is better solved by AMG-PCG than by plain CG.

    CG needs about as many iterations as a grid line has cells (``n^(1/d)``,
    ``d`` guessed from the entries per row: 3 / 5 / 7 for 1D / 2D / 3D
    stencils) unless the coefficients jump (then AMG pays from
    :data:`AMG_MIN_ROWS_JUMPS_2D` rows in 2D); Ruge-Stuben's set-up costs
    about 100-200 CG iterations. Measured on randomly numbered pressure
    matrices (setup included), AMG-PCG / CG: 184^2 117 / 91 ms, 256^2 219 /
    245 ms, 400^2 605 / 1111 ms; 32^3 115 / 25 ms, 64^3 1327 / 652 ms.
    (A matrix that comes back unchanged: :data:`AMG_KEPT_MIN_CG_ITERATIONS`.)

    Examples
    --------
    >>> import linsolve, numpy as np
    >>> from linsolve._auto import amg_pays
    >>> A = linsolve.problems.poisson((300, 300)); p = np.random.default_rng(0).permutation(A.shape[0])
    >>> amg_pays(A[p][:, p].tocsr()), amg_pays(linsolve.problems.poisson((40, 40, 40)))
    (True, False)
    """
    n = matrix.shape[0]
    per_row = matrix.nnz / max(n, 1)
    dims = 1 if per_row < 4 else (2 if per_row < 6.5 else 3)
    contrast = diagonal_contrast(matrix)
    if contrast > AMG_HIGH_CONTRAST:
        smallest = AMG_MIN_ROWS_HIGH_CONTRAST
    else:
        smallest = AMG_MIN_ROWS_JUMPS_2D if dims < 3 else AMG_MIN_ROWS
    if n < smallest or condition_bound(matrix, sign) <= CG_MAX_CONDITION:
        return False
    if contrast > SMALL_GRID_CONTRAST:
        return True  # jumping coefficients: CG's iterations are no longer set by the size alone
    return n >= AMG_MIN_ROWS and n ** (1.0 / dims) >= AMG_MIN_LINE


def diagonal_contrast(matrix) -> float:
    """``max / min`` of ``|a_ii|`` over the coupled rows (rows with an off-diagonal entry); 1 when none.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve._auto import diagonal_contrast
    >>> diagonal_contrast(linsolve.problems.poisson((8, 8)))
    1.0
    """
    diag = np.abs(matrix.diagonal())
    coupled = (np.diff(matrix.indptr) - (diag != 0)) > 0
    d = diag[coupled]
    if d.size == 0 or not np.all(d > 0):
        return 1.0 if d.size == 0 else float("inf")
    return float(d.max() / d.min())


def small_grid_needs_multigrid(matrix) -> bool:
    """A grid below the crossover whose coefficients jump (see :data:`SMALL_GRID_CONTRAST`)."""
    return matrix.shape[0] >= SMALL_GRID_MIN_CELLS and diagonal_contrast(matrix) > SMALL_GRID_CONTRAST


def condition_bound(matrix, sign: int = 0) -> float:
    """Gershgorin bound on the condition number of the Jacobi-scaled ``matrix`` (``inf`` when none follows).

    ``sign``: +1 / -1 for a positive / negative definite matrix, 0 to take it
    from the first diagonal entry. One pass over the entries.

    Examples
    --------
    >>> import scipy.sparse as sp, linsolve
    >>> from linsolve._auto import condition_bound
    >>> heat = (sp.identity(64) + 0.1 * linsolve.problems.poisson((8, 8))).tocsr()
    >>> round(condition_bound(heat), 3), condition_bound(linsolve.problems.poisson((8, 8)))
    (1.8, inf)
    """
    from .kernels.structure import jacobi_gershgorin_radius

    if matrix.shape[0] == 0:
        return 1.0
    if sign == 0:
        first = matrix.indptr[0], matrix.indptr[1]
        row = matrix.indices[first[0]:first[1]]
        d = matrix.data[first[0]:first[1]][row == 0]
        sign = -1 if d.size and d[0] < 0 else 1
    radius = float(jacobi_gershgorin_radius(matrix.indptr, matrix.indices, matrix.data, float(sign)))
    return (1.0 + radius) / (1.0 - radius) if radius < 1.0 else float("inf")


def cg_condition_bounds(matrix) -> tuple:
    """Gershgorin bounds on the condition numbers of ``matrix`` and of ``-matrix`` (``inf`` where none follows).

    Plain CG runs on the unscaled matrix: where the diagonal varies (ghost-fluid
    weights ``1/theta`` beside unit ones) its condition number is far above the
    Jacobi-scaled one of :func:`condition_bound`, which would promise plain CG
    a speed it does not have. One pass over the entries gives both signs
    (``-A``'s Gershgorin interval is ``A``'s mirrored).

    Examples
    --------
    >>> import scipy.sparse as sp, linsolve
    >>> from linsolve._auto import cg_condition_bounds
    >>> heat = (sp.identity(64) + 0.1 * linsolve.problems.poisson((8, 8))).tocsr()
    >>> [round(k, 3) for k in cg_condition_bounds(heat)], cg_condition_bounds(sp.diags([1.0, 100.0]).tocsr())
    ([1.8, inf], (100.0, inf))
    """
    from .kernels.structure import gershgorin_interval

    if matrix.shape[0] == 0:
        return 1.0, 1.0
    lo, hi = gershgorin_interval(matrix.indptr, matrix.indices, matrix.data, 1.0)
    return (float(hi / lo) if lo > 0 else float("inf")), (float(lo / hi) if hi < 0 else float("inf"))


def cg_condition_bound(matrix, sign: int = 1) -> float:
    """:func:`cg_condition_bounds` of ``sign * matrix``.

    Examples
    --------
    >>> import scipy.sparse as sp, linsolve
    >>> from linsolve._auto import cg_condition_bound
    >>> heat = (sp.identity(64) + 0.1 * linsolve.problems.poisson((8, 8))).tocsr()
    >>> round(cg_condition_bound(heat), 3), round(cg_condition_bound(-heat, -1), 3)
    (1.8, 1.8)
    """
    return cg_condition_bounds(matrix)[0 if sign > 0 else 1]


def with_row_signs(matrix, b, signs) -> tuple:
    """``(S A, S b)`` for the row signs of :data:`NEGATE` (a copy; A and b are not touched).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve._auto import with_row_signs
    >>> A = -linsolve.problems.poisson((4, 4)); b = np.ones(16)
    >>> SA, Sb = with_row_signs(A, b, -np.ones(16))
    >>> bool((SA - linsolve.problems.poisson((4, 4))).nnz == 0), float(Sb[0])
    (True, -1.0)
    """
    out = matrix.copy()
    out.data *= np.repeat(signs, np.diff(out.indptr))
    b = np.asarray(b)
    signed = signs.reshape((-1,) + (1,) * (b.ndim - 1)) * b
    return out, signed.astype(np.result_type(b.dtype, out.dtype), copy=False)  # +-1: float32 stays float32


def choose(matrix, options: dict, backend: str = "numpy", negate: bool = False, rtol: float = 1e-6,
           kept: bool = False) -> tuple:
    """``(method, extra_options)`` for ``method="auto"`` on ``backend``: registered rules first, then
    :func:`choose_method`; a choice that has no driver on ``backend`` becomes ``"cg"``.

    Rules (:func:`linsolve.solve.register_auto_rule`) see ``(A, options)``; one
    that raises has no opinion.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve._auto import choose
    >>> choose(linsolve.problems.poisson((16, 16)), {})
    ('cg', {})
    """
    from ._registry import AUTO_RULES, METHODS

    for rule in AUTO_RULES:
        try:
            name = rule(matrix, options)
        except Exception:
            name = None
        if name:
            return _on_backend(name, {}, backend, METHODS)
    name, extra = choose_method(matrix, options, negate=negate, rtol=rtol, kept=kept)
    return _on_backend(name, extra, backend, METHODS)


def _on_backend(name, extra, backend, methods) -> tuple:
    spec = methods.get(name)
    if backend != "numpy" and (spec is None or getattr(spec, backend) is None):
        return "cg", {}
    return name, extra


def grid_refusal_fallback(auto: bool, method: str, n: int, matrix=None):
    """The method ``auto`` runs instead when its grid method ``method`` refused the matrix, else ``None``.

    ``None`` means the refusal stands (the caller asked for ``method`` itself,
    or ``method`` is no grid method): re-raise it. ``solve(method="auto")``
    and ``SequenceSolver(method="auto")`` share this step so they never
    disagree on what a refused matrix gets.
    """
    if auto and method == "banded-cg":
        return "cg"  # singular (pure Neumann) or not symmetric: no Cholesky factor, CG as SciPy's would
    if not (auto and method in GRID_METHODS):
        return None
    return fallback_method(n, matrix if sp.issparse(matrix) else None)


def cold_multigrid_cg_iterations(n: int) -> float:
    """Plain-CG iterations that a cold multigrid-PCG solve of an ``n``-row grid costs (set-up included).

    ``120 - 30 log10(n / 10^4)``, from heat steps and Poisson grids of 4,096 to
    884,736 rows (one core; 148 at 64^2, 110 at 128^2, 97 at 256^2, 127 at
    24^3, 107 at 48^3, 73-84 at 512^2 and 64^3): the multigrid's set-up is a
    near fixed number of SpMVs, with a per-call overhead that weighs more on
    small grids.

    Examples
    --------
    >>> from linsolve._auto import cold_multigrid_cg_iterations
    >>> round(cold_multigrid_cg_iterations(10_000)), round(cold_multigrid_cg_iterations(262_144))
    (120, 77)
    """
    return float(min(170.0, max(50.0, 120.0 - 30.0 * np.log10(max(n, 1) / 1e4))))


def kept_multigrid_cg_iterations(n: int) -> float:
    """Plain-CG iterations that a multigrid-PCG solve of an ``n``-row grid costs when its hierarchy is kept.

    Heat steps ``I + 8 L`` at rtol 1e-5 through :func:`linsolve.auto_cg`, one
    core, a kept multigrid solve over plain CG's time per iteration: 2D 64^2
    40, 128^2 29, 256^2 26, 512^2 24; 3D 24^3 33, 40^3 29, 64^3 23 (a call's
    fixed costs weigh more on small grids). ``44 - 9 log10(n / 4096)`` within
    [:data:`KEPT_MULTIGRID_CG_ITERATIONS`, 44]: a few iterations above the
    measurements, so that in doubt plain CG, never slower than SciPy's, is
    kept (2D and 3D measured alike).

    Examples
    --------
    >>> from linsolve._auto import kept_multigrid_cg_iterations
    >>> round(kept_multigrid_cg_iterations(16_384)), round(kept_multigrid_cg_iterations(262_144))
    (39, 28)
    """
    cost = 44.0 - 9.0 * np.log10(max(int(n), 1) / 4096.0)
    return float(min(44.0, max(KEPT_MULTIGRID_CG_ITERATIONS, cost)))


def cg_iteration_bound(kappa: float, rtol: float) -> float:
    """``0.5 sqrt(kappa) ln(2 / rtol)``: CG's iterations to reduce the error ``rtol``-fold, condition ``kappa``.

    With :func:`cg_condition_bound`'s ``kappa`` it over-estimates plain CG on
    heat steps by 5-15 % in 2D and up to 2x in 3D (``I + 32 L`` on 64^3:
    bound 120, CG 82 iterations).

    Examples
    --------
    >>> from linsolve._auto import cg_iteration_bound
    >>> round(cg_iteration_bound(65.0, 1e-5))
    49
    """
    if not np.isfinite(kappa):
        return float("inf")
    return 0.5 * float(np.sqrt(max(kappa, 1.0))) * float(np.log(2.0 / min(max(rtol, 1e-300), 1.0)))


def grid_cg_pays(n: int, kappa: float, rtol: float, kept: bool = False, *,
                 estimate: "float | None" = None) -> bool:
    """Whether plain CG beats the multigrid on an ``n``-cell grid matrix of :func:`cg_condition_bound` ``kappa``.

    Plain CG's iterations (``estimate`` when measured on this matrix, else
    :func:`cg_iteration_bound`, which over-estimates them up to 2x in 3D)
    against the plain-CG iterations a multigrid solve costs:
    :func:`cold_multigrid_cg_iterations` when its hierarchy must be built
    first, :func:`kept_multigrid_cg_iterations` when it is kept from an
    earlier solve of the same matrix. A heat step ``I + 8 L`` on 256^2 (bound
    65, rtol 1e-5; CG 44 iterations, 13 ms): built multigrid 30 ms, kept
    7.3 ms; so CG for one solve, the multigrid for many. ``rtol``: the
    reduction asked of the initial residual (a warm start needs less).

    Examples
    --------
    >>> from linsolve._auto import grid_cg_pays
    >>> grid_cg_pays(65_536, 65.0, 1e-5), grid_cg_pays(65_536, 65.0, 1e-5, kept=True)
    (True, False)
    >>> grid_cg_pays(65_536, float("inf"), 1e-5)     # a Poisson matrix: no finite bound
    False
    """
    limit = kept_multigrid_cg_iterations(n) if kept else cold_multigrid_cg_iterations(n)
    return (cg_iteration_bound(kappa, rtol) if estimate is None else estimate) <= limit


def fallback_method(n: int, matrix=None) -> str:
    """What ``auto`` runs when the grid path refuses the matrix (not symmetric, not an M-matrix...):
    AMG where :func:`amg_pays` (given the matrix), else plain CG; by size alone without it."""
    if matrix is not None and sp.issparse(matrix):
        try:
            return "amg-cg" if amg_pays(matrix.tocsr()) else "cg"
        except (TypeError, ValueError):
            pass
    return "cg" if n < AMG_MIN_ROWS else "amg-cg"


def factor_candidate(shape, n_rows: int, singular: bool) -> bool:
    """Whether a grid matrix may take a sparse factor when it keeps coming back (see :func:`factor_pays`).

    2D grids only (a 3D factor fills in as ``n^{4/3}``: the multigrid stays cheaper), definite (no null space),
    up to :data:`linsolve.precond.direct.MAX_FACTOR_CELLS` rows.

    Examples
    --------
    >>> from linsolve._auto import factor_candidate
    >>> factor_candidate((512, 512), 512 * 512, False), factor_candidate((64, 64, 64), 64 ** 3, False)
    (True, False)
    """
    from .precond.direct import MAX_FACTOR_CELLS

    dims = sum(int(m) > 1 for m in shape) if shape is not None else 0
    return dims == 2 and not singular and 0 < n_rows <= MAX_FACTOR_CELLS


def factor_pays(solve_seconds, spmv_seconds: float, rent: Optional[float] = None) -> bool:
    """Whether the kept solves of one matrix, ``solve_seconds`` (one per call), have paid for a sparse factor.

    The rule is the ski-rental one (buy once the rent paid reaches the price: never more than twice the cost of
    the better choice made in hindsight, however many more calls come): the factorisation is predicted to cost
    ``FACTOR_BUILD_SOLVES`` back-solves of ``FACTOR_SOLVE_SPMVS`` SpMVs each (``spmv_seconds``), and each call paid
    what its solve cost above one back-solve. Solves that do not cost ``FACTOR_MIN_GAIN`` back-solves (a loose
    tolerance, a well-conditioned matrix) never pay for it. ``rent``: the rent paid so far, when the caller
    keeps only the recent solves (their median is weighed); by default summed over ``solve_seconds``.

    Examples
    --------
    >>> from linsolve._auto import factor_pays
    >>> spmv = 1e-3                      # a factored solve: 40 ms, the factor: 1.6 s
    >>> factor_pays([0.080] * 10, spmv), factor_pays([0.080] * 60, spmv), factor_pays([0.045] * 500, spmv)
    (False, True, False)
    """
    times = np.asarray(solve_seconds, dtype=np.float64)
    back_solve = FACTOR_SOLVE_SPMVS * float(spmv_seconds)
    if times.size == 0 or not back_solve > 0 or float(np.median(times)) < FACTOR_MIN_GAIN * back_solve:
        return False
    if rent is None:
        rent = float(np.sum(np.maximum(times - back_solve, 0.0)))
    return rent >= FACTOR_BUILD_SOLVES * back_solve


class FactorRental:
    """The sparse factor of one fixed matrix, rented against its kept preconditioner (see :func:`factor_pays`).

    The caller reports every converged solve with the kept preconditioner
    (:meth:`kept`: True when the factor should now be built, then
    :meth:`build`) and every solve with the factor (:meth:`factored`). A factor
    whose first ``TRIAL_SOLVES`` solves are not below ``KEEP_RATIO`` of the
    kept preconditioner's is dropped for good. ``auto_cg`` keeps one per
    matrix, ``SequenceSolver`` one for its current matrix.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve._auto import FactorRental
    >>> A = linsolve.problems.poisson((64, 64))
    >>> rent = FactorRental((64, 64), singular=False, n_rows=A.shape[0])
    >>> rent.kept(10.0, A)                   # a solve far dearer than a back-solve: the factor pays at once
    True
    >>> seconds = rent.build(A)
    >>> rent.factor is not None, rent.refused
    (True, None)
    """

    TRIAL_SOLVES = 3
    KEEP_RATIO = 0.9
    WINDOW = 16

    def __init__(self, shape, *, singular: bool, n_rows: int):
        self.factor = None
        self.refused = None if factor_candidate(shape, n_rows, singular) else (
            "not a definite 2D grid matrix of at most linsolve.precond.direct.MAX_FACTOR_CELLS rows")
        # the recent kept solves (a simulation runs thousands: only a window is weighed) and the rent they paid
        self.kept_seconds, self.factored_seconds = collections.deque(maxlen=self.WINDOW), []
        self.rent = 0.0
        self.spmv_seconds = None

    def kept(self, seconds: float, matrix) -> bool:
        """Record a converged solve with the kept preconditioner; True when the factor has now paid for itself."""
        if self.refused is not None or self.factor is not None:
            return False
        if self.spmv_seconds is None:
            self.spmv_seconds = _spmv_seconds(matrix)
        self.kept_seconds.append(float(seconds))
        self.rent += max(float(seconds) - FACTOR_SOLVE_SPMVS * self.spmv_seconds, 0.0)
        return factor_pays(self.kept_seconds, self.spmv_seconds, rent=self.rent)

    def build(self, matrix) -> float:
        """Factor ``matrix`` (the system the solves run on); a refusal is remembered. Returns the seconds spent."""
        from .precond.direct import sparse_factor

        t0 = time.perf_counter()
        if self.factor is None and self.refused is None:
            try:
                self.factor = sparse_factor(matrix)
            except (ValueError, MemoryError) as exc:
                self.refused = str(exc)
        return time.perf_counter() - t0

    def factored(self, seconds: float) -> None:
        """Record a solve with the factor; drop it when its trial solves were no faster than the kept ones."""
        self.factored_seconds.append(float(seconds))
        if len(self.factored_seconds) == self.TRIAL_SOLVES and np.median(self.factored_seconds) >= \
                self.KEEP_RATIO * np.median(self.kept_seconds):
            self.factor, self.refused = None, "its solves were no faster than the kept preconditioner's"


def _spmv_seconds(matrix) -> float:
    """The fastest of three products ``matrix @ x`` (seconds): the unit of :func:`factor_pays`."""
    x = np.ones(matrix.shape[0], dtype=matrix.dtype)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        matrix.dot(x)
        best = min(best, time.perf_counter() - t0)
    return best


def jacobi_pays(matrix, bounds: Optional[tuple] = None) -> bool:
    """Whether CG preconditioned by the diagonal (``"jacobi-cg"``) is the way to solve ``matrix``.

    True when the Jacobi-scaled matrix is well conditioned (Gershgorin bound at most
    :data:`JACOBI_MAX_CONDITION`) but the matrix itself is not nearly as well (its unscaled bound, of the sign of
    the diagonal, at least :data:`JACOBI_MIN_GAIN` times larger): the diagonal varies, as it does on a transient
    step over cells of very different volumes. Where both are small, plain CG needs no preconditioner.
    ``bounds``: :func:`cg_condition_bounds` of the matrix, when known. Two passes over the entries.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> from linsolve._auto import jacobi_pays
    >>> L = linsolve.problems.poisson((32, 32))
    >>> graded = (sp.diags(np.geomspace(1.0, 1e3, 1024)) * 1e3 + L).tocsr()
    >>> jacobi_pays(graded), jacobi_pays((1e3 * sp.identity(1024) + L).tocsr()), jacobi_pays(L)
    (True, False, False)
    """
    from ._validation import definite_sign

    if not sp.issparse(matrix) or matrix.format != "csr" or matrix.shape[0] < 2:
        return False
    sign = definite_sign(matrix.diagonal())
    if not sign:
        return False
    unscaled = (bounds or cg_condition_bounds(matrix))[0 if sign > 0 else 1]
    if not np.isfinite(unscaled):
        # a row whose off-diagonal sum reaches its diagonal (every pressure matrix): the scaled bound is infinite
        # too, so the second pass is not needed on the matrices auto_cg sees most
        return False
    scaled = condition_bound(matrix, sign)
    return scaled <= JACOBI_MAX_CONDITION and unscaled >= JACOBI_MIN_GAIN * scaled
