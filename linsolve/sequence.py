"""``SequenceSolver``: the plug-in that sits inside a simulation loop and learns across solves.

A simulation solves ``A_t x_t = b_t`` every frame with slowly changing data.
:class:`SequenceSolver` keeps what one solve can teach the next:

* the method: by default ``"auto"``, decided once per matrix
  (:func:`linsolve.solve`'s rule: the learned or classical multigrid on grid
  matrices, found from the pattern alone, plain CG on small systems, AMG on
  large other ones);
* the preconditioner (the multigrid V-cycle of the grid methods, the AMG
  hierarchy of ``"amg-cg"``), reused while ``A`` is unchanged: "unchanged"
  means the same :func:`linsolve.structure.matrix_key` (shape, nnz, dtype and
  a checksum of ``indptr``, ``indices`` and ``data``: one pass, about one
  SpMV, never a guess from object identity, so an in-place edit of ``A.data``
  is always noticed);
* a warm start from the previous solution (used only when it beats ``x0 = 0``);
* online tuning of one solver parameter (SOR/SSOR ``omega``) with a
  :mod:`linsolve.tuning` tuner that observes each solve's iteration count;
* per-call statistics (:attr:`SequenceSolver.stats`) and ``save``/``load`` of
  the learned state, so a restarted simulation continues where it stopped.
"""
from __future__ import annotations

import copy
import inspect
import json
import numbers
import os
import time
import warnings
from typing import Any, Dict, List, Optional

import numpy as np

from ._grid import check_cell_types, check_rhs_matches_cells, fluid_mask
from ._io import atomic_write_json
from ._registry import GRID_HINTS, METHODS, available_methods
from ._result import SolveResult
from ._validation import as_sparse_matrix, as_vector, check_maxiter, check_tolerances, validated

__all__ = ["SequenceSolver", "SequenceCore", "matrix_fingerprint"]

_FORMAT = "linsolve.SequenceSolver"
_VERSION = 1
_GRID_OPTIONS = GRID_HINTS
_STAT_KEYS = {
    "call": int, "iterations": int, "seconds": float, "solve_seconds": float, "setup_seconds": float,
    "param": (float, int, type(None)), "param_name": (str, type(None)), "method": str, "converged": bool,
    "info": int, "relative_residual": (float, int, type(None)), "warm_start": bool, "hierarchy_reused": bool,
    "amg_setup": bool, "context": (float, int, type(None)), "cost": (float, type(None)), "hierarchy_updated": bool,
}
#: Fields added after version 1 files were written, and their value when such a file is read.
_STAT_DEFAULTS = {"hierarchy_updated": False}


def matrix_fingerprint(A) -> tuple:
    """Exact identity of a CSR matrix's content: :func:`linsolve.structure.matrix_key`.

    Two matrices with the same fingerprint have the same shape, dtype,
    sparsity pattern and values (up to a 64-bit checksum collision). One pass
    over ``indptr``, ``indices`` and ``data`` without copying them.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.sequence import matrix_fingerprint
    >>> A = linsolve.problems.poisson((8, 8))
    >>> B = A.copy(); B.data[0] += 1e-12
    >>> matrix_fingerprint(A) == matrix_fingerprint(A.copy()), matrix_fingerprint(A) == matrix_fingerprint(B)
    (True, False)
    """
    from .structure import matrix_key

    return matrix_key(A)


def _accepts_matrix(tuner) -> bool:
    try:
        return "A" in inspect.signature(tuner.suggest).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


