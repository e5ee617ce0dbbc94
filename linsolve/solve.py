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
``method="auto"`` is decided by :mod:`linsolve._auto` from the matrix itself.
"""
from __future__ import annotations

import importlib
import inspect
import time
from typing import Callable, Dict

import numpy as np

from ._result import SolveResult
from ._validation import as_operator, as_vector

__all__ = ["solve", "register_method", "register_auto_rule", "available_methods", "get_driver", "takes_option",
           "GRID_HINTS"]

_REGISTRY: Dict[str, str | Callable] = {
    "cg": "linsolve.krylov.cg:cg_result",
    "amg-cg": "linsolve.solve:_amg_cg",
    "sor": "linsolve.krylov.sor:sor_result",
    "ssor-cg": "linsolve.krylov.sor:ssor_cg_result",
    "dcdm": "linsolve.krylov.dcdm:dcdm_result",
    "learned-pcg": "linsolve.krylov.pcg:learned_pcg_result",
    "gmg-pcg": "linsolve.krylov.pcg:gmg_pcg_result",
    "ic-cg": "linsolve.precond.ic:ic_cg_result",
}
_DESCRIPTIONS: Dict[str, str] = {
    "cg": "conjugate gradients (SciPy-identical iterates), optional M",
    "amg-cg": "CG preconditioned by a PyAMG V-cycle (option amg_kind='sa'|'rs')",
    "sor": "SOR / SSOR as a stationary solver (options omega, symmetric)",
    "ssor-cg": "CG preconditioned by symmetric SOR (option omega)",
    "dcdm": "Deep Conjugate Direction Method with a learned network (option model)",
    "learned-pcg": "CG preconditioned by the learned geometric-multigrid V-cycle (options cell_types, grid_shape, model)",
    "gmg-pcg": "CG preconditioned by a classical geometric-multigrid V-cycle (options cell_types, grid_shape, omega, smoothing_steps)",
    "ic-cg": "CG preconditioned by incomplete Cholesky IC(0)",
    "auto": "the fastest method for this matrix: the grid path (learned or classical multigrid) on grid "
            "matrices found from the pattern, plain CG on small systems, Ruge-Stuben AMG on large other ones",
}
#: Hints every method accepts; passed on only to drivers that name them.
GRID_HINTS = ("grid_shape", "cell_types")
_TAKES: Dict[tuple, bool] = {}


def register_method(name: str, driver: str | Callable, description: str = "") -> None:
    """Add or replace a method usable as ``solve(..., method=name)`` and on the CLI.

    ``driver`` is a callable or a ``"module:function"`` string with the driver
    signature described in this module's docstring.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("method name must be a non-empty string")
    _REGISTRY[name] = driver
    if description:
        _DESCRIPTIONS[name] = description


def available_methods() -> Dict[str, str]:
    """``{name: description}`` of every method ``solve`` accepts."""
    names = list(_REGISTRY) + ["auto"]
    return {name: _DESCRIPTIONS.get(name, "") for name in names}


def get_driver(name: str) -> Callable:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(available_methods())}")
    driver = _REGISTRY[name]
    if isinstance(driver, str):
        module_name, func_name = driver.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"method {name!r} is not available in this installation: {exc}") from None
        driver = getattr(module, func_name)
        _REGISTRY[name] = driver
    return driver


_AUTO_RULES: list = []


def register_auto_rule(rule: Callable) -> None:
    """Add a rule ``rule(A, options) -> method name or None`` consulted by ``method="auto"``.

    Rules run in registration order, before the built-in choice
    (:func:`linsolve._auto.choose_method`); the first name returned wins. A
    rule that raises is treated as "no opinion" (``auto`` must never crash
    because an optional method is unavailable).
    """
    _AUTO_RULES.append(rule)


