"""``linsolve.solve``: one entry point, methods chosen by name from one registry.

The registry maps a method name to a *driver*
``driver(A, b, *, x0, rtol, atol, maxiter, M, callback, **options) -> SolveResult``.
Drivers are referenced as ``"module:function"`` strings and imported on first
use, so ``import linsolve`` stays light (torch is only imported for the
learned methods). The CLI and :class:`~linsolve.SequenceSolver` use the same
registry.

The grid hints ``grid_shape=`` and ``cell_types=`` are accepted by every
method: a driver receives them only when its signature names them (the grid
methods ``dcdm``, ``learned-pcg``, ``gmg-pcg``), the others ignore them.
``method="auto"`` is decided by :mod:`linsolve._auto` from the matrix itself; a
grid matrix whose block is negative definite (the ``+Laplacian`` convention,
with obstacle rows of either sign) is solved as ``(S A) x = S b`` with row signs
``S`` that make it definite, the same system, on the grid path
(``extras["negated"]``).
When it runs a grid multigrid, ``auto`` keeps the last preconditioner it built
(one per method): the next matrix on the same grid, a time step later, takes
over the part of its hierarchy the change did not reach (bitwise the same
preconditioner, built faster; see ``build_hierarchy(previous=)``).
:func:`forget_last_preconditioners` releases them.
"""
from __future__ import annotations

import contextlib
import importlib
import threading
import time
from typing import Callable, Optional

import numpy as np
import scipy.sparse as sp

from . import _registry
from ._registry import GRID_HINTS, available_methods, get_driver, register_method, takes_option
from ._result import SolveResult
from ._validation import as_operator, as_vector, complex_operand, solve_scaled, validated

__all__ = ["solve", "register_method", "register_auto_rule", "available_methods", "get_driver", "takes_option",
           "GRID_HINTS", "method_solver", "MethodSolver", "forget_last_preconditioners"]

#: The last preconditioner ``auto`` built, per method that can take over a previous one.
_LAST_BUILT: dict = {}
_LAST_LOCK = threading.Lock()


def forget_last_preconditioners() -> None:
    """Release the preconditioners ``method="auto"`` keeps to speed up the next matrix of a sequence.

    Examples
    --------
    >>> from linsolve.solve import forget_last_preconditioners
    >>> forget_last_preconditioners()
    """
    with _LAST_LOCK:
        _LAST_BUILT.clear()

#: The rules of ``method="auto"`` (the registry's list, named here for callers that reach for it).
_AUTO_RULES = _registry.AUTO_RULES


def register_auto_rule(rule: Callable) -> None:
    """Add a rule ``rule(A, options) -> method name or None`` consulted by ``method="auto"``.

    Rules run in registration order, before the built-in choice
    (:func:`linsolve._auto.choose_method`), on every backend; the first name
    returned wins. A rule that raises is treated as "no opinion" (``auto``
    must never crash because an optional method is unavailable).
    """
    _registry.AUTO_RULES.append(rule)


def _choose_auto(A, options, negate=False, rtol=1e-6, kept=False) -> tuple:
    """``(method, extra_options)`` for ``method="auto"``: registered rules, then :mod:`linsolve._auto`
    (``negate``: the caller can solve a negative definite grid as ``(-A) x = -b``; ``rtol``: the tolerance
    asked for; ``kept``: a preconditioner built now serves later solves too)."""
    from ._auto import choose

    return choose(A if hasattr(A, "indptr") else None, options, negate=negate, rtol=rtol, kept=kept)


