"""A fast drop-in for code we do not control: :func:`auto_cg` and :func:`patch_scipy`.

Simulators such as PhiFlow and FiPy call ``scipy.sparse.linalg.cg`` with a bare
matrix. :func:`auto_cg` has exactly that signature and return value, but
solves like ``linsolve.solve(method="auto")``, reading everything it needs
off the matrix (:func:`linsolve.find_grid`):

* a 5/7-point grid of either sign: a negative definite block (PhiFlow's
  ``+Laplacian``, FiPy's ``DiffusionTerm() == 0``) is solved as ``(-A, -b)``;
* decoupled rows (identity rows of obstacles, zero rows) are solved exactly
  on their own and the rest as a grid matrix with identity rows there;
* a Lagrange-bordered singular system (PhiFlow's closed box,
  ``[[A, 1], [1ᵀ, 0]]``): the multiplier follows from the null space of ``A``,
  the grid block is solved with its null space projected out, and ``[p, λ]``
  is returned as the bordered system defines it;
* the preconditioner (learned or classical multigrid on grids, Ruge-Stuben
  AMG on large other matrices) is built once and kept while the matrix's
  pattern and values are unchanged (:func:`linsolve.structure.matrix_key`:
  one checksum pass, about one SpMV); when they change on the same grid (a
  moving obstacle), the new multigrid takes over the parts of the last
  hierarchy the change did not reach; where that multigrid covers only the
  box of coupled cells (a free surface, walls), CG carries only those;
* a fixed 2D grid matrix that keeps coming back (static obstacles, a
  constant time step) is answered by a sparse factor's back-solve once the
  kept multigrid solves have paid for its factorisation
  (:class:`linsolve._auto.FactorRental`, ski rental: about 100 calls at 512^2,
  then 42 -> 31 ms a call), within :data:`FACTOR_MAX_BYTES` for all matrices kept;
* a grid matrix that plain CG solves to the tolerance asked for in fewer
  iterations than a multigrid costs (from a one-pass Gershgorin bound on
  its condition number: :func:`linsolve._auto.grid_cg_pays`) is solved by
  plain CG: on the first call with it as for one solve, on later calls as
  for a kept hierarchy (a heat step solved every frame gets its multigrid
  at the second call). Plain CG that overruns twice its bound hands over
  to the multigrid, which continues from its ``x``;
* a float32 system is solved in float32 when its tolerance is within
  float32's reach (relative threshold at least ``1e-5``), as SciPy would;
  where float32 then falls short (its rounding of the solution already
  misses the tolerance), the solve continues in float64 and, if only the
  float64 ``x`` meets the tolerance, returns it in float64 with ``info == 0``
  and a :class:`PrecisionWarning` (PhiFlow casts it back to its own dtype).
  SciPy's ``cg`` reports success there from its recurrence residual.

Whatever path is taken, ``info == 0`` means the true residual of the
returned ``x`` meets ``max(atol, rtol ||b||)`` on the system as given; when
the fast path misses it (or cannot be used), plain :func:`linsolve.cg`
continues from its result. With ``M`` given, with complex data, a
LinearOperator, or a small system, :func:`auto_cg` *is* :func:`linsolve.cg`
(SciPy's iterates).

:func:`patch_scipy` puts :func:`auto_cg` in place of SciPy's ``cg`` inside a
``with`` block.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
import warnings
from collections import OrderedDict
from typing import NamedTuple, Optional

import numpy as np
import scipy.sparse as sp

from ._result import SolveResult
from ._threads import limit_blas
from ._validation import definite_sign, make_system, solve_scaled, user_stacklevel, validated

__all__ = ["auto_cg", "auto_cg_result", "patch_scipy", "cache_info", "clear_cache", "PrecisionWarning"]


class PrecisionWarning(RuntimeWarning):
    """x is returned in float64 for a float32 system: float32 cannot meet the tolerance asked for."""


#: Matrices whose preconditioner is kept at once: a simulation alternates between a few (pressure, viscosity
#: per component, diffusion of several fields). At 4, five matrices per step evicted each other: 0 reuses in
#: 200 calls, 1.55x the time per call of four.
CACHE_SIZE = 8
#: ... and at most this many rows of preconditioned matrices together (their hierarchies hold ~200 bytes a row):
#: the oldest plans go first beyond it.
CACHE_MAX_ROWS = 8_000_000
#: A matrix whose Gershgorin bound on the condition number (:func:`linsolve._auto.cg_condition_bound`) is at
#: most this takes plain CG at once, before its structure is looked for: ``0.5 sqrt(8) ln(2 / 1e-8) = 27``
#: iterations reach rtol 1e-8, no more than a kept multigrid solve costs
#: (:data:`linsolve._auto.KEPT_MULTIGRID_CG_ITERATIONS`). Heat step ``I + 0.5 L`` on 512^2: the grid scan and
#: checksum it skips were 3.5 ms of a 32 ms call (SciPy: 23 ms).
PLAIN_CONDITION = 8.0
#: The tolerance :func:`linsolve._auto.banded_pays` weighs a banded matrix at (the plan serves every call's
#: tolerance; SciPy's default).
BANDED_RTOL = 1e-5
#: Memory the sparse factors of all kept matrices may hold together (see :class:`linsolve._auto.FactorRental`):
#: a 512^2 pressure matrix's factor holds about 200 MB.
FACTOR_MAX_BYTES = 600_000_000
#: A float32 system runs in float32 when ``max(atol, rtol ||b||) >= SINGLE_MIN_RTOL * ||b||``.
SINGLE_MIN_RTOL = 1e-5
#: ... for at most this many PCG iterations, then on in float64 from where it stands: float32 products cannot
#: resolve residuals below ~eps32 * kappa, so on stiff matrices float32 PCG crawls (a float32 two-phase box
#: at rtol 1e-5: 32^3 at a density ratio of 1e4 took 206 float32 iterations, then 10 in float64; 128^2 with a
#: cut-cell solid at 10: 119) where a multigrid converges in 5-15.
SINGLE_MAX_ITERATIONS = 30

_LOCK = threading.RLock()
_UNKNOWN = object()


def _smallest_fast() -> int:
    from ._auto import GRID_MIN_CELLS, SMALL_GRID_MIN_CELLS

    return min(min(GRID_MIN_CELLS.values()), SMALL_GRID_MIN_CELLS)


_SMALLEST_FAST = _smallest_fast()
_PLANS: "OrderedDict[tuple, _Plan]" = OrderedDict()
_STATS = {"calls": 0, "fast": 0, "plain": 0, "plain_first": 0, "builds": 0, "reuses": 0, "polished": 0,
          "factors": 0}
#: Sizes (rows) on which plain CG tried first fell short, with the Gershgorin bound it fell short on: the next
#: new matrix of that size and a like bound builds at once (a simulation's frames: only the first pays for the
#: try; a better conditioned matrix of the same size still gets plain CG). The newest last, a few kept.
_NEEDS_PRECONDITIONER: "OrderedDict[int, float]" = OrderedDict()
_NEEDS_PRECONDITIONER_SIZE = 8


class _Plan:
    """How one matrix is solved fast, built once per matrix content (see :func:`_build_plan`)."""

    __slots__ = ("kind", "method", "sign", "n_inner", "inactive", "inactive_diag", "border", "basis",
                 "basis_c", "reduced", "reduced64", "M", "setup_s", "shape", "reason", "blocks",
                 "inactive_coupling", "compact", "compact_matrix", "pending", "previous", "build_lock",
                 "kappa", "calls", "inner", "rental", "amg_labels", "caller_alias",
                 "kept_retry", "plain_solve", "border_w", "plain_hint")

    def __init__(self, kind, reason=""):
        self.kind, self.reason = kind, reason
        self.method = "cg"
        self.sign = 1
        self.n_inner = 0
        self.inactive = self.inactive_diag = self.border = self.basis = self.basis_c = None
        self.inactive_coupling = None
        self.compact = self.compact_matrix = None  # structure.CompactGrid: the plan is for A embedded there
        self.reduced = self.reduced64 = self.M = None
        self.blocks = {}
        self.setup_s = 0.0
        self.shape = None
        # pending: the preconditioner is not built yet (plain CG is tried first, see _plain_first); previous:
        # the last preconditioner of the same grid, whose hierarchy the build may take over; inner: the grid
        # block the reduced matrix will be made of
        self.pending, self.previous, self.inner = False, None, None
        self.build_lock = threading.Lock()
        self.kappa = None  # linsolve._auto.cg_condition_bound of a grid matrix without border
        self.calls = 0     # calls that met this plan (the first decides as for one solve, later ones as kept)
        self.rental = None  # a fixed 2D matrix that keeps coming back gets a sparse factor (see _weigh_factor)
        self.amg_labels = None  # closed regions of an AMG plan's matrix
        # fields that are the caller's own matrix object (no copy made): see _rebind
        self.caller_alias = ()
        # a plain plan of a non-grid matrix AMG does not pay for in one solve: looked at again when the matrix
        # comes back after plain CG needed many iterations on it (see _plan_for)
        self.kept_retry = False
        # (iterations, ln(2 / reduction)) of plain CG on this matrix, when it converged
        self.plain_solve = None
        self.border_w = None  # A^-1 c of a bordered plan whose block is regular (see _border_response)
        # (iterations, ln(2 / reduction), kappa) of plain CG on the last matrix of the same grid before this one:
        # a time loop's next matrix (an adaptive time step) is judged by what plain CG needed on its predecessor
        self.plain_hint = None


def cache_info() -> dict:
    """Counters of :func:`auto_cg`: ``calls``, ``fast`` / ``plain`` solves (``plain_first``: of the plain
    ones, grid matrices that plain CG answered because the conditioning rule said it pays), preconditioner
    ``builds``, ``reuses``, ``polished`` (plain CG finished a fast solve), ``factors`` (sparse factors built for
    a fixed matrix that kept coming back) and ``entries`` in the cache.

    Examples
    --------
    >>> import linsolve
    >>> sorted(linsolve.shim.cache_info())
    ['builds', 'calls', 'entries', 'factors', 'fast', 'plain', 'plain_first', 'polished', 'reuses']
    """
    with _LOCK:
        return {**_STATS, "entries": len(_PLANS)}


def clear_cache() -> None:
    """Forget every kept preconditioner (also those of ``solve(method="auto")``) and reset the counters."""
    from .solve import forget_last_preconditioners

    forget_last_preconditioners()
    with _LOCK:
        _PLANS.clear()
        _NEEDS_PRECONDITIONER.clear()
        for key in _STATS:
            _STATS[key] = 0


# ----------------------------------------------------------------------------- the solver

def auto_cg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None):
    """``scipy.sparse.linalg.cg``'s signature and ``(x, info)``, solved like ``solve(method="auto")``.

    Parameters
    ----------
    A : sparse matrix, ndarray or LinearOperator, shape (n, n)
        Symmetric (Hermitian), definite of either sign; a grid matrix may
        carry decoupled rows and a Lagrange border (see the module notes).
    b : ndarray, shape (n,) or (n, 1)
    x0 : ndarray or "Mb", optional
    rtol, atol : float (Python, NumPy or 0-d array)
        ``||b - A x|| <= max(atol, rtol ||b||)`` on the true residual of the
        system as given.
    maxiter : int, optional
        Iterations in all (fast path and any plain-CG finish); ``10 n`` by default.
    M : optional
        A user preconditioner: then this is exactly :func:`linsolve.cg` with it.
    callback : callable, optional
        ``callback(xk)`` once per iteration with the current iterate of the
        system as given.

    Returns
    -------
    x : ndarray
        In the dtype SciPy would return, except for a float32 system whose tolerance only a float64 ``x``
        meets (then float64, with a :class:`PrecisionWarning`).
    info : int
        As :func:`linsolve.cg`.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = -linsolve.problems.poisson((64, 64)).astype(np.float32)   # negative definite, float32
    >>> b = np.ones(A.shape[0], np.float32)
    >>> x, info = linsolve.auto_cg(A, b, rtol=np.float32(1e-4))
    >>> info, x.dtype, bool(np.linalg.norm(b - A @ x) <= 1e-4 * np.linalg.norm(b))
    (0, dtype('float32'), True)
    """
    res = auto_cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)
    return res.x, res.info


def auto_cg_result(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None) -> SolveResult:
    """:func:`auto_cg` returning a :class:`~linsolve.SolveResult`.

    ``method`` says which path ran (``"auto_cg[gmg-pcg]"``,
    ``"auto_cg[cg]"``...); ``extras`` holds ``reused`` (the kept
    preconditioner served), ``structure`` (what :func:`linsolve.find_grid`
    found), ``fast_iterations`` and ``polish_iterations``, and
    ``plain_first_iterations`` where plain CG went first and fell short.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((96, 96))
    >>> first = linsolve.shim.auto_cg_result(A, np.ones(A.shape[0]))
    >>> again = linsolve.shim.auto_cg_result(A.copy(), np.ones(A.shape[0]))
    >>> first.method, first.extras["reused"], again.extras["reused"]
    ('auto_cg[learned-pcg]', False, True)
    """
    # One BLAS thread for the whole call, set-up included: OpenBLAS threads woken by a BLAS call in the
    # set-up keep spinning and slow the single-threaded multigrid kernels that follow (64^3 dam break:
    # hierarchy 45 ms instead of 26 ms on a busy 2-core machine).
    with limit_blas():
        return solve_scaled(lambda b, x0, atol, callback: _auto_cg_result(A, b, x0, rtol=rtol, atol=atol,
                                                                           maxiter=maxiter, M=M, callback=callback),
                            b, x0, atol, callback)


def _auto_cg_result(A, b, x0, *, rtol, atol, maxiter, M, callback) -> SolveResult:
    from .krylov.cg import cg_result, cg_system

    t0 = time.perf_counter()
    with _LOCK:
        _STATS["calls"] += 1
    if M is not None:
        res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)
        return _plain(res, "user M", t0)
    system = make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback,
                         allow_complex=True)
    if system.matrix is None or system.dtype.kind == "c" or system.bnorm == 0.0:
        return _plain(cg_system(system), "no explicit real matrix" if system.bnorm else "b = 0", t0)
    if system.n < _SMALLEST_FAST and not _banded_small(system):
        # Nothing to gain below the smallest crossover: skip even the checksum (FiPy solves thousands).
        return _plain(cg_system(system), "below the multigrid crossover", t0)
    start = None  # ||b - A x0|| of a warm start
    if np.any(system.x) and system.dtype.kind == "f":
        # A warm start that already meets the tolerance (a steady state, a converged nonlinear sweep) is answered
        # by one SpMV, as SciPy answers it, before any analysis or build for a matrix it may never see again.
        start = _residual_norm(system.dense if system.dense is not None else system.matrix, system.b, system.x)
        if start <= system.tol:
            return _plain(cg_system(system), "x0 meets the tolerance", t0)
    with validated(A, system.matrix):  # checked once here; find_grid and the builders take it as it is
        plan, reused = _plan_for(system.matrix)
    _rebind(plan, system.matrix)
    first = None
    # A kept multigrid is weighed against plain CG again at every call once plain CG has been measured on the
    # matrix: a time loop's warm starts get better (FiPy's transient steps: 43 CG iterations at the first step,
    # 15 at the thirtieth, while a kept cycle stays at 4-5).
    if plan.pending or (plan.kind == "grid" and plan.plain_solve is not None and _factor_of(plan) is None):
        first = _plain_first(plan, system, start)
        if first is not None and (first.converged or first.iterations >= system.maxiter):
            with _LOCK:
                _STATS["plain_first"] += first.converged
            first.extras["structure"] = plan.shape
            return _plain(first, "plain CG costs fewer iterations than the multigrid here "
                                 "(linsolve._auto.grid_cg_pays: conditioning and tolerance)", t0)
        if first is not None:
            system.x, system.maxiter = first.x, system.maxiter - first.iterations
        if plan.pending:
            _ensure_preconditioner(plan)
    if plan.kind == "plain":
        res = _in_double_if_float32_cannot(system, cg_system(system))
        if plan.kept_retry and res.converged:
            plan.plain_solve = (res.iterations, 0.0)
        return _continued(first, _plain(res, plan.reason, t0), t0)
    with _LOCK:
        _STATS["fast"] += 1
    factored = _factor_of(plan) is not None
    res = _solve_planned(plan, system) if plan.compact is None else _solve_compact(plan, system)
    if plan.kept_retry and res.converged:
        plan.plain_solve = (res.iterations, 0.0)  # CG on a bordered system's block
    res.extras.update(reused=reused, structure=plan.shape, path=plan.kind)
    res.setup_time_s = 0.0 if reused else plan.setup_s
    if reused and res.converged:
        res.setup_time_s += _weigh_factor(plan, res.time_s, factored)
    return _continued(first, res, t0)


def _factor_of(plan: _Plan):
    return None if plan.rental is None else plan.rental.factor


def _weigh_factor(plan: _Plan, solve_s: float, factored: bool) -> float:
    """Record a kept solve of ``plan`` and build (or drop) its sparse factor; returns the seconds spent building.

    A fixed 2D grid matrix solved again and again is answered faster by a sparse factor's back-solve than by the
    multigrid once the factorisation is paid for (:class:`linsolve._auto.FactorRental`: ski rental, so never
    more than about twice the better choice in hindsight).
    """
    from ._auto import FactorRental

    if plan.kind != "grid" or plan.M is None:
        return 0.0
    if plan.rental is None:
        plan.rental = FactorRental(plan.shape, singular=plan.basis is not None or plan.border is not None,
                                   n_rows=plan.n_inner)
    rental = plan.rental
    if factored:
        rental.factored(solve_s)
        return 0.0
    if not rental.kept(solve_s, _reduced64(plan)):
        return 0.0
    with plan.build_lock:
        seconds = rental.build(_reduced64(plan))
    if rental.factor is not None:
        with _LOCK:
            held = sum(p.rental.factor.nbytes for p in _PLANS.values()
                       if p.rental is not None and p.rental.factor is not None)
            if held > FACTOR_MAX_BYTES:
                rental.factor, rental.refused = None, (f"the sparse factors kept would hold {held / 1e6:.0f} MB, "
                                                       f"more than FACTOR_MAX_BYTES")
            else:
                _STATS["factors"] += 1
    return seconds


def _banded_small(system) -> bool:
    """A system below the multigrid crossover that may be narrow enough for a banded factor, which answers a 1D
    problem of a few hundred cells far faster than CG (as many iterations as cells). Only the band is looked
    at here (one pass that stops early): the plan, kept per matrix, weighs the rest once."""
    from ._auto import narrow_band

    return narrow_band(system.matrix) is not None


def _plain_first(plan: _Plan, system, start: Optional[float] = None) -> "Optional[SolveResult]":
    """Plain CG where it beats building (or, on a repeated matrix, using) the multigrid, else None.

    :func:`linsolve._auto.grid_cg_pays` decides from the grid matrix's
    Gershgorin bound and the tolerance asked for: as for one solve on the
    first call with the matrix, as for a kept multigrid on later ones (a heat
    step solved every frame). Plain CG gets twice its iteration bound (plus
    10; rounding, or an asymmetry the bound does not see, can cost more);
    if it falls short the multigrid is built and continues from its
    ``x``, and the next new matrix of that size and a bound at least half
    as large builds at once.
    """
    import dataclasses

    from ._auto import cg_iteration_bound, grid_cg_pays
    from .krylov.cg import cg_system

    n = system.n
    with _LOCK:
        failed_at = _NEEDS_PRECONDITIONER.get(n)
    if plan.kappa is None or (failed_at is not None and plan.kappa >= 0.5 * failed_at):
        return None
    # the reduction asked of the initial residual: a warm start (x0 from the last time step) needs less
    r0 = system.bnorm
    if start is not None:  # the caller's check of the warm start measured it already
        r0 = start
    elif np.any(system.x):
        mat = system.dense if system.dense is not None else system.matrix
        r0 = _residual_norm(mat, system.b, system.x)
    rtol = min(system.tol / r0, 1.0) if r0 > 0 else 1.0
    log_reduction = float(np.log(2.0 / max(rtol, 1e-300)))
    estimate = None
    if plan.plain_solve is not None:  # measured on this very matrix: the bound over-estimates up to 2x
        its, log_then = plan.plain_solve
        estimate = its * log_reduction / log_then
    elif plan.plain_hint is not None:
        # measured on the matrix before it (the bound over-estimated a 10x coefficient jump 3x: 123 against 41,
        # and the multigrid was built at every step of an adaptive time loop, 4x SciPy's time), scaled by CG's
        # sqrt(kappa) and the reduction asked
        its, log_then, kappa_then = plan.plain_hint
        estimate = its * float(np.sqrt(plan.kappa / kappa_then)) * log_reduction / log_then
    if not grid_cg_pays(n, plan.kappa, rtol, kept=plan.calls > 1, estimate=estimate):
        return None
    budget = int(np.ceil(2.0 * cg_iteration_bound(plan.kappa, rtol))) + 10
    res = cg_system(dataclasses.replace(system, maxiter=min(budget, system.maxiter)))
    if res.converged and res.iterations > 0:
        plan.plain_solve = (res.iterations, log_reduction)
    if not res.converged and res.iterations < system.maxiter:
        with _LOCK:
            _NEEDS_PRECONDITIONER[n] = min(plan.kappa, _NEEDS_PRECONDITIONER.get(n, np.inf))
            _NEEDS_PRECONDITIONER.move_to_end(n)
            while len(_NEEDS_PRECONDITIONER) > _NEEDS_PRECONDITIONER_SIZE:
                _NEEDS_PRECONDITIONER.popitem(last=False)
    return res


def _in_double_if_float32_cannot(system, res: SolveResult) -> SolveResult:
    """Plain CG on a float32 system that stopped short of the tolerance (float32 could not get further): it goes
    on in float64, and ``x`` comes back in float64 if only that meets the tolerance, as on the fast path
    (:func:`_solve_planned`): one policy for every matrix, grid or not."""
    import dataclasses

    from .krylov.cg import cg_system

    if res.converged or system.dtype != np.float32 or system.matrix is None or res.iterations >= system.maxiter \
            or not np.all(np.isfinite(res.x)):
        return res
    mat64 = system.matrix.astype(np.float64)
    wide = dataclasses.replace(system, A=mat64, matrix=mat64, b=system.b.astype(np.float64),
                               x=np.asarray(res.x, dtype=np.float64), maxiter=system.maxiter - res.iterations,
                               dtype=np.dtype(np.float64),
                               dense=None if system.dense is None else system.dense.astype(np.float64))
    more = cg_system(wide)
    more.iterations += res.iterations
    more.residual_norms = list(res.residual_norms) + list(more.residual_norms[1:])
    more.extras["float64_iterations"] = more.iterations - res.iterations
    if not more.converged:
        if more.true_residual_norm <= res.true_residual_norm:
            more.x = more.x.astype(np.float32)
            more.true_residual_norm = _residual_norm(system.matrix, system.b, more.x)
            return more
        return res
    x32 = more.x.astype(np.float32)
    true32 = _residual_norm(system.matrix, system.b, x32)
    if true32 <= system.tol:
        more.x, more.true_residual_norm = x32, true32
        return more
    more.extras["x_dtype"] = "float64"
    more.message = _returned_in_float64(true32, system.tol)
    return more


def _returned_in_float64(true32: float, tol: float) -> str:
    """Warn that ``x`` comes back in float64 (float32 cannot meet the tolerance); the result's message."""
    # one fixed text, so that the default filter shows it once and not at every time step
    warnings.warn("auto_cg: float32 cannot meet the tolerance asked for on this system; x is returned "
                  "in float64 (its float32 rounding would not meet it; SciPy's cg reports convergence "
                  "there from its recurrence residual)", PrecisionWarning, stacklevel=user_stacklevel())
    return (f"x is returned in float64: rounded to float32 it leaves ||b - A x|| = {true32:.3e}, above the "
            f"tolerance {tol:.3e}")