def _choose_auto(A, options) -> tuple:
    """``(method, extra_options)`` for ``method="auto"``: registered rules, then :mod:`linsolve._auto`."""
    from ._auto import choose_method

    for rule in _AUTO_RULES:
        try:
            name = rule(A, options)
        except Exception:
            name = None
        if name:
            return name, {}
    return choose_method(A if hasattr(A, "indptr") else None, options)


def takes_option(driver: Callable, name: str) -> bool:
    """True when ``driver``'s signature names the keyword ``name`` (``**options`` does not count)."""
    key = (id(driver), name)
    if key not in _TAKES:
        try:
            params = inspect.signature(driver).parameters
            _TAKES[key] = name in params and params[name].kind in (
                inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
            _TAKES[key] = False
    return _TAKES[key]


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
    auto = method == "auto"
    if auto:
        op, mat = as_operator(A, "A")
        method, extra = _choose_auto(mat if mat is not None else op, {**options, **hints})
        options = {**extra, **options}
    if method != "cg":
        _refuse_complex(A, b, method)
    kwargs = dict(x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)
    try:
        result = _run(method, A, b, nullspace, hints, kwargs, options)
    except ValueError as exc:
        from ._auto import GRID_METHODS, fallback_method

        if not (auto and method in GRID_METHODS):
            raise
        # The grid path refused the matrix (not symmetric, not an M-matrix, ...): auto must still solve.
        fallback = fallback_method(op.shape[0])
        result = _run(fallback, A, b, nullspace, hints, kwargs, {})
        result.extras["auto_fallback"] = f"{method}: {exc}"
    result.time_s = time.perf_counter() - t0
    return result


def _run(method, A, b, nullspace, hints, kwargs, options) -> SolveResult:
    driver = get_driver(method)
    options = dict(options)
    for key, value in hints.items():
        if takes_option(driver, key):
            options[key] = value
    if nullspace is not None:
        return _solve_with_nullspace(driver, A, b, nullspace, **kwargs, **options)
    return driver(A, b, **kwargs, **options)


def _refuse_complex(A, b, method: str) -> None:
    """Only CG takes complex Hermitian systems; say so before a preconditioner trips over one."""
    for value, name in ((A, "A"), (b, "b")):
        dtype = getattr(value, "dtype", None)
        if dtype is None and value is not None and not hasattr(value, "shape"):
            dtype = np.asarray(value).dtype
        if dtype is not None and np.dtype(dtype).kind == "c":
            raise TypeError(f"{name} has complex dtype {np.dtype(dtype)}; method={method!r} solves real systems "
                            f"only (method='cg' takes complex Hermitian ones)")


def _is_torch(obj) -> bool:
    return type(obj).__module__.startswith("torch")


def _amg_cg(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
            amg_kind="sa", hierarchy=None, **amg_options) -> SolveResult:
    """CG preconditioned by a PyAMG V-cycle; ``hierarchy`` reuses an existing AMGPreconditioner."""
    from .krylov.cg import cg_result
    from .precond.amg import AMGPreconditioner, amg

    if M is not None:
        raise ValueError("method='amg-cg' builds its own preconditioner; do not pass M")
    t0 = time.perf_counter()
    if hierarchy is not None:
        if not isinstance(hierarchy, AMGPreconditioner):
            raise TypeError("hierarchy must be an AMGPreconditioner from linsolve.precond.amg")
        n = as_operator(A, "A")[0].shape[0]
        if tuple(hierarchy.shape) != (n, n):
            raise ValueError(f"hierarchy was built for shape {tuple(hierarchy.shape)}, but A has shape {(n, n)}")
        precond = hierarchy
    else:
        precond = amg(A, kind=amg_kind, **amg_options)
    setup = time.perf_counter() - t0
    res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=precond, callback=callback)
    res.method = f"amg-cg({precond.kind})"
    res.setup_time_s = setup
    res.extras["amg_levels"] = len(precond.hierarchy.levels)
    res.extras["hierarchy"] = precond
    return res


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
    q, _ = np.linalg.qr(basis)
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
    return res