def solve(A, b, *, method="auto", x0=None, rtol=1e-6, atol=0.0, maxiter=None, M=None,
          device="cpu", callback=None, **options) -> SolveResult:
    """Solve ``A x = b`` (A symmetric positive definite) and report how it went.

    Parameters
    ----------
    A : sparse matrix, ndarray or LinearOperator (or torch tensor with ``device``)
    b : ndarray, shape (n,) or (n, 1)
    method : str
        One of :func:`available_methods` (``"auto"``, ``"cg"``, ``"dcdm"``,
        ``"sor"``, ``"ssor-cg"``, ``"amg-cg"``, ...).
    x0, rtol, atol, maxiter, M, callback
        As in :func:`linsolve.cg`. Converged means
        ``||b - A x|| <= max(rtol * ||b||, atol)`` on the true residual.
    device : str
        ``"cpu"`` (NumPy/numba) or a torch device such as ``"cuda"``; with a
        torch device the solve runs through the torch backend and ``x`` is a
        tensor on that device.
    nullspace : ndarray, optional (keyword option)
        Basis (n,) or (n, k) of the null space of a singular SPSD ``A``
        (e.g. ``ones(n)`` for pure Neumann). ``b`` must be consistent
        (orthogonal to it, to 1e-8 relative) or ``ValueError`` is raised; the
        returned ``x`` is orthogonal to the null space.
    grid_shape, cell_types : optional (keyword options)
        Grid hints, accepted by every method and used by those that can
        (``"dcdm"``, ``"learned-pcg"``, ``"gmg-pcg"``, ``"auto"``); the others
        ignore them. ``"auto"`` finds the grid from A's pattern without them.
    **options
        Method-specific options (``omega``, ``model``, ``amg_kind``, ...).

    Returns
    -------
    SolveResult
        ``x``, ``converged``, ``info``, ``iterations``, ``residual_norms``
        (see ``residual_kind``), ``method`` (after any fallback), ``time_s``.

    Raises
    ------
    ValueError
        On bad input, among it an A that is not symmetric (beyond
        ``linsolve._validation.CG_SYMMETRY_RTOL`` of its largest entry) for any
        method but ``"sor"``: every other one runs CG. ``"auto"`` first undoes
        the one asymmetry it knows (cells pinned by their rows alone). The SciPy
        drop-ins ``linsolve.cg`` and ``auto_cg`` take such an A, as SciPy does.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((24, 24, 24))
    >>> res = linsolve.solve(A, np.ones(A.shape[0]), method="amg-cg", rtol=1e-8)
    >>> res.converged, res.iterations < 20
    (True, True)
    """
    t0 = time.perf_counter()
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if device is None:
        device = "cpu"
    if not isinstance(device, str):
        device = str(device)
    if device != "cpu" or _is_torch(A) or _is_torch(b) or _is_torch(x0):
        backend = importlib.import_module("linsolve.backends.torch_backend")
        return backend.solve(A, b, method=method, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M,
                             device=device, callback=callback, **options)
    nullspace = options.pop("nullspace", None)
    hints = {k: options.pop(k) for k in GRID_HINTS if k in options}
    # Validated once here; the driver, its preconditioner and any tuner receive the checked CSR matrix.
    op, mat = as_operator(A, "A", allow_complex=True)
    def run(b, x0, atol, callback):
        return _dispatch(method, A, b, op, mat, nullspace, hints, dict(options),
                         dict(x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback))

    with validated(A, mat) if mat is not None else contextlib.nullcontext():
        result = solve_scaled(run, b, x0, atol, callback)
    result.time_s = time.perf_counter() - t0
    return result