def _continued(first: "Optional[SolveResult]", res: SolveResult, t0: float) -> SolveResult:
    """``res`` (which started from where plain CG tried first stopped) counted from the call's start."""
    if first is not None:
        res.continuing(first)
        res.extras["plain_first_iterations"] = first.iterations
    res.time_s = time.perf_counter() - t0
    return res


def _plain(res: SolveResult, reason: str, t0: float) -> SolveResult:
    with _LOCK:
        _STATS["plain"] += 1
    res.method = f"auto_cg[{res.method}]"
    res.extras.update(reused=False, plain_reason=reason)
    res.time_s = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------- plans

def _plan_for(matrix) -> tuple:
    from . import _auto
    from .structure import matrix_key

    key = matrix_key(matrix)
    with _LOCK:
        plan = _PLANS.get(key)
        retry = False
        if plan is not None:
            _PLANS.move_to_end(key)
            plan.calls += 1
            retry = plan.kept_retry and plan.plain_solve is not None \
                and plan.plain_solve[0] >= _auto.AMG_KEPT_MIN_CG_ITERATIONS
            if retry:
                plan.kept_retry = False
            else:
                reused = plan.kind != "plain" and not plan.pending
                _STATS["reuses"] += reused
                return plan, reused
        recent = next(reversed(_PLANS.values()), None)  # the last matrix of a time loop, most likely
    if retry:
        # The same matrix came back (fixed obstacles on a periodic domain) and plain CG needed many iterations
        # on it: AMG's set-up is now paid once for all the calls to come.
        kept = _build_plan(matrix, None, key=key, kept=True)
        if kept.kind == "plain" or kept.method == "cg":
            return plan, plan.kind != "plain"
        kept.calls = plan.calls
        with _LOCK:
            _STATS["builds"] += 1
            _PLANS[key] = kept
        return kept, False
    plan = _build_plan(matrix, recent, key=key)
    plan.calls = 1
    plan.plain_hint = _plain_hint(recent, plan)
    with _LOCK:
        _STATS["builds"] += plan.kind != "plain" and not plan.pending
        _PLANS[key] = plan
        while len(_PLANS) > CACHE_SIZE or (len(_PLANS) > 1 and sum(map(_plan_rows, _PLANS.values())) > CACHE_MAX_ROWS):
            _PLANS.popitem(last=False)
    return plan, False