class SequenceCore:
    """What every sequence solver shares: tuner calls, the cost of a failed solve, the warm-start rule, stats.

    :class:`SequenceSolver` and the PETSc sequence solvers
    (:class:`~linsolve.backends.petsc.PETScSequenceSolver`,
    :class:`~linsolve.backends.petsc.DMDAPressureSolver`) are built on it, so a
    tuner sees the same costs whichever backend solves:

    * :meth:`suggest`: the tuner's value for this call (a contextual tuner
      called without a context gets the middle of ``context_range``, with one
      warning; a tuner whose ``suggest`` takes ``A`` gets the matrix);
    * :meth:`observe`: the cost fed back, the iteration count of a converged
      solve, and for a failed one (breakdown or ``maxiter``) at least twice
      the most any converged call needed, so failing never looks cheap;
    * :meth:`warm_start_helps`: a previous solution is used as ``x0`` only
      when ``||b - A x_prev|| < ||b||``;
    * :meth:`record`: one :attr:`stats` entry per call, numbered.

    Examples
    --------
    >>> from linsolve.sequence import SequenceCore
    >>> core = SequenceCore()
    >>> core.observe(10, True), core.observe(3, False)    # a failure costs at least 2x the best
    (10.0, 20.0)
    """

    def __init__(self, tuner=None, context_range=(0.0, 1.0)):
        self.tuner = tuner
        self._context_range = context_range
        self._tuner_takes_matrix = tuner is not None and _accepts_matrix(tuner)
        self._warned_context = False
        self._max_converged_iterations = 0
        self.stats: List[Dict[str, Any]] = []

    def suggest(self, context=None, A=None, *, _stacklevel: int = 2) -> tuple:
        """``(value or None, context used)`` for this call."""
        if self.tuner is None:
            return None, context
        ctx = context
        if ctx is None and getattr(self.tuner, "contextual", False):
            lo, hi = self._context_range
            ctx = 0.5 * (float(lo) + float(hi))
            if not self._warned_context:
                warnings.warn(f"contextual tuner {type(self.tuner).__name__} called without context; "
                              f"using the constant context {ctx} (pass solve(A, b, context=...))",
                              UserWarning, stacklevel=_stacklevel)
                self._warned_context = True
        value = self.tuner.suggest(ctx, A=A) if self._tuner_takes_matrix else self.tuner.suggest(ctx)
        if isinstance(value, np.generic):
            value = value.item()
        return value, ctx

    def observe(self, iterations, converged: bool) -> Optional[float]:
        """Feed this call's cost to the tuner (see the class notes) and return it (``None``: nothing fed)."""
        if converged and int(iterations) == 0:
            # Nothing was solved (b = 0, or the warm start already met the tolerance): the value drawn was not
            # tried, so its suggestion lapses (as a new suggest() lets it); a cost of 0 credited it with a win.
            return None
        if converged:
            cost = float(iterations)
            self._max_converged_iterations = max(self._max_converged_iterations, int(iterations))
        else:
            # A failed solve (breakdown or maxiter) must never look cheap to the tuner.
            cost = float(max(iterations, 2 * self._max_converged_iterations, 1))
        if self.tuner is not None:
            self.tuner.observe(cost)
        return cost

    @staticmethod
    def warm_start_helps(residual_norm: float, b_norm: float) -> bool:
        """Whether the previous solution, with residual ``residual_norm``, is a better start than zero."""
        return bool(residual_norm < b_norm)

    def record(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        """Append ``entry`` (numbered ``call``) to :attr:`stats` and return it."""
        entry = {"call": len(self.stats), **entry}
        self.stats.append(entry)
        return entry


def _at_precision_floor(res) -> bool:
    """Whether a solve stopped because its working precision cannot represent a better x (float32 on a stiff
    matrix): a fallback method in the same precision only spends its time reaching the same floor."""
    from .krylov.cg import STAGNATION_MESSAGE

    return STAGNATION_MESSAGE in str(getattr(res, "message", ""))


class SequenceSolver(SequenceCore):
    """Solve a sequence of related SPD systems, learning across calls.

    Parameters
    ----------
    method : str
        Any :func:`linsolve.solve` method (``"auto"``, ``"ssor-cg"``, ``"sor"``,
        ``"cg"``, ``"amg-cg"``, ``"gmg-pcg"``, ``"learned-pcg"``, ``"dcdm"``,
        ...). ``"auto"`` (the default) decides once per matrix, as
        :func:`linsolve.solve` does, and keeps the preconditioner it builds.
    tuner : str, tuner object or None
        ``"chebcb"``, ``"binned"``, ``"tsallis"``, ``"spectral"`` (built by
        :func:`linsolve.tuning.make_tuner` with ``arms``, ``context_range``,
        ``seed``), an object with ``suggest``/``observe``, or ``None`` (no
        tuning). Methods without a default tuned parameter (everything but
        ``"sor"``/``"ssor-cg"``) need ``param=``; for them the *default*
        ``tuner="chebcb"`` is simply switched off (see :attr:`tuner_note`),
        any other tuner without ``param`` raises ``ValueError``.
    rtol : float
        Relative tolerance of every solve (true residual, see :func:`linsolve.solve`).
    warm_start : bool
        Start from the previous solution when its residual is below ``||b||``
        (on a pressure grid its entries on non-fluid cells are zeroed first).
    atol, maxiter
        As in :func:`linsolve.solve`.
    param : str, optional
        Name of the method option the tuner sets (``"omega"`` for SOR methods).
    arms : sequence of numbers, optional
        Candidate values for a tuner built by name (default: the ω grid
        1.0..1.95 for ``omega``; required for any other ``param``).
    context_range : (float, float)
        Context range of contextual tuners (``"chebcb"``, ``"binned"``).
        Calls without a context use its midpoint (one warning).
    seed : int
        Seed of a tuner built by name.
    reuse_hierarchy : bool
        Keep the preconditioner of ``"amg-cg"``, ``"gmg-pcg"`` and
        ``"learned-pcg"`` (also when ``"auto"`` chose them) while ``A`` (and
        the method options) are unchanged.
    fallback : str or None
        Method to finish with, from the last iterate, when a solve does not
        converge (default ``"amg-cg"``, or ``"cg"`` when ``method="amg-cg"``);
        ``None`` returns the non-converged result as is. ``maxiter`` bounds
        each attempt, so a solve that stopped at ``maxiter`` can still be
        finished (the record's ``iterations`` counts both).
    **options
        Fixed method options passed to every solve (``amg_kind="rs"``,
        ``omega=1.5`` when not tuned, ...).

    Attributes
    ----------
    stats : list of dict
        One entry per :meth:`solve` call: ``call``, ``iterations``,
        ``seconds`` (the whole call), ``solve_seconds``, ``setup_seconds``,
        ``param_name``, ``param`` (value chosen, or None), ``method`` (after
        fallback, e.g. ``"ssor-cg->amg-cg(sa)"``), ``converged``, ``info``,
        ``relative_residual``, ``warm_start`` (used?), ``hierarchy_reused``
        (a kept preconditioner served), ``hierarchy_updated`` (the matrix
        changed and the new multigrid hierarchy took over unchanged parts of
        the last one), ``amg_setup`` (an AMG hierarchy was built),
        ``context``, ``cost`` (fed to the tuner; ``None`` where nothing was solved: b = 0 or a warm
        start that met the tolerance, whose value is then not fed back).
    amg_setups : int
        Number of AMG hierarchies built so far.
    setups : int
        Number of preconditioners (AMG or multigrid) built so far.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> solver = linsolve.SequenceSolver(rtol=1e-8)             # method="auto"
    >>> A = linsolve.problems.poisson((96, 96))
    >>> rng = np.random.default_rng(0)
    >>> for frame in range(3):
    ...     res = solver.solve(A, rng.standard_normal(A.shape[0]))
    >>> res.method, solver.setups, [s["hierarchy_reused"] for s in solver.stats]
    ('learned-pcg', 1, [False, True, True])
    """

    def __init__(self, method="auto", tuner="chebcb", rtol=1e-6, warm_start=True, *, atol=0.0,
                 maxiter=None, param=None, arms=None, context_range=(0.0, 1.0), seed=0,
                 reuse_hierarchy=True, fallback="auto", **options):
        if not isinstance(method, str):
            raise TypeError(f"method must be a string, got {type(method).__name__}")
        if method not in available_methods():
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(available_methods())}")
        self.method = method
        self.rtol, self.atol = check_tolerances(rtol, atol)
        if maxiter is not None:
            check_maxiter(maxiter, 1)
        self.maxiter = maxiter
        self.warm_start = bool(warm_start)
        self.reuse_hierarchy = bool(reuse_hierarchy)
        if fallback == "auto":
            fallback = "cg" if method == "amg-cg" else "amg-cg"
        if fallback is not None and (not isinstance(fallback, str) or fallback not in available_methods()):
            raise ValueError(f"fallback must be None or a method name, got {fallback!r}")
        self.fallback = fallback if fallback != method else None
        self.options = dict(options)
        self.tuner_note = ""
        if param is not None and not isinstance(param, str):
            raise TypeError(f"param must be an option name (str), got {type(param).__name__}")
        if isinstance(tuner, str):
            from .tuning import TUNERS, _ALIASES

            if _ALIASES.get(tuner.strip().lower(), tuner.strip().lower()) not in TUNERS:
                raise ValueError(f"unknown tuner {tuner!r}; choose one of {sorted(TUNERS)}")
        if tuner is not None and param is None:
            param = METHODS[method].param if method in METHODS else None
            if param is None:
                if isinstance(tuner, str) and tuner == "chebcb":
                    # The documented default tuner has nothing to tune here.
                    self.tuner_note = f"no tuning: method {method!r} has no default parameter (pass param=)"
                    tuner = None
                else:
                    raise ValueError(f"method {method!r} has no default tuned parameter: pass param='name' "
                                     f"(the method option the tuner sets) or tuner=None")
        if tuner is None:
            param = None
        if param is not None and param in self.options:
            raise ValueError(f"{param!r} is tuned; do not also pass it as a fixed option")
        for key in ("x0", "M", "method", "rtol", "atol", "maxiter"):
            if key in self.options or key == param:
                raise ValueError(f"{key!r} is managed by SequenceSolver (a constructor argument of its own); "
                                 f"it cannot be {'tuned' if key == param else 'passed as a method option'}")
        if method != "auto" and method in METHODS:
            from ._registry import check_options

            # said now, not at the first solve; per-call hints (grid_shape, cell_types, ...) stay allowed
            check_options(method, {k: v for k, v in self.options.items() if k not in _GRID_OPTIONS
                                   and k != "nullspace"} | ({param: None} if param else {}))
        self.param = param
        self.tuner = None
        if tuner is not None:
            from .tuning import make_tuner

            if isinstance(tuner, str) and arms is None and param != "omega":
                raise ValueError(f"tuning {param!r} needs arms=[candidate values]")
            self.tuner = make_tuner(tuner, arms=arms, context_range=context_range, seed=seed)
        if param == "omega" and arms is not None:
            from ._validation import check_omega

            for arm in np.ravel(arms):  # said now, not at the first solve
                check_omega(arm, "every omega in arms")
        SequenceCore.__init__(self, self.tuner, context_range)
        # What reset(keep_tuner=False) goes back to.
        self._fresh_tuner = copy.deepcopy(self.tuner)
        self.amg_setups = 0
        self.setups = 0
        self._auto_choice = None
        self._x_prev: Optional[np.ndarray] = None
        self._hierarchy = None
        self._hierarchy_key = None
        self._rental = None  # (key, linsolve._auto.FactorRental) of the kept matrix: its sparse factor once it pays

    # ------------------------------------------------------------------------- solving
    def solve(self, A, b, context=None, **options) -> SolveResult:
        """Solve ``A x = b`` with what earlier calls learned; returns a :class:`~linsolve.SolveResult`.

        Parameters
        ----------
        A : sparse matrix or ndarray, shape (n, n)
            Symmetric positive (semi-)definite; converted to CSR once.
        b : ndarray, shape (n,)
        context : float, optional
            Scalar feature of this system for contextual tuners (e.g. a time
            step, an obstacle position); must lie in ``context_range``.
        **options
            Per-call options for :func:`linsolve.solve` (e.g. ``nullspace=``),
            plus ``cell_types=`` (grid of FLUID/SOLID/AIR codes): ``b`` must
            then be 0 on non-fluid cells (else ``ValueError``), and the warm
            start is zeroed there. ``cell_types``/``grid_shape`` are hints
            every method accepts (see :func:`linsolve.solve`).

        Returns
        -------
        SolveResult
            ``extras["sequence"]`` holds this call's :attr:`stats` entry.

        Examples
        --------
        >>> import numpy as np, linsolve
        >>> solver = linsolve.SequenceSolver(method="ssor-cg", tuner="tsallis", rtol=1e-8)
        >>> A = linsolve.problems.poisson((16, 16))
        >>> res = solver.solve(A, np.ones(256))
        >>> res.converged, solver.stats[-1]["param_name"]
        (True, 'omega')
        """
        t0 = time.perf_counter()
        mat = as_sparse_matrix(A, "A")
        # Validated once per call: the tuner, the method's driver and its preconditioner get this matrix.
        with validated(A, mat):
            return self._solve(mat, b, context, options, t0)

    def _solve(self, mat, b, context, options, t0) -> SolveResult:
        from .solve import solve as _solve

        n = mat.shape[0]
        cell_types = options.get("cell_types")
        if cell_types is not None:
            types = check_cell_types(cell_types)
            if types.size != n:
                raise ValueError(f"cell_types has {types.size} cells but A has {n} rows")
            b_vec = check_rhs_matches_cells(b, types)
        else:
            b_vec = as_vector(b, n, "b")
        if context is not None and (isinstance(context, bool) or not isinstance(context, numbers.Real)
                                    or not np.isfinite(context)):
            raise ValueError(f"context must be a finite real number or None, got {context!r}")
        for key in ("x0", "M", "method", "rtol", "atol", "maxiter", "hierarchy", "factor", "preconditioner"):
            if key in options:
                raise TypeError(f"{key!r} is managed by SequenceSolver; set it in the constructor")
        call_options = dict(self.options)
        call_options.update(options)
        method = self.method
        # One content key per call: the auto choice and every method's preconditioner reuse compare it.
        reusable = self.reuse_hierarchy and method in METHODS and METHODS[method].reuse is not None
        fingerprint = matrix_fingerprint(mat) if (method == "auto" or reusable) else None
        negated = False
        if method == "auto":
            from ._auto import NEGATE, with_row_signs

            method, extra = self._choose(mat, b_vec, fingerprint, call_options)
            call_options = {**extra, **call_options}
            signs = call_options.pop(NEGATE, None)
            if signs is not None:
                # a negative definite grid: (S A) x = S b is the same system, and the grid path takes it
                (mat, b_vec), negated = with_row_signs(mat, b_vec, signs), True

        # Warm start: only when it is closer than zero (||b - A x0|| < ||b||).
        x0 = None
        if self.warm_start and self._x_prev is not None and self._x_prev.shape == (n,):
            x0 = self._x_prev.astype(b_vec.dtype, copy=True)
            if cell_types is not None:
                x0[~fluid_mask(types)] = 0.0
            if not self.warm_start_helps(np.linalg.norm(b_vec - mat @ x0), np.linalg.norm(b_vec)):
                x0 = None

        value, ctx = self.suggest(context, A=mat, _stacklevel=4)  # the warning names the caller of solve()
        if self.tuner is not None:
            call_options[self.param] = value

        hierarchy_reused = False
        updating = False
        key = None
        reuse = METHODS[method].reuse if (self.reuse_hierarchy and method in METHODS) else None
        if reuse is not None:
            # the callback does not shape the preconditioner: a new one each call must not rebuild it
            key = (fingerprint, method, repr(sorted((k, repr(v)) for k, v in call_options.items()
                                                    if k not in ("nullspace", "callback"))))
            if self._hierarchy is not None and key == self._hierarchy_key:
                call_options[reuse] = self._hierarchy
                hierarchy_reused = True
            elif (self._hierarchy is not None and METHODS[method].update and self._hierarchy_key[1:] == key[1:]
                  and call_options.get("device") is None):
                # the matrix changed, not the method or its options: the builder takes over what did not
                # change (a moving obstacle leaves most of the hierarchy as it was)
                call_options[METHODS[method].update] = self._hierarchy
                updating = True

        # every attempt of this call (the factor, a refused grid path's method, the fallback) reports its
        # iterations to the caller's callback: once per iteration over the whole call
        callback = call_options.get("callback")
        rental = self._rental[1] if (hierarchy_reused and self._rental is not None
                                     and self._rental[0] == key) else None
        factor = rental.factor if rental is not None else None
        try:
            if factor is not None:
                # a fixed matrix that kept coming back: its sparse factor has paid for itself (see FactorRental)
                res = _solve(mat, b_vec, method="factor-cg", x0=x0, rtol=self.rtol, atol=self.atol,
                             maxiter=self.maxiter, preconditioner=factor, callback=callback)
            elif method == "auto" and not any(v is not None for k, v in call_options.items() if k != self.param):
                # a fluid-cells-only numbering or a Lagrange border (see _choose): auto_cg keeps the plan of each
                # matrix (its grid layout and multigrid), which solve() would search and build again every frame
                from .solve import through_auto_cg

                res = through_auto_cg(mat, b_vec, x0, rtol=self.rtol, atol=self.atol, maxiter=self.maxiter)
                hierarchy_reused = bool(res.extras.get("reused"))
                self.setups += not hierarchy_reused and res.extras.get("path") not in (None, "plain")
            else:
                res = _solve(mat, b_vec, method=method, x0=x0, rtol=self.rtol, atol=self.atol,
                             maxiter=self.maxiter, **call_options)
        except ValueError as exc:
            from ._auto import grid_refusal_fallback

            # As solve(method="auto"): the grid path refused the matrix (not symmetric, not an M-matrix...),
            # auto must still solve it; the choice is kept for this matrix.
            fallback = grid_refusal_fallback(self.method == "auto", method, n, mat)
            if fallback is None:
                raise
            from .structure import pinned_rows

            if pinned_rows(mat) is not None:
                fallback = "auto"  # a cell pinned by its row alone: solve() moves its column to b
            refused, method = method, fallback
            self._auto_choice = self._auto_choice[:2] + (method, {})
            reuse, key, hierarchy_reused, updating = None, None, False, False
            res = _solve(mat, b_vec, method=method, x0=x0, rtol=self.rtol, atol=self.atol, maxiter=self.maxiter,
                         callback=callback, **{k: v for k, v in options.items() if k == "nullspace"})
            res.extras["auto_fallback"] = f"{refused}: {exc}"
        built = reuse is not None and not hierarchy_reused and res.extras.get(reuse) is not None
        amg_setup = method == "amg-cg" and not hierarchy_reused
        self.amg_setups += amg_setup
        self.setups += built or amg_setup
        hierarchy_updated = built and updating and getattr(getattr(res.extras[reuse], "hierarchy", None),
                                                           "reused_levels", 0) > 0
        if built:
            self._hierarchy = res.extras[reuse]
            self._hierarchy_key = key
        factor_seconds = self._weigh_factor(factor, key, method, hierarchy_reused, res, mat)
        if not res.converged and self.fallback is not None and np.all(np.isfinite(res.x)) \
                and not _at_precision_floor(res):
            fb_options = {k: v for k, v in options.items() if k == "nullspace" or k in _GRID_OPTIONS}
            res2 = _solve(mat, b_vec, method=self.fallback, x0=res.x, rtol=self.rtol, atol=self.atol,
                          maxiter=self.maxiter, callback=callback, **fb_options)
            if self.fallback == "amg-cg":
                self.amg_setups += 1
                self.setups += 1
            res2.extras["first_attempt"] = {"method": res.method, "iterations": res.iterations,
                                            "info": res.info, "message": res.message}
            # as solve() does with its own fallbacks: one result counted from the first attempt's start
            # (iterations = callback calls over both, residual history from the initial residual, both times)
            res2.continuing(res)
            res2.method = f"{res.method}->{res2.method}"
            first_converged = res.converged
            if not res2.converged and np.isfinite(res.true_residual_norm) and not (
                    res2.true_residual_norm <= res.true_residual_norm):
                # neither converged (e.g. b inconsistent on a closed pocket): keep the better x, not the
                # fallback's drift along the null space
                res2.x, res2.true_residual_norm = res.x, res.true_residual_norm
                res2.message = f"{res2.message}; the first attempt's x is kept (smaller true residual)"
            res = res2
        else:
            first_converged = res.converged
        iterations = int(res.iterations)
        method_used = res.method
        solve_seconds = float(res.time_s)
        setup_seconds = float(res.setup_time_s) + factor_seconds

        cost = self.observe(iterations, first_converged)
        if res.converged and np.all(np.isfinite(res.x)):
            self._x_prev = np.array(res.x, dtype=np.float64, copy=True)
        entry = self.record({
            "iterations": iterations, "seconds": time.perf_counter() - t0,
            "solve_seconds": solve_seconds, "setup_seconds": setup_seconds,
            "param_name": self.param, "param": value, "method": method_used,
            "converged": bool(res.converged), "info": int(res.info),
            "relative_residual": (float(res.relative_residual) if np.isfinite(res.relative_residual)
                                  else None), "warm_start": x0 is not None,
            "hierarchy_reused": hierarchy_reused, "hierarchy_updated": bool(hierarchy_updated),
            "amg_setup": amg_setup,
            "context": None if ctx is None else float(ctx), "cost": cost,
        })
        res.extras["sequence"] = dict(entry)
        if negated:
            res.extras["negated"] = True
        return res

    def _weigh_factor(self, factor, key, method, hierarchy_reused, res, mat) -> float:
        """Record a kept solve (or a factored one) of the kept matrix; build its sparse factor once it pays.

        Returns the seconds spent building. See :class:`linsolve._auto.FactorRental`.
        """
        from ._auto import GRID_METHODS, FactorRental

        if factor is not None:
            self._rental[1].factored(res.time_s)
            return 0.0
        if not (hierarchy_reused and res.converged and method in GRID_METHODS):
            return 0.0
        if self._rental is None or self._rental[0] != key:
            kept = self._hierarchy
            singular = getattr(kept, "nullspace_labels", None) is not None or bool(
                np.any(getattr(kept, "zero_rows", None)))
            self._rental = (key, FactorRental(getattr(kept, "grid_shape", None), singular=singular,
                                              n_rows=mat.shape[0]))
        rental = self._rental[1]
        return rental.build(mat) if rental.kept(res.time_s, mat) else 0.0

    def _choose(self, mat, b, fingerprint, options) -> tuple:
        """``method="auto"``: :func:`linsolve.solve`'s rule, decided once per matrix (an ``atol`` is weighed
        against the ``||b||`` of the frame that decides)."""
        from ._auto import GRID_METHODS, NEGATE
        from .solve import _choose_auto, _relative_tolerance

        hints = repr(sorted((k, repr(options.get(k))) for k in _GRID_OPTIONS))
        if self._auto_choice is not None and self._auto_choice[:2] == (fingerprint, hints):
            return self._auto_choice[2], self._auto_choice[3]
        # The preconditioner serves the frames after this one (the rule for a kept multigrid) unless the matrix
        # changed since the last frame: then it changes every frame (adaptive time steps, moving solids) and
        # each frame's preconditioner serves that frame alone (a heat step with dt 1e-5, 11 CG iterations,
        # took a multigrid built every frame: 8x SciPy's time).
        changing = self._auto_choice is not None and self._auto_choice[0] != fingerprint
        rtol = _relative_tolerance({"rtol": self.rtol, "atol": self.atol}, b)
        method, extra = _choose_auto(mat, options, negate=True, rtol=rtol, kept=not changing)
        if NEGATE not in extra and method not in GRID_METHODS:
            from .solve import _compact_grid

            previous = self._auto_choice
            if previous is not None and previous[1] == hints and previous[2] == "auto":
                # the last matrix of the sequence was a fluid-only numbering: solve() finds this one's grid
                # itself (or takes the non-grid rule), so the layout is not searched for twice per frame
                method, extra = "auto", {}
            else:
                from .solve import _lagrange_bordered

                given = {k: options[k] for k in _GRID_OPTIONS if options.get(k) is not None}
                if _compact_grid(method, mat, options.get("nullspace"), given, {}) is not None \
                        or _lagrange_bordered(mat, options.get("nullspace"), given, {}, {}):
                    # numbered over some grid cells only, or bordered by a Lagrange row (PhiFlow): solve()
                    # moves each frame onto its grid, or hands it to auto_cg, which reads the border off
                    method, extra = "auto", {}
        self._auto_choice = (fingerprint, hints, method, extra)
        return method, extra

    def reset(self, *, keep_tuner: bool = True) -> None:
        """Forget the warm start, the kept preconditioner and the ``auto`` choice (and the tuner's
        learning unless ``keep_tuner``).

        Statistics are kept.
        """
        self._x_prev = None
        self._hierarchy = None
        self._hierarchy_key = None
        self._rental = None  # (key, linsolve._auto.FactorRental) of the kept matrix: its sparse factor once it pays
        self._auto_choice = None
        if not keep_tuner and self.tuner is not None:
            self.tuner = copy.deepcopy(self._fresh_tuner)

    @property
    def last_x(self) -> Optional[np.ndarray]:
        """The previous solution (the next warm start), or ``None``."""
        return None if self._x_prev is None else self._x_prev.copy()

    def summary(self) -> Dict[str, Any]:
        """Totals over :attr:`stats`: calls, iterations, seconds, AMG setups, non-converged calls."""
        return {"calls": len(self.stats), "iterations": sum(s["iterations"] for s in self.stats),
                "seconds": sum(s["seconds"] for s in self.stats), "amg_setups": self.amg_setups,
                "not_converged": sum(not s["converged"] for s in self.stats)}

    def __repr__(self) -> str:
        tuner = type(self.tuner).__name__ if self.tuner is not None else None
        return (f"SequenceSolver(method={self.method!r}, tuner={tuner}, param={self.param!r}, "
                f"rtol={self.rtol:g}, calls={len(self.stats)})")

    # ------------------------------------------------------------------------- persistence
    def _config(self) -> Dict[str, Any]:
        return {"method": self.method, "param": self.param,
                "tuner": None if self.tuner is None else getattr(self.tuner, "kind", type(self.tuner).__name__)}

    def save(self, path, *, include_x: bool = True) -> None:
        """Write the learned state (tuner state, stats, AMG setup count, last solution) as JSON.

        The AMG hierarchy is not saved (it is rebuilt on the first call after
        :meth:`load`). The write is atomic: a crash leaves the old file.

        Examples
        --------
        >>> import os, tempfile, numpy as np, linsolve
        >>> solver = linsolve.SequenceSolver(method="cg", tuner=None)
        >>> _ = solver.solve(linsolve.problems.poisson((8, 8)), np.ones(64))
        >>> path = os.path.join(tempfile.mkdtemp(), "state.json")
        >>> solver.save(path)
        >>> linsolve.SequenceSolver(method="cg", tuner=None).load(path).stats[0]["iterations"] > 0
        True
        """
        tuner_state = None
        if self.tuner is not None:
            if not callable(getattr(self.tuner, "state_dict", None)):
                raise TypeError(f"tuner {type(self.tuner).__name__} has no state_dict(); cannot save it")
            tuner_state = self.tuner.state_dict()
        payload = {
            "format": _FORMAT, "version": _VERSION, "config": self._config(), "tuner_state": tuner_state,
            "stats": self.stats, "amg_setups": self.amg_setups, "setups": self.setups,
            "max_converged_iterations": self._max_converged_iterations,
            "last_x": None if (self._x_prev is None or not include_x) else self._x_prev.tolist(),
        }
        try:
            atomic_write_json(path, payload, allow_nan=False)
        except ValueError as exc:
            raise ValueError(f"cannot save SequenceSolver state: {exc}") from None

    def load(self, path) -> "SequenceSolver":
        """Restore state written by :meth:`save` into this solver (built with the same method, param, tuner).

        The whole file is validated before anything is assigned: a corrupt,
        truncated or foreign file, or one saved for another configuration,
        raises ``ValueError`` and leaves this solver unchanged. Returns ``self``.
        """
        name = os.fspath(path)
        try:
            with open(name, "rb") as handle:
                raw = handle.read()
        except OSError as exc:
            raise ValueError(f"cannot read SequenceSolver state {name!r}: {exc}") from None
        try:
            payload = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{name!r} is not a SequenceSolver state file (corrupt or truncated JSON: {exc})") \
                from None
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(f"{name!r} is not a SequenceSolver state file (format field is "
                             f"{payload.get('format') if isinstance(payload, dict) else None!r})")
        if payload.get("version") != _VERSION:
            raise ValueError(f"{name!r}: unsupported SequenceSolver state version {payload.get('version')!r} "
                             f"(this linsolve reads version {_VERSION})")
        config = payload.get("config")
        if config != self._config():
            raise ValueError(f"{name!r} was saved for {config!r}, but this solver is {self._config()!r}; "
                             "build the SequenceSolver with the same method, param and tuner")
        stats = _parse_stats(payload.get("stats"), name)
        amg_setups = payload.get("amg_setups")
        if isinstance(amg_setups, bool) or not isinstance(amg_setups, int) or amg_setups < 0:
            raise ValueError(f"{name!r}: amg_setups must be a non-negative int, got {amg_setups!r}")
        setups = payload.get("setups", amg_setups)  # files written before it was saved: the AMG ones at least
        if isinstance(setups, bool) or not isinstance(setups, int) or setups < 0:
            raise ValueError(f"{name!r}: setups must be a non-negative int, got {setups!r}")
        max_its = payload.get("max_converged_iterations", 0)
        if isinstance(max_its, bool) or not isinstance(max_its, int) or max_its < 0:
            raise ValueError(f"{name!r}: max_converged_iterations must be a non-negative int, got {max_its!r}")
        last_x = payload.get("last_x")
        if last_x is not None:
            if not isinstance(last_x, list) or not last_x or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in last_x):
                raise ValueError(f"{name!r}: last_x must be a non-empty list of numbers")
            last_x = np.asarray(last_x, dtype=np.float64)
            if not np.all(np.isfinite(last_x)):
                raise ValueError(f"{name!r}: last_x contains NaN or Inf")
        tuner = None
        if self.tuner is not None:
            state = payload.get("tuner_state")
            if not isinstance(state, dict):
                raise ValueError(f"{name!r}: missing tuner_state for tuner {self._config()['tuner']!r}")
            tuner = copy.deepcopy(self.tuner)
            try:
                tuner.load_state_dict(state)
            except (TypeError, KeyError, IndexError, AttributeError) as exc:
                raise ValueError(f"{name!r}: bad tuner_state ({type(exc).__name__}: {exc})") from None
            except ValueError as exc:
                raise ValueError(f"{name!r}: bad tuner_state ({exc})") from None
        elif payload.get("tuner_state") is not None:
            raise ValueError(f"{name!r} holds a tuner state but this solver has no tuner")
        # Everything validated: assign.
        if tuner is not None:
            self.tuner = tuner
        self.stats = stats
        self.amg_setups = amg_setups
        self.setups = setups
        self._max_converged_iterations = max_its
        self._x_prev = last_x
        self._hierarchy = None
        self._hierarchy_key = None
        self._rental = None  # (key, linsolve._auto.FactorRental) of the kept matrix: its sparse factor once it pays
        return self


def _parse_stats(stats, name: str) -> List[Dict[str, Any]]:
    if not isinstance(stats, list):
        raise ValueError(f"{name!r}: stats must be a list, got {type(stats).__name__}")
    out = []
    for k, entry in enumerate(stats):
        if isinstance(entry, dict):
            entry = {**{key: v for key, v in _STAT_DEFAULTS.items() if key not in entry}, **entry}
        if not isinstance(entry, dict) or set(entry) != set(_STAT_KEYS):
            raise ValueError(f"{name!r}: stats[{k}] does not have the fields {sorted(_STAT_KEYS)}")
        for key, kind in _STAT_KEYS.items():
            value = entry[key]
            ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise ValueError(f"{name!r}: stats[{k}][{key!r}] has the wrong type ({type(value).__name__})")
        out.append(dict(entry))
    return out