def _dispatch(method, A, b, op, mat, nullspace, hints, options, kwargs) -> SolveResult:
    auto = method == "auto"
    if auto:
        from ._auto import NEGATE, with_row_signs

        if np.iscomplexobj(b) or complex_operand(("A", A)) is not None:
            # complex Hermitian A or complex b: CG is the method that takes complex systems (any size, so that
            # the answer does not depend on whether the grid is above the multigrid crossover), as auto_cg does
            return _run_chosen("cg", True, A, b, op, nullspace, hints, options, kwargs)
        if _lagrange_bordered(mat, nullspace, hints, options, kwargs):
            return _solve_bordered(mat, b, kwargs)
        method, extra = _choose_auto(mat if mat is not None else op, {**options, **hints}, negate=True,
                                     rtol=_relative_tolerance(kwargs, b))
        compact = _compact_grid(method, mat, nullspace, hints, kwargs)
        if compact is not None:
            return _solve_on_compact_grid(compact, mat, b, options, kwargs)
        signs = extra.pop(NEGATE, None)
        options = {**extra, **options}
        if signs is not None:
            # A negative definite grid (the +Laplacian convention): (S A) x = S b is the same system, with the
            # same x, residual norms and stopping rule (S is orthogonal), and the grid path takes it.
            definite, b_signed = with_row_signs(mat, b, signs)
            with validated(definite, definite):
                result = _run_chosen(method, True, definite, b_signed, definite, nullspace, hints, options, kwargs)
            result.extras["negated"] = True
            return result
    return _run_chosen(method, auto, A, b, op, nullspace, hints, options, kwargs)


def _lagrange_bordered(mat, nullspace, hints, options, kwargs) -> bool:
    """Whether ``auto`` hands the system to :func:`linsolve.auto_cg`, which reads a Lagrange border off it.

    PhiFlow borders a closed box's or a periodic domain's pressure matrix with a row and column of ones: an
    indefinite saddle point that the methods here would take as a whole (RS-AMG-PCG: 71-151 iterations on
    a periodic 128^2-256^2) where the definite block with its multiplier takes 4. Only in float64 (auto_cg
    returns float64 where float32 cannot meet the tolerance; solve() keeps the caller's precision) and
    without options, hints, a null space or ``M`` sized for the bordered system itself.
    """
    if mat is None or options or hints or nullspace is not None or kwargs.get("M") is not None \
            or isinstance(kwargs.get("x0"), str) or mat.shape[0] < 5 or mat.dtype != np.float64 \
            or mat.diagonal()[-1] != 0:
        return False
    from .structure import find_border, find_grid

    grid = find_grid(mat)
    return grid.border is not None if grid is not None else find_border(mat) is not None


def _solve_bordered(mat, b, kwargs) -> SolveResult:
    result = through_auto_cg(mat, _flat(b), kwargs.get("x0"), rtol=kwargs["rtol"], atol=kwargs["atol"],
                             maxiter=kwargs.get("maxiter"), callback=kwargs.get("callback"))
    result.extras["lagrange_border"] = True
    return result


def through_auto_cg(mat, b, x0, *, rtol, atol, maxiter, callback=None) -> SolveResult:
    """:func:`linsolve.shim.auto_cg_result` (plans kept per matrix), its method named as ``solve()`` names it."""
    from .shim import auto_cg_result

    result = auto_cg_result(mat, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback)
    if result.method.startswith("auto_cg[") and result.method.endswith("]"):
        result.method = result.method[len("auto_cg["):-1]
    return result


def _relative_tolerance(kwargs, b) -> float:
    """The drivers' stopping threshold (:func:`~linsolve._validation.stopping_threshold`) relative to
    ``||b||`` (1e-6 for values the driver's validation will refuse by name)."""
    from ._validation import check_tolerances, stopping_threshold

    try:
        rtol, atol = check_tolerances(kwargs.get("rtol", 1e-6), kwargs.get("atol", 0.0))
        bnorm = float(np.linalg.norm(b)) if atol > 0 else 0.0
        return stopping_threshold(rtol, atol, bnorm) / bnorm if bnorm > 0 and np.isfinite(bnorm) else rtol
    except (TypeError, ValueError):
        return 1e-6