def _plain_hint(recent: "_Plan | None", plan: _Plan):
    """What plain CG needed on ``recent`` (or what it knew itself), when it is a matrix of ``plan``'s grid."""
    if recent is None or recent.shape is None or recent.shape != plan.shape or plan.kappa is None:
        return None
    if recent.plain_solve is not None and recent.kappa is not None and recent.plain_solve[1] > 0:
        return (*recent.plain_solve, recent.kappa)
    return recent.plain_hint


def _plan_rows(plan: _Plan) -> int:
    return 0 if plan.reduced is None else int(plan.reduced.shape[0])


def _build_plan(matrix, recent: "_Plan | None" = None, embed: bool = True, key=None, kept: bool = False) -> _Plan:
    """Structure, reduced matrix and preconditioner of ``matrix`` (a validated CSR matrix).

    ``recent``: the plan used last; a multigrid of the same grid takes over the
    parts of its hierarchy that the change of matrix did not reach. ``key``: the matrix's
    :func:`linsolve.structure.matrix_key`, when known. ``kept``: the matrix
    came back after plain CG needed many iterations on it: AMG where no grid is found.
    """
    from . import _auto
    from .structure import closed_region_labels, find_border, find_compact_grid, find_grid, grid_nullspace

    t0 = time.perf_counter()
    n = matrix.shape[0]
    bounds = {}
    if embed:
        # One pass settles the easiest matrices before any structure is looked for: plain CG then needs fewer
        # iterations at any usual tolerance than even a kept multigrid costs (heat steps with a small step).
        bounds[1], bounds[-1] = _auto.cg_condition_bounds(matrix)
        if min(bounds.values()) <= PLAIN_CONDITION:
            return _Plan("plain", f"well conditioned (Gershgorin bound {min(bounds.values()):.3g} <= "
                                  f"{PLAIN_CONDITION:g}): plain CG beats any preconditioner")
        diag = matrix.diagonal()
        sign = definite_sign(diag)
        if sign and _auto.jacobi_pays(matrix, (bounds[1], bounds[-1])):
            # Well conditioned once the diagonal is scaled out, though not as it is (a transient step on cells
            # of very different volumes: V/dt dominates and varies 1000x): CG with the diagonal as preconditioner.
            from .precond.jacobi import jacobi

            plan = _Plan("jacobi")
            plan.sign, plan.n_inner, plan.method = sign, n, "jacobi-cg"
            plan.reduced = _reduced_matrix(matrix, sign, None)
            plan.M = jacobi(plan.reduced)
            plan.setup_s = time.perf_counter() - t0
            return _mark_aliases(plan, matrix)
        if sign and _auto.banded_pays(matrix, BANDED_RTOL, kappa=bounds[sign]):
            # A 1D problem or a strip a few cells wide: an exact banded factor (one or two PCG iterations).
            plan = _Plan("banded")
            plan.sign, plan.n_inner, plan.method = sign, n, "banded-cg"
            decoupled = (np.diff(matrix.indptr) - (diag != 0)) == 0
            if decoupled.any():
                plan.inactive = decoupled
                plan.inactive_diag = diag[decoupled].astype(np.float64)
            plan.reduced = _reduced_matrix(matrix, sign, plan.inactive)
            try:
                plan.M = _build_preconditioner(plan)
                plan.setup_s = time.perf_counter() - t0
                return _mark_aliases(plan, matrix)
            except (ValueError, TypeError):
                pass  # singular (pure Neumann) or not symmetric: CG, as SciPy's would, on the null space's complement
    grid = find_grid(matrix, key=key)
    if grid is not None:
        N = grid.n
        plan = _Plan("grid")
        plan.shape, plan.sign, plan.n_inner, plan.border = grid.shape, grid.sign, N, grid.border
        plan.inactive = grid.inactive if grid.inactive.any() else None
        if N >= _auto.GRID_MIN_CELLS.get(grid.dims, N + 1) or (
                grid.border is None and _auto.small_grid_needs_multigrid(matrix)):
            plan.method = "learned-pcg" if _auto.learned_model_for(grid.dims) else "gmg-pcg"
            if grid.border is None:
                plan.kappa = bounds[grid.sign] if grid.sign in bounds else _auto.cg_condition_bound(matrix, grid.sign)
        elif grid.border is None:
            return _Plan("plain", f"grid {grid.shape} below the multigrid crossover")
        # else: a small bordered system; CG on the reduced definite block is the robust way (plan.method "cg").
    else:
        compact = None
        if embed and n >= _auto.SMALL_GRID_MIN_CELLS and _auto.condition_bound(matrix) > _auto.GRID_CG_MAX_CONDITION:
            compact = find_compact_grid(matrix)
        if compact is not None:
            # Numbered over some cells of a grid only (a code's fluid cells): the plan of the embedded matrix.
            embedded = compact.embed(matrix)
            plan = _build_plan(embedded, recent, embed=False)
            if plan.kind == "grid":
                plan.compact, plan.compact_matrix = compact, embedded
                plan.caller_alias = ()  # it holds the embedded copy, not the caller's matrix
                plan.setup_s = time.perf_counter() - t0
                return plan
        small = n < min(_auto.AMG_MIN_ROWS, _auto.AMG_MIN_ROWS_JUMPS_2D, _auto.AMG_MIN_ROWS_HIGH_CONTRAST)
        # A Lagrange border around a block that is no grid (PhiFlow borders its periodic pressure matrix): the
        # saddle point is indefinite, its block is not; the multiplier is found as on grids (_solve_planned).
        border = find_border(matrix) if not small and matrix.diagonal()[-1] == 0 else None
        block = matrix if border is None else matrix[:n - 1, :n - 1].tocsr()
        diag = block.diagonal()
        decoupled = (np.diff(block.indptr) - (diag != 0)) == 0
        sign = definite_sign(diag[~decoupled])
        if not sign:
            return _Plan("plain", "no grid and a diagonal of mixed sign")
        pays = kept or (not small and _auto.amg_pays(block, sign))
        labels = _UNKNOWN
        if not pays and border is None:
            # A singular matrix (a pure-Neumann or periodic problem) keeps CG off its null space: a b that
            # rounding left slightly inconsistent (float32) drove plain CG's x along it to maxiter.
            labels = closed_region_labels(block, ~decoupled)
            if labels is None:
                plain = _Plan("plain", "no grid; below the AMG crossover" if small else
                                       "no grid; plain CG beats AMG here (size, conditioning)")
                plain.kept_retry = not kept and not small
                return plain
        plan = _Plan("amg")
        # (a bordered or singular system AMG does not pay for: CG on the definite part, not on the indefinite
        # saddle point, which float32 rounding breaks down on)
        plan.sign, plan.n_inner = sign, block.shape[0]
        plan.method = f"amg-cg({_auto.AMG_KIND})" if pays else "cg"
        plan.kept_retry = not pays and not kept and not small
        plan.border = border
        plan.inactive = decoupled if decoupled.any() else None
    N = plan.n_inner
    inner = matrix[:N, :N].tocsr() if N < n else matrix
    if plan.inactive is not None:
        plan.inactive_diag = inner.diagonal()[plan.inactive].astype(np.float64)
        # Entries of coupled rows in the columns of decoupled ones (a cell pinned by its row alone): the
        # reduced matrix drops them, so their known values go to the right-hand side.
        # Nonzeros in decoupled columns beyond the decoupled rows' own diagonals (a symmetric matrix has
        # none): one vectorised count before any slicing.
        to_inactive = np.count_nonzero(plan.inactive[inner.indices] & (inner.data != 0))
        if to_inactive > np.count_nonzero(plan.inactive_diag):
            coupling = inner[:, np.flatnonzero(plan.inactive)].tocsr()
            coupling = sp.diags((~plan.inactive).astype(inner.dtype)) @ coupling
            coupling.eliminate_zeros()
            plan.inactive_coupling = coupling.tocsr() if coupling.nnz else None
    if plan.kind == "amg":
        # A singular matrix of no grid (a periodic domain, a closed box): its closed regions' constants are
        # projected out as on grids; a b off by rounding (float32) otherwise drove PCG's x to overflow.
        from .structure import nullspace_basis

        if labels is _UNKNOWN:
            labels = closed_region_labels(inner, None if plan.inactive is None else ~plan.inactive)
        plan.amg_labels = labels
        if labels is not None:
            plan.basis = nullspace_basis(labels)
        refusal = _border_refusal(plan)
        if refusal:
            return _Plan("plain", refusal)
    if plan.kind == "grid" and not (plan.kappa is not None and np.isfinite(plan.kappa)):
        # (a finite Gershgorin bound: every row strictly dominant, no null space to look for)
        basis = grid_nullspace(inner, grid, sparse=True)
        if basis.shape[1]:
            plan.basis = basis
        refusal = _border_refusal(plan)
        if refusal:
            return _Plan("plain", refusal)
    previous = None
    if recent is not None and recent.kind == "grid" and recent.method == plan.method \
            and recent.shape == plan.shape:
        previous = recent.M if recent.M is not None else recent.previous  # the multigrid, never the factor
    plan.setup_s = time.perf_counter() - t0
    if plan.method != "cg" and plan.border is None and plan.basis is None and plan.inactive_coupling is None \
            and (plan.inactive_diag is None or np.all(plan.inactive_diag != 0)):
        # A definite system plain CG can answer as it is: the preconditioner (and the reduced matrix it is
        # built from) waits until plain CG, tried first, falls short (see _plain_first); singular and bordered
        # systems build at once.
        plan.pending, plan.previous, plan.inner = True, previous, inner
        return _mark_aliases(plan, matrix)
    plan.reduced = _reduced_matrix(inner, plan.sign, plan.inactive, plan.inactive_coupling is not None)
    try:
        plan.M = _build_preconditioner(plan, previous)
    except (ValueError, TypeError, ImportError) as exc:
        # Not symmetric, not an M-matrix, no model...: CG still solves it.
        return _Plan("plain", f"{plan.method} refused the matrix: {exc}")
    plan.setup_s = time.perf_counter() - t0
    return _mark_aliases(plan, matrix)