def _compact_grid(method, mat, nullspace, hints, kwargs):
    """The grid that a matrix numbered over some grid cells only lives on, when auto found no grid and the
    system can be moved there (no hints, null space or preconditioner sized for A itself), else ``None``."""
    from ._auto import GRID_CG_MAX_CONDITION, GRID_METHODS, SMALL_GRID_MIN_CELLS, condition_bound

    if method in GRID_METHODS or mat is None or hints or nullspace is not None or kwargs.get("M") is not None \
            or mat.shape[0] < SMALL_GRID_MIN_CELLS or np.iscomplexobj(mat.data) \
            or isinstance(kwargs.get("x0"), str) or condition_bound(mat) <= GRID_CG_MAX_CONDITION:
        return None  # (a well-conditioned matrix: plain CG, as on a full grid)
    from .structure import find_compact_grid, find_grid

    if find_grid(mat) is not None:
        return None
    compact = find_compact_grid(mat)
    if compact is None:
        return None
    embedded = compact.embed(mat)
    # the grid path must take the embedding (rows of one cell on an axis of length 1 are no grid it reads)
    return (compact, embedded) if find_grid(embedded) is not None else None


def _flat(b) -> np.ndarray:
    b = np.asarray(b)
    return b[:, 0] if b.ndim == 2 and b.shape[1] == 1 else b


def _judged_on(result, A, b, threshold) -> SolveResult:
    """``result`` of a transformed system (embedded, pinned columns moved) judged on ``A x = b`` as given."""
    b64 = b.astype(np.result_type(b.dtype, np.float64))
    result.b_norm = float(np.linalg.norm(b64))
    result.true_residual_norm = float(np.linalg.norm(b64 - A @ np.asarray(result.x).astype(b64.dtype)))
    if result.converged and not result.true_residual_norm <= threshold:
        result.converged, result.info = False, max(int(result.iterations), 1)
    return result


def _solve_on_compact_grid(compact, mat, b, options, kwargs) -> SolveResult:
    """``solve(method="auto")`` of the system embedded in a grid (``compact``: the ``(CompactGrid, embedded
    matrix)`` of :func:`_compact_grid`), answered and checked for A itself."""
    from ._validation import stopping_threshold

    layout, embedded = compact
    b_arr, cells = _flat(b), layout.cells
    x0, callback = kwargs.get("x0"), kwargs.get("callback")
    inner = {**kwargs, "x0": None if x0 is None else layout.expand(np.asarray(x0).reshape(-1)),
             "callback": None if callback is None else (lambda xk: callback(xk[cells]))}
    result = solve(embedded, layout.expand(b_arr), method="auto", **inner, **options)
    result.x = np.asarray(result.x)[cells]
    threshold = stopping_threshold(float(kwargs["rtol"]), float(kwargs["atol"]), float(np.linalg.norm(b_arr)))
    result.extras["compact_grid"] = layout.shape
    return _judged_on(result, mat, b_arr, threshold)


#: Methods that take complex Hermitian systems (dcdm and sor by a CG fallback, said in their result).
_COMPLEX_METHODS = ("cg", "dcdm", "sor")


#: Methods that run CG on A as given without reading it as a grid (the grid path checks symmetry itself).
_CG_ON_A = ("cg", "amg-cg", "jacobi-cg")


def _refuse_asymmetric(method, auto, A, b, nullspace, hints, kwargs, options,
                       try_pinned: bool = True) -> Optional[SolveResult]:
    """Refuse an A that CG cannot take (not symmetric beyond rounding) rather than run it to ``maxiter``.

    ``auto`` first tries the one asymmetry it can undo (cells pinned by their rows: columns moved to ``b``)
    and returns that solve; otherwise ``None`` when A is symmetric.
    """
    if method not in _CG_ON_A or not sp.issparse(A) or np.iscomplexobj(A):
        return None
    from ._validation import CG_SYMMETRY_RTOL, as_sparse_matrix
    from .structure import require_symmetric

    try:
        require_symmetric(as_sparse_matrix(A, "A"), "A", CG_SYMMETRY_RTOL)
        return None
    except ValueError as exc:
        pinned = _pinned_solve(method, A, b, nullspace, hints, kwargs, options) if auto and try_pinned else None
        if pinned is not None:
            return pinned
        label = f"method='auto' chose {method!r}" if auto else f"method={method!r}"
        raise ValueError(f"{exc} ({label}); for an unsymmetric system use scipy.sparse.linalg.gmres or "
                         f"bicgstab, or method='sor' where A is diagonally dominant; a matrix that pins cells by "
                         f"their rows alone is made symmetric by method='auto'") from None


def _run_chosen(method, auto, A, b, op, nullspace, hints, options, kwargs) -> SolveResult:
    if method not in _COMPLEX_METHODS:
        _refuse_complex(A, b, method)
    if auto:
        try:
            _registry.check_options(method, options)
        except TypeError as exc:
            raise TypeError(f"method='auto' chose {method!r}: {exc}") from None
    refused = _refuse_asymmetric(method, auto, A, b, nullspace, hints, kwargs, options)
    if refused is not None:
        return refused
    spec = _registry.METHODS.get(method)
    update = spec.update if (auto and spec is not None and spec.reuse not in options) else None
    if update:
        with _LAST_LOCK:
            last = _LAST_BUILT.get(method)
        if last is not None:
            options = {**options, update: last}
    try:
        result = _run(method, A, b, nullspace, hints, kwargs, options)
        if update and result.extras.get(spec.reuse) is not None:
            with _LAST_LOCK:
                _LAST_BUILT[method] = result.extras[spec.reuse]
        if auto and method != "cg" and result.info < 0:
            return _continued_by_cg(result, A, b, nullspace, hints, kwargs)
        return result
    except ValueError as exc:
        from ._auto import grid_refusal_fallback

        # The grid path refused the matrix (not symmetric, not an M-matrix, ...): auto must still solve.
        fallback = grid_refusal_fallback(auto, method, op.shape[0], A)
        if fallback is None:
            raise
        pinned = _pinned_solve(method, A, b, nullspace, hints, kwargs, options)
        if pinned is not None:
            return pinned
        _refuse_asymmetric(fallback, auto, A, b, nullspace, hints, kwargs, {}, try_pinned=False)
        result = _run(fallback, A, b, nullspace, hints, kwargs, {})
        result.extras["auto_fallback"] = f"{method}: {exc}"
        return result


def _continued_by_cg(result, A, b, nullspace, hints, kwargs) -> SolveResult:
    """Plain CG from where ``auto``'s preconditioned method broke down (an indefinite preconditioner: the
    loop gives up after :data:`~linsolve.krylov.cg.STALL_AFTER` iterations without progress), within the
    caller's ``maxiter``: auto must still solve, as ``auto_cg`` does."""
    from ._validation import check_maxiter

    left = check_maxiter(kwargs.get("maxiter"), A.shape[0]) - result.iterations
    if left <= 0:
        return result
    plain = _run("cg", A, b, nullspace, hints, {**kwargs, "x0": result.x, "maxiter": left}, {}).continuing(result)
    plain.method = f"{result.method}->cg"
    plain.extras["auto_fallback"] = f"{result.method}: {result.message}"
    before, after = getattr(result, "true_residual_norm", None), getattr(plain, "true_residual_norm", None)
    if not plain.converged and before is not None and after is not None and np.isfinite(before) \
            and not after <= before:
        # plain CG on what broke the preconditioner can end farther off (float32 on a singular block: relres 16
        # after 10 n iterations): never hand back an x worse than the one it started from
        plain.x = result.x
        plain.true_residual_norm = before
        plain.message = (f"{plain.message}; x is the {result.method} iterate it started from (plain CG ended "
                         f"farther off, {after:.3e} against {before:.3e})")
    return plain