def _border_refusal(plan: _Plan) -> str:
    """Why a bordered plan cannot find its multiplier (then plain CG takes the whole system), else ``""``.

    Sets ``plan.basis_c``, the border column's coordinates on the block's null space: the multiplier makes
    ``A p = b - lam c`` consistent, so the block must be singular and the border must reach its null space.
    """
    if plan.border is None or plan.basis is None:
        return ""  # (a regular block: the multiplier comes from a Schur complement, see _border_response)
    plan.basis_c = plan.basis.T @ plan.border.column
    if not np.any(np.abs(plan.basis_c) > 1e-12 * np.abs(plan.border.column).max()):
        return "border orthogonal to the null space"
    return ""


def _border_response(plan: _Plan, M) -> np.ndarray:
    """``A^-1 c`` for a bordered plan whose block ``A`` is regular (decoupled rows included), kept per plan.

    PhiFlow borders a closed box that holds an obstacle too, and pins the obstacle's cells (identity rows the
    fluid rows still couple to): the block is then regular and its constants are no null space to find the
    multiplier in. With ``w = A^-1 c`` once, each solve is one solve of the block (``p = A^-1 b_N - lam w``)
    instead of plain CG on the saddle point (128^2: 602 iterations).
    """
    from .backends.array_api import NUMPY
    from .krylov.cg import STALL_AFTER, pcg_loop

    if plan.border_w is not None:
        return plan.border_w
    c = np.asarray(plan.border.column, dtype=np.float64)
    e_r = plan.sign * c
    fixed_c = None
    if plan.inactive is not None:
        e_r[plan.inactive] = 0.0
        diag = plan.inactive_diag
        fixed_c = np.where(diag != 0, c[plan.inactive] / np.where(diag != 0, diag, 1.0), 0.0)
        if plan.inactive_coupling is not None:
            e_r -= plan.sign * (plan.inactive_coupling @ fixed_c)
    psolve = (lambda r: np.asarray(M.matvec(r), dtype=np.float64)) if M is not None else None
    w, *_ = pcg_loop(NUMPY, _reduced64(plan).dot, psolve, e_r, np.zeros_like(e_r),
                     tol=1e-10 * float(np.linalg.norm(e_r)), maxiter=max(1000, 10 * int(np.sqrt(e_r.size))),
                     stall_after=STALL_AFTER)
    w = np.array(w, dtype=np.float64)
    if fixed_c is not None:
        w[plan.inactive] = fixed_c
    plan.border_w = w
    return w


def _mark_aliases(plan: _Plan, matrix) -> _Plan:
    """Note which of ``plan``'s matrices are ``matrix`` itself (the caller's object, kept without a copy)."""
    plan.caller_alias = tuple(name for name in ("inner", "reduced") if getattr(plan, name) is matrix)
    return plan


def _rebind(plan: _Plan, matrix) -> None:
    """Point what ``plan`` holds of a caller's matrix at this call's ``matrix`` (same content: same key).

    A caller may change its matrix in place once ``cg`` has returned (FiPy
    zeroes it for the next assembly): a plan kept by reference would then
    solve with, or build its preconditioner from, stale values. Copying every
    matrix would cost more than the checksum that finds the plan (20 ms at
    512^2); the matrix of the present call is what the key was just taken
    from, so it is the one to use until the call returns.
    """
    for name in plan.caller_alias:
        if getattr(plan, name) is not None:
            setattr(plan, name, matrix)


def _ensure_preconditioner(plan: _Plan) -> None:
    """Build a pending plan's preconditioner (once, whichever thread comes first); a refusal makes it plain."""
    with plan.build_lock:
        if not plan.pending:
            return
        t0 = time.perf_counter()
        if plan.reduced is None:
            plan.reduced = _reduced_matrix(plan.inner, plan.sign, plan.inactive)
            if plan.reduced is plan.inner and "inner" in plan.caller_alias:
                plan.caller_alias = ("reduced",)
        plan.inner = None
        try:
            plan.M = _build_preconditioner(plan, plan.previous)
        except (ValueError, TypeError, ImportError) as exc:
            plan.kind, plan.reason = "plain", f"{plan.method} refused the matrix: {exc}"
        plan.previous = None
        plan.setup_s += time.perf_counter() - t0
        plan.pending = False
    with _LOCK:
        _STATS["builds"] += plan.kind != "plain"