def _pinned_solve(method, A, b, nullspace, hints, kwargs, options) -> Optional[SolveResult]:
    """``method`` on A made symmetric by moving the columns of its pinned rows to ``b``
    (:func:`linsolve.structure.pinned_rows`), judged on the system as given; ``None`` when that does not apply."""
    from ._validation import stopping_threshold
    from .structure import pinned_rows

    rtol, atol = kwargs.get("rtol"), kwargs.get("atol")
    if not sp.issparse(A) or np.iscomplexobj(A) or not all(
            isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)
            and v >= 0 for v in (rtol, atol)):
        return None
    split = pinned_rows(A)
    if split is None:
        return None
    b_arr = _flat(b)
    threshold = stopping_threshold(float(rtol), float(atol), float(np.linalg.norm(b_arr.astype(np.float64))))
    try:
        result = _run(method, split.symmetric, split.rhs(b_arr), nullspace, hints,
                      {**kwargs, "rtol": 0.0, "atol": threshold}, options)
    except ValueError:
        return None
    result.x = np.array(result.x, copy=True)
    result.x[split.rows] = b_arr[split.rows] / split.diagonal  # exactly what those rows say
    _judged_on(result, A, b_arr, threshold)
    result.extras["pinned_rows"] = int(split.rows.size)
    result.message = (f"{result.message}; the columns of A's {split.rows.size} pinned row(s) were moved to the "
                      f"right-hand side (A is symmetric apart from them), the residual checked on A as given")
    return result


def _run(method, A, b, nullspace, hints, kwargs, options) -> SolveResult:
    spec = _registry.method(method)
    _registry.check_options(method, options)
    driver = spec.driver("numpy")
    options = dict(options)
    if hints and spec.uses_grid():
        for key, value in hints.items():
            if takes_option(driver, key):
                options[key] = value
    if nullspace is not None:
        return _solve_with_nullspace(driver, A, b, nullspace, **kwargs, **options)
    return driver(A, b, **kwargs, **options)


class MethodSolver:
    """A method name as a solver object: ``MethodSolver("cg").solve(A, b, x0=..., rtol=..., **hints)``.

    What :func:`method_solver` returns; problem generators that advance a
    simulation (``linsolve.problems.fluid_sequence``) take any object with a
    ``solve(A, b, **hints)`` method and need not import a solver themselves.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.solve import method_solver
    >>> A = linsolve.problems.poisson((8, 8))
    >>> method_solver("cg").solve(A, np.ones(64), rtol=1e-8).converged
    True
    """

    def __init__(self, method: str = "cg", **options):
        if method != "auto":
            _registry.method(method)  # unknown names fail here, not at the first frame
        self.method = method
        self.options = options

    def solve(self, A, b, *, x0=None, rtol=1e-6, nullspace=None) -> SolveResult:
        """One :func:`solve` with this method and its options."""
        options = dict(self.options)
        if nullspace is not None:
            options["nullspace"] = nullspace
        return solve(A, b, method=self.method, x0=x0, rtol=rtol, **options)

    def __repr__(self) -> str:
        return f"MethodSolver({self.method!r})"


def method_solver(solver):
    """``solver`` as an object with ``.solve(A, b, **hints)``: a method name becomes a :class:`MethodSolver`.

    Anything else (a :class:`~linsolve.SequenceSolver`, an object with
    ``solve``, a callable ``f(A, b, x0)``) is returned as it is.
    """
    if isinstance(solver, str):
        return MethodSolver(solver)
    return solver


# Problem generators resolve method names through the registry's hook (they import no solver).
_registry.set_named_solver(method_solver)


def _refuse_complex(A, b, method: str) -> None:
    """Only CG (and the methods that fall back to it) take complex systems; say so before a preconditioner
    trips over one."""
    name = complex_operand((A, "A"), (b, "b"))
    if name is not None:
        value = A if name == "A" else b
        dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
        raise TypeError(f"{name} has complex dtype {dtype}; method={method!r} solves real systems only "
                        f"(method='cg' takes complex Hermitian ones)")