def _reduced_matrix(inner, sign: int, inactive, coupled_columns: bool = False) -> sp.csr_matrix:
    """``sign * inner`` with identity rows and columns on the decoupled cells (no copy when it already is)."""
    if inactive is None:
        return inner if sign > 0 else (-inner).tocsr()
    diag = inner.diagonal()
    if sign > 0 and np.all(diag[inactive] == 1) and not coupled_columns:
        return inner
    if not coupled_columns:
        # Decoupled rows hold their diagonal alone (or nothing: a zero row) and no coupled row reaches their
        # columns: set those diagonals to 1 in a copy instead of two sparse products (5 of 30 ms a frame on a
        # 256^2 cut-cell sequence; every new matrix of a negative definite code, PhiFlow's and FiPy's).
        rows = np.flatnonzero(inactive)
        counts = np.diff(inner.indptr)[rows]
        single = rows[counts == 1]
        if np.all(counts <= 1) and np.all(inner.indices[inner.indptr[single]] == single):
            out = inner.copy() if sign > 0 else (-inner).tocsr()
            out.data[out.indptr[single]] = 1.0
            empty = rows[counts == 0]
            if empty.size:
                out = (out + sp.csr_matrix((np.ones(empty.size, out.dtype), (empty, empty)),
                                           shape=out.shape)).tocsr()
            out.sort_indices()
            return out
    keep = sp.diags((~inactive).astype(inner.dtype))
    out = (keep @ (sign * inner) @ keep + sp.diags(inactive.astype(inner.dtype))).tocsr()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def _build_preconditioner(plan: _Plan, previous=None, precision=None):
    if plan.method == "cg":
        return None
    if plan.kind == "banded":
        from ._auto import BANDED_MAX_BANDWIDTH
        from .precond.banded import banded_cholesky

        return banded_cholesky(plan.reduced, max_bandwidth=BANDED_MAX_BANDWIDTH)
    if plan.kind == "amg":
        from . import _auto
        from .precond.amg import build_amg

        # the plan projects the closed regions' constants itself (plan.basis), found once
        return build_amg(plan.reduced, kind=_auto.AMG_KIND, nullspace_labels=plan.amg_labels)
    from .precond.multigrid import fast_learned, geometric_mg

    chosen = {} if precision is None else {"precision": precision}
    with validated(plan.reduced, plan.reduced):  # built here from the validated matrix
        if plan.method == "learned-pcg":
            return fast_learned(plan.reduced, grid_shape=plan.shape, previous=previous, **chosen)
        return geometric_mg(plan.reduced, grid_shape=plan.shape, previous=previous, **chosen)


# ----------------------------------------------------------------------------- one solve

def _solve_planned(plan: _Plan, system) -> SolveResult:
    from .backends.array_api import NUMPY
    from .krylov.cg import STAGNATION_MESSAGE, STALL_AFTER, cg_system, pcg_loop

    b, x0, n, dtype = system.b, system.x, system.n, system.dtype
    N, sign, inactive = plan.n_inner, plan.sign, plan.inactive
    single = dtype == np.float32 and system.tol >= SINGLE_MIN_RTOL * system.bnorm
    work = np.float32 if single else np.float64
    A_r = plan.reduced if plan.reduced.dtype == work else _reduced64(plan)

    f = b[:N].astype(np.float64)
    lam = 0.0
    schur = plan.border is not None and plan.basis is None
    if plan.border is not None and not schur:
        # Consistency of A p = b_N - lam c on the null space fixes the multiplier (least squares when
        # the grid has several closed regions).
        lam = float(plan.basis_c @ (plan.basis.T @ f)) / float(plan.basis_c @ plan.basis_c)
        f -= lam * plan.border.column
    b_r = sign * f
    x_r = x0[:N].astype(np.float64)
    fixed = None
    if inactive is not None:
        b_r[inactive] = 0.0
        x_r[inactive] = 0.0
        fixed = np.where(plan.inactive_diag != 0, f[inactive] / np.where(plan.inactive_diag != 0,
                                                                          plan.inactive_diag, 1.0),
                         x0[:N][inactive])
        if plan.inactive_coupling is not None:
            b_r -= sign * (plan.inactive_coupling @ fixed)
    # ||b - A x|| >= ||b's part in A's null space|| for every x (the constants of closed regions, zero rows)
    unreachable_sq = 0.0
    if inactive is not None:
        stuck = f[inactive][plan.inactive_diag == 0]
        unreachable_sq += float(stuck @ stuck)
    if plan.basis is not None:
        coords = plan.basis.T @ b_r
        unreachable_sq += float(coords @ coords)
        b_r -= plan.basis @ coords
    b_r64, x_r64 = b_r, x_r

    def assemble(y, out_dtype=dtype):
        x = np.empty(n, dtype=out_dtype)
        p = np.asarray(y, dtype=np.float64)
        if fixed is not None:
            p = p.copy()
            p[inactive] = fixed
        if schur:
            # p(lam) = A^-1 (b_N - lam c) = p - lam w; the border row r^T p(lam) + d lam = beta fixes lam
            r = plan.border.row
            denom = float(r @ border_w) - plan.border.corner
            lam_now = (float(r @ p) - float(b[N])) / denom if denom != 0 else 0.0
            p = p - lam_now * border_w
            x[N] = lam_now
        elif plan.border is not None:
            # The null-space component that satisfies the border row: c^T p + d lam = beta.
            c = plan.border.column
            gap = float(b[N]) - float(c @ p) - plan.border.corner * lam
            p = p + plan.basis @ (plan.basis_c * (gap / float(plan.basis_c @ plan.basis_c)))
            x[N] = lam
        x[:N] = p
        return x

    factor = _factor_of(plan)  # the sparse factor of a fixed matrix that kept coming back, else the multigrid
    M = factor if factor is not None else plan.M
    basis = plan.basis
    border_w = _border_response(plan, M) if schur else None
    user_cb = system.callback
    t0 = time.perf_counter()

    def krylov(work, A_r, b_r, x_r, maxiter):
        """PCG on the reduced system in precision ``work``: (y, info, iterations, norms, message, coupled rows)."""
        b_r, x_r = b_r.astype(work), x_r.astype(work)
        block = _coupled_block(plan, A_r) if factor is None else None
        if block is not None and np.any(b_r) and not np.any(b_r[block.outside]):
            # the multigrid covers the coupled box only: CG carries those cells, the rest stay 0 (decoupled, b = 0)
            rows, op, basis_rows = block.rows, block.operator, block.basis

            def on_grid(y_rows):
                y = np.zeros(N, work)
                y[rows] = y_rows
                return y

            def psolve_rows(r):
                z = op.matvec(r)
                if basis_rows is not None:
                    z = z - basis_rows @ (basis_rows.T @ z)
                return np.asarray(z, dtype=work)

            cb_rows = (lambda y_rows: user_cb(assemble(on_grid(y_rows)))) if user_cb is not None else None
            y_rows, info, its, norms, _, message = pcg_loop(NUMPY, block.matrix.dot, psolve_rows, b_r[rows],
                                                             x_r[rows], tol=system.tol, maxiter=maxiter,
                                                             callback=cb_rows, stall_after=STALL_AFTER)
            return on_grid(y_rows), info, its, norms, message, int(rows.size)
        if not np.any(b_r):
            return np.zeros(N, work), 0, 0, [0.0], "reduced right-hand side is zero", None

        def psolve(r):
            z = M.matvec(r) if M is not None else r
            if basis is not None:
                z = z - basis @ (basis.T @ z)
            return np.asarray(z, dtype=work)

        cb = (lambda y: user_cb(assemble(y))) if user_cb is not None else None
        use_psolve = psolve if (M is not None or basis is not None) else None
        y, info, its, norms, _, message = pcg_loop(NUMPY, A_r.dot, use_psolve, b_r, x_r, tol=system.tol,
                                                    maxiter=maxiter, callback=cb, stall_after=STALL_AFTER)
        return y, info, its, norms, message, None

    first_budget = min(system.maxiter, SINGLE_MAX_ITERATIONS) if work == np.float32 else system.maxiter
    y, info, its, norms, message, coupled_rows = krylov(work, A_r, b_r64, x_r64, first_budget)
    if info < 0 and its < system.maxiter and plan.kind == "grid" and getattr(M, "precision", None) == "single":
        # float32 rounding left the cycle indefinite (coefficient jumps of 1e5-1e6): the plan keeps a
        # double-precision one from now on, and PCG goes on from here with it
        plan.M = M = _build_preconditioner(plan, precision="double")
        plan.blocks.clear()
        budget = max(first_budget - its, 0) if work == np.float32 else system.maxiter - its
        y2, info, its2, norms2, message, coupled_rows = krylov(work, A_r, b_r64, np.asarray(y, dtype=np.float64),
                                                               budget)
        y, its, norms = y2, its + its2, list(norms) + list(norms2[1:])
    x = assemble(y)
    mat = system.dense if system.dense is not None else system.matrix
    true_norm = _residual_norm(mat, b, x)
    extras = {"fast_iterations": its, "polish_iterations": 0, "multiplier": lam if plan.border else None,
              "coupled_rows": coupled_rows, "x_dtype": str(np.dtype(dtype))}
    name = f"auto_cg[{plan.method if factor is None else 'factor-cg'}]"
    if true_norm > system.tol and dtype == np.float32 and its < system.maxiter:
        # A float32 system whose tolerance float32 cannot reach (the solution rounded to float32 leaves a
        # larger residual; PhiFlow's default rtol = atol = 1e-5 at 256^2): go on in float64 from here, and
        # return x in float64 if only that meets the tolerance, rather than a false "converged" (SciPy) or
        # a failure the caller's simulation dies of.
        y64, info64, its64, norms64, message64, rows64 = krylov(np.float64, _reduced64(plan), b_r64,
                                                                 np.asarray(y, dtype=np.float64),
                                                                 system.maxiter - its)
        x64 = assemble(y64, np.float64)
        true64 = _residual_norm(mat, b, x64)
        x32 = x64.astype(np.float32)
        true32 = _residual_norm(mat, b, x32)
        its, norms = its + its64, list(norms) + list(norms64[1:])
        extras.update(fast_iterations=its, coupled_rows=rows64, float64_iterations=its64)
        if true64 > system.tol or true32 <= system.tol:  # float32 suffices, or float64 did not help either
            x, true_norm, message = x32, true32, message64
        else:
            x, true_norm = x64, true64
            extras["x_dtype"] = "float64"
            message = _returned_in_float64(true32, system.tol)
    if true_norm <= system.tol:
        return SolveResult(x=x, converged=True, info=0, iterations=its, residual_norms=norms, method=name,
                           time_s=time.perf_counter() - t0, true_residual_norm=true_norm, b_norm=system.bnorm,
                           residual_kind="recurrence",
                           message=message if message.startswith("converged") else
                           f"converged (true residual checked; {message})",
                           extras=extras)
    if STAGNATION_MESSAGE in message:
        # The working precision cannot represent a better x (float32 on a stiff matrix): plain CG cannot
        # either, it would only run to maxiter. Said as it is.
        return SolveResult(x=x, converged=False, info=max(its, 1), iterations=its, residual_norms=norms, method=name,
                           time_s=time.perf_counter() - t0, true_residual_norm=true_norm, b_norm=system.bnorm,
                           residual_kind="recurrence", message=message, extras=extras)
    unreachable = float(np.sqrt(unreachable_sq))
    if unreachable > system.tol:
        # No x meets the tolerance: plain CG would only drift away from the least-squares answer for maxiter
        # iterations (to |x| ~ 1e21 on a closed box). Said as it is.
        return SolveResult(x=x, converged=False, info=max(its, 1), iterations=its, residual_norms=norms,
                           method=name, time_s=time.perf_counter() - t0, true_residual_norm=true_norm,
                           b_norm=system.bnorm, residual_kind="recurrence", extras=extras,
                           message=f"not converged: b has a part of norm {unreachable:.3e} in A's null space "
                                   f"(closed fluid regions or zero rows), above the tolerance {system.tol:.3e}: no x "
                                   f"can meet it; x solves the consistent part")
    # The fast path fell short (a breakdown, a drifted recurrence...): plain CG continues from its answer,
    # on the system as given.
    left = system.maxiter - its
    if left <= 0:  # maxiter is a bound on the whole call (SciPy's): no iteration left to polish with
        return SolveResult(x=x, converged=False, info=max(its, 1), iterations=its, residual_norms=norms,
                           method=name, time_s=time.perf_counter() - t0, true_residual_norm=true_norm,
                           b_norm=system.bnorm, residual_kind="recurrence", message=message, extras=extras)
    with _LOCK:
        _STATS["polished"] += 1
    system.x, system.maxiter = x, left
    res = cg_system(system)
    res.iterations += its
    if res.info > 0:
        res.info = res.iterations
    res.method = f"{name}->cg"
    res.residual_norms = list(norms) + list(res.residual_norms[1:])
    extras.update(polish_iterations=res.iterations - its, fast_message=message)
    res.extras.update(extras)
    if not res.converged and not res.true_residual_norm <= true_norm:
        # Plain CG drifts away on an inconsistent system (b with a part in A's null space): its x grew to
        # ~1e21 where the fast path's stood at a small residual. The better x is returned, said as it is.
        res.x, res.true_residual_norm, res.info = x, true_norm, res.iterations
        res.message = (f"not converged: plain CG after the fast path left ||b - A x|| at "
                       f"{res.true_residual_norm:.3e} or worse (b may have a part in A's null space, which no x "
                       f"can meet); the fast path's x is returned")
    return res