def _is_torch(obj) -> bool:
    return type(obj).__module__.startswith("torch")


def _solve_with_nullspace(driver, A, b, nullspace, **kwargs) -> SolveResult:
    """Solve a consistent singular system: project ``b`` (and ``x``) off the null space."""
    op, _ = as_operator(A, "A")
    n = op.shape[0]
    basis = np.asarray(nullspace, dtype=float)
    if basis.ndim == 1:
        basis = basis[:, None]
    if basis.ndim != 2 or basis.shape[0] != n:
        raise ValueError(f"nullspace must have shape ({n},) or ({n}, k), got {np.shape(nullspace)}")
    if not np.all(np.isfinite(basis)):
        raise ValueError("nullspace contains NaN or Inf")
    q, r = np.linalg.qr(basis)
    _check_null_basis(op, q, np.abs(np.diag(r)))
    b_arr = as_vector(b, n, "b")
    coeffs = q.T @ b_arr
    bnorm = np.linalg.norm(b_arr)
    if bnorm > 0 and np.linalg.norm(coeffs) > 1e-8 * bnorm:
        raise ValueError(
            f"b is inconsistent with the null space of A (its component along the null space is "
            f"{np.linalg.norm(coeffs) / bnorm:.2e} of ||b||): the singular system has no solution; "
            f"project b first (b - N (N^T b)) if that is what you mean")
    b_proj = b_arr - q @ coeffs
    res = driver(A, b_proj, **kwargs)
    x = res.x
    res.x = x - q @ (q.T @ x)
    res.extras["nullspace_dim"] = q.shape[1]
    if sp.issparse(A) and np.isrealobj(b_arr):
        from ._validation import check_tolerances, stopping_threshold

        rtol, atol = check_tolerances(kwargs.get("rtol", 1e-6), kwargs.get("atol", 0.0))
        was = res.converged
        _judged_on(res, A, b_arr, stopping_threshold(rtol, atol, float(np.linalg.norm(b_arr))))
        if was and not res.converged:
            res.message = (f"not converged: the true residual of A x = b is {res.true_residual_norm:.3e} after "
                           f"projecting x off the null space")
    return res


#: ``||A v|| / ||A||`` up to which a unit vector ``v`` of a caller's ``nullspace`` counts as a null vector:
#: the rounding of row sums assembled in float32 (1e-7), far below what a vector that is no null vector gives.
NULL_VECTOR_RTOL = 1e-5


def _check_null_basis(op, q, r_diagonal) -> None:
    """Refuse a ``nullspace`` that is not one: a zero or dependent column, or a vector A does not annihilate
    (the projected solve would then report convergence for a system it did not solve)."""
    if r_diagonal.size == 0 or not r_diagonal.max() > 0:
        raise ValueError("nullspace is zero: pass a basis of A's null space (e.g. ones(n) for pure Neumann)")
    dependent = np.flatnonzero(r_diagonal <= 1e-10 * r_diagonal.max())
    if dependent.size:
        raise ValueError(f"nullspace has {q.shape[1]} columns but column {int(dependent[0])} is zero or a "
                         f"combination of the others: pass an independent basis")
    images = np.asarray(op.matmat(q)).reshape(q.shape)  # one pass over A for all columns
    probe = np.random.default_rng(0).standard_normal(q.shape[0])
    probe -= q @ (q.T @ probe)
    scale = float(np.linalg.norm(op.matvec(probe / max(np.linalg.norm(probe), 1e-300))))  # a lower bound on ||A||
    worst = np.linalg.norm(images, axis=0)
    k = int(np.argmax(worst))
    if not worst[k] <= NULL_VECTOR_RTOL * max(scale, 1e-300):
        raise ValueError(f"nullspace is not a null space of A: ||A v|| is {worst[k] / max(scale, 1e-300):.2e} of "
                         f"||A|| for its column {k} (A v = 0 is required; a nonsingular A needs no nullspace)")