def _solve_compact(plan: _Plan, system) -> SolveResult:
    """The system embedded in the plan's grid (:class:`linsolve.structure.CompactGrid`), answered for A itself."""
    import dataclasses

    from scipy.sparse.linalg import aslinearoperator

    compact, embedded = plan.compact, plan.compact_matrix.astype(system.dtype, copy=False)
    cells = compact.cells
    callback = system.callback
    inner = dataclasses.replace(system, A=aslinearoperator(embedded), matrix=embedded, dense=None,
                                b=compact.expand(system.b), x=compact.expand(system.x),
                                callback=None if callback is None else (lambda xk: callback(xk[cells])))
    from .solve import _judged_on

    res = _solve_planned(plan, inner)
    res.x = np.asarray(res.x)[cells]
    res.extras["compact_grid"] = compact.shape
    return _judged_on(res, system.dense if system.dense is not None else system.matrix, system.b, system.tol)


def _residual_norm(mat, b, x) -> float:
    """``||b - A x||`` of the data as given, single precision evaluated in double (see ``true_residual``)."""
    from .backends.array_api import NUMPY

    return NUMPY.true_residual(mat.dot, b, x)[1]


class _Block(NamedTuple):
    rows: np.ndarray
    matrix: sp.csr_matrix
    operator: object
    basis: Optional[np.ndarray]
    outside: np.ndarray


def _coupled_block(plan: _Plan, A_r) -> "Optional[_Block]":
    """The coupled box of ``A_r`` that a cropped multigrid covers (kept per dtype), or None."""
    coupled = getattr(plan.M, "coupled_block", None)
    block = coupled() if coupled is not None else None
    if block is None:
        return None
    key = A_r.dtype.str
    if key not in plan.blocks:
        from .kernels.spmv import csr_principal_block

        rows = block.rows
        ptr, idx, data, closed = csr_principal_block(A_r.indptr, A_r.indices, A_r.data, rows, A_r.shape[0])
        outside = np.ones(A_r.shape[0], bool)
        outside[rows] = False
        basis = None if plan.basis is None else plan.basis[rows]
        if plan.basis is not None and plan.basis[outside].nnz:
            closed = False                 # a null-space vector reaches outside the box: keep the whole system
        plan.blocks[key] = _Block(rows, sp.csr_matrix((data, idx, ptr), shape=(rows.size, rows.size)),
                                  block.operator, basis, outside) if closed else None
    return plan.blocks[key]


def _reduced64(plan: _Plan) -> sp.csr_matrix:
    if plan.reduced64 is None:
        plan.reduced64 = plan.reduced.astype(np.float64)
    return plan.reduced64


# ----------------------------------------------------------------------------- patching SciPy

_PATCH_LOCK = threading.Lock()
_PATCH_DEPTH = 0
_ORIGINAL = None
_PATCHED: list = []
_MODULES_AT_ENTRY: set = set()


def _replacement(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None):
    return auto_cg(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)


_replacement.__name__ = _replacement.__qualname__ = "auto_cg"
_replacement.__doc__ = "linsolve.auto_cg standing in for scipy.sparse.linalg.cg (see linsolve.patch_scipy)."


def _bindings(target, name_only=None, full_scan=None) -> list:
    """``(owner, name)`` of the module-level and class-level bindings of ``target`` in loaded modules.

    Module attributes catch ``from scipy.sparse.linalg import cg`` (only
    attributes called ``name_only`` when given, so a user's ``original =
    sla.cg`` stays what it is); in those modules, class attributes catch a
    ``staticmethod(cg)`` bound at class definition (FiPy's
    ``LinearCGSolver.solveFnc``). This module's own references are skipped.
    ``full_scan(module)``: whether a module is searched under every name
    even when ``name_only`` is given (modules imported inside the block).
    A lookup by name costs nothing; reading every attribute of a thousand
    loaded modules costs milliseconds.
    """
    found = []
    this = sys.modules[__name__]
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or module is this:
            continue
        if name_only is not None and not (full_scan is not None and full_scan(module)):
            names = [name_only] if namespace.get(name_only) is target else []
        else:
            names = [name for name, value in list(namespace.items()) if value is target]
        if not names:
            continue
        found += [(module, name) for name in names]
        mod_name = getattr(module, "__name__", None)
        for value in list(namespace.values()):
            if isinstance(value, type) and value.__module__ == mod_name:
                for attr, member in list(vars(value).items()):
                    if isinstance(member, staticmethod) and member.__func__ is target:
                        found.append((value, attr))
    return found


def _swap(old, new, name_only=None, full_scan=None, extra=()) -> list:
    swapped = []
    for owner, name in list(_bindings(old, name_only, full_scan)) + list(extra):
        current = vars(owner).get(name)
        if current is None or (current.__func__ if isinstance(current, staticmethod) else current) is not old:
            continue
        try:
            setattr(owner, name, staticmethod(new) if isinstance(current, staticmethod) else new)
        except (AttributeError, TypeError):  # pragma: no cover - read-only namespaces
            continue
        swapped.append((owner, name))
    return swapped


@contextlib.contextmanager
def patch_scipy():
    """Inside the block, ``scipy.sparse.linalg.cg`` is :func:`auto_cg`; restored on exit, even on error.

    Replaced: the attribute of ``scipy.sparse.linalg`` (what PhiFlow looks up
    at every solve) and every other binding of SciPy's ``cg`` function in
    modules already loaded: ``from scipy.sparse.linalg import cg`` at module
    level (attributes named ``cg``) and, in those modules,
    ``staticmethod(cg)`` class attributes (FiPy's ``LinearCGSolver``). Modules imported inside the block bind the
    replacement; they are switched back on exit too. Blocks nest (and may
    be entered from several threads): SciPy's ``cg`` comes back when the
    outermost block exits. What a module keeps inside the block in other
    places (a dict of solvers, a ``functools.partial``, a default argument,
    a plain function-valued class attribute) is not found again and keeps
    :func:`auto_cg` after the block, as with any monkeypatching: import such
    a module before entering, or call :func:`auto_cg` yourself.

    Examples
    --------
    >>> import numpy as np, scipy.sparse.linalg as sla, linsolve
    >>> original = sla.cg
    >>> with linsolve.patch_scipy():
    ...     x, info = sla.cg(-linsolve.problems.poisson((64, 64)), -np.ones(4096))
    ...     sla.cg.__name__
    'auto_cg'
    >>> info, sla.cg is original
    (0, True)
    """
    _enter()
    try:
        yield
    finally:
        _exit()


def _enter() -> None:
    global _PATCH_DEPTH, _ORIGINAL
    import scipy.sparse.linalg as sla

    with _PATCH_LOCK:
        _PATCH_DEPTH += 1
        if _PATCH_DEPTH > 1:
            return
        _ORIGINAL = sla.cg
        _PATCHED[:] = _swap(_ORIGINAL, _replacement, "cg")
        _MODULES_AT_ENTRY.clear()
        _MODULES_AT_ENTRY.update(id(m) for m in list(sys.modules.values()))


def _exit() -> None:
    global _PATCH_DEPTH, _ORIGINAL
    with _PATCH_LOCK:
        _PATCH_DEPTH -= 1
        if _PATCH_DEPTH > 0:
            return
        # Everything bound to the replacement goes back: what the entry swapped, any module's ``cg``, and
        # every binding in modules imported inside the block (searched in full).
        _swap(_replacement, _ORIGINAL, "cg", full_scan=lambda m: id(m) not in _MODULES_AT_ENTRY, extra=_PATCHED)
        _PATCHED.clear()
        _MODULES_AT_ENTRY.clear()
        _ORIGINAL = None


def patched() -> bool:
    """True while a :func:`patch_scipy` block is active (in any thread)."""
    return _PATCH_DEPTH > 0
