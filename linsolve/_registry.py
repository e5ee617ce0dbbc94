"""The one method registry: what each method is, what it can do, and where its drivers live.

Every place that runs a method by name reads this table: :func:`linsolve.solve`
(the NumPy drivers), the torch backend (its drivers), :class:`~linsolve.SequenceSolver`
(which option a tuner sets, how a built preconditioner is reused), the PETSc
sequence solver and the command line. :func:`register_method` adds a method to
all of them at once.

A :class:`Method` records

* ``numpy``: the driver ``driver(A, b, *, x0, rtol, atol, maxiter, M, callback,
  **options) -> SolveResult``;
* ``torch``: the torch backend's driver ``driver(system, M, check_every,
  **options) -> (out, name, residual_kind, extras, setup_seconds)`` where
  ``system`` is a validated :class:`~linsolve.backends.torch_backend.TorchSystem`
  and ``out = (x, info, iterations, residual_norms, true_norm, message)``
  (``None``: the method does not run on torch tensors);
* ``grid``: whether the method uses the grid hints ``grid_shape`` /
  ``cell_types`` (``None``: whatever its NumPy driver's signature names);
* ``options``: the method options it takes (``None``: not checked here, the
  driver's own signature decides); ``torch_options``: more that only its torch
  driver takes;
* ``reuse``: the keyword that hands a preconditioner built by an earlier solve
  back to it; the result's ``extras[reuse]`` holds the one it built;
* ``update``: the keyword that hands the preconditioner of the previous, changed
  matrix of a sequence to the builder, which takes over what did not change;
* ``param``: the option a tuner sets by default (``"omega"`` for SOR methods).

Drivers are ``"module:function"`` strings imported on first use (so ``import
linsolve`` stays light and this module imports no solver) or callables.

Examples
--------
>>> from linsolve._registry import method
>>> m = method("gmg-pcg")
>>> m.grid, m.reuse, "torch" in m.backends
(True, 'preconditioner', True)
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, Optional, Tuple, Union

__all__ = ["Method", "METHODS", "AUTO_RULES", "GRID_HINTS", "BACKENDS", "register_method", "method",
           "available_methods", "get_driver", "takes_option", "check_options", "named_solver",
           "set_named_solver"]

Driver = Union[str, Callable, None]

#: Hints every method accepts; passed on only to the methods that use them.
GRID_HINTS = ("grid_shape", "cell_types")
#: The array backends a method may have a driver for.
BACKENDS = ("numpy", "torch")


@dataclass
class Method:
    """One registered method (see the module docstring for the fields)."""

    name: str
    numpy: Driver = None
    torch: Driver = None
    description: str = ""
    grid: Optional[bool] = False
    options: Optional[FrozenSet[str]] = None
    torch_options: FrozenSet[str] = frozenset()
    reuse: Optional[str] = None
    param: Optional[str] = None
    update: Optional[str] = None
    _loaded: Dict[str, Callable] = field(default_factory=dict, repr=False)

    @property
    def backends(self) -> Tuple[str, ...]:
        """The backends this method has a driver for."""
        return tuple(b for b in BACKENDS if getattr(self, b) is not None)

    def driver(self, backend: str = "numpy") -> Callable:
        """The driver for ``backend``, imported on first use; ``ValueError`` when there is none."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if backend in self._loaded:
            return self._loaded[backend]
        spec = getattr(self, backend)
        if spec is None:
            where = {"torch": "the torch backend (device=... or torch tensors)"}.get(backend, backend)
            others = ", ".join(self.backends) or "none"
            raise ValueError(f"method={self.name!r} is not available on {where}; it runs on: {others}")
        if isinstance(spec, str):
            module_name, func_name = spec.split(":")
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise ValueError(f"method {self.name!r} is not available in this installation: {exc}") from None
            spec = getattr(module, func_name)
        self._loaded[backend] = spec
        return spec

    def uses_grid(self) -> bool:
        """Whether the grid hints go to this method's NumPy driver."""
        if self.grid is not None:
            return bool(self.grid)
        return self.numpy is not None and takes_option(self.driver("numpy"), "grid_shape")


def _opts(*names) -> FrozenSet[str]:
    return frozenset(names)


_DCDM_OPTIONS = _opts("model", "n_orth", "patience", "min_gain", "fallback", "fallback_precond", "deflation",
                      "device")

METHODS: Dict[str, Method] = {}
#: Rules ``rule(A, options) -> method name or None`` consulted first by ``method="auto"``.
AUTO_RULES: list = []
_TAKES: Dict[tuple, bool] = {}


def register_method(name: str, driver: Driver = None, description: str = "", *, torch: Driver = None,
                    grid: Optional[bool] = None, options=None, reuse: Optional[str] = None,
                    param: Optional[str] = None, update: Optional[str] = None, torch_options=()) -> Method:
    """Add or replace a method usable as ``solve(..., method=name)``, on a device and on the CLI.

    Parameters
    ----------
    name : str
    driver : callable or ``"module:function"``
        The NumPy driver ``driver(A, b, *, x0, rtol, atol, maxiter, M,
        callback, **options) -> SolveResult``.
    description : str
        One line for :func:`available_methods` and ``linsolve solve --help``.
    torch : callable or ``"module:function"``, optional
        The torch backend's driver (see the module docstring); without it the
        method is refused on torch tensors with a clear ``ValueError``.
    grid : bool, optional
        Whether the grid hints go to the method (default: when the NumPy
        driver's signature names ``grid_shape``).
    options : iterable of str, optional
        The option names the method takes (checked before its driver runs).
    reuse : str, optional
        Keyword that reuses a preconditioner built by an earlier solve
        (``"preconditioner"``); the result's ``extras[reuse]`` must hold it.
    param : str, optional
        The option a tuner sets by default.
    update : str, optional
        Keyword that takes the preconditioner built for the previous matrix of
        a sequence when the matrix has changed (``"previous"``).
    torch_options : iterable of str, optional
        Options that only the torch driver takes (on top of ``options``).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.krylov import cg_result
    >>> _ = linsolve.register_method("plain-cg", lambda A, b, **kw: cg_result(A, b, **kw), "CG again")
    >>> linsolve.solve(linsolve.problems.poisson((8, 8)), np.ones(64), method="plain-cg").converged
    True
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError("method name must be a non-empty string other than 'auto'")
    if driver is None and torch is None:
        raise ValueError(f"method {name!r} needs a driver (numpy) or a torch driver")
    for value, what in ((driver, "driver"), (torch, "torch")):
        if value is not None and not (callable(value) or (isinstance(value, str) and value.count(":") == 1)):
            raise TypeError(f"{what} must be a callable or a 'module:function' string, got {value!r}")
    entry = Method(name, numpy=driver, torch=torch, description=description, grid=grid,
                   options=None if options is None else frozenset(options), reuse=reuse, param=param,
                   update=update, torch_options=frozenset(torch_options))
    METHODS[name] = entry
    return entry


def method(name: str) -> Method:
    """The :class:`Method` registered as ``name``; ``ValueError`` naming the choices otherwise."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a string, got {type(name).__name__}")
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(available_methods())}") from None


def available_methods(backend: Optional[str] = None) -> Dict[str, str]:
    """``{name: description}`` of every method (with ``backend``: those that run there), ``"auto"`` included."""
    out = {name: m.description for name, m in METHODS.items() if backend is None or getattr(m, backend) is not None}
    out["auto"] = _AUTO_DESCRIPTION
    return out


def get_driver(name: str, backend: str = "numpy") -> Callable:
    """The ``backend`` driver of method ``name`` (imported on first use)."""
    return method(name).driver(backend)


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


def check_options(name: str, options, backend: str = "") -> None:
    """``TypeError`` naming the options ``name`` does not take (when its :class:`Method` lists them)."""
    entry = method(name)
    allowed = entry.options
    if allowed is None:
        return
    if backend == "torch":
        allowed = allowed | entry.torch_options
    unknown = sorted(set(options) - allowed)
    if unknown and not backend and set(unknown) <= entry.torch_options:
        raise TypeError(f"method {name!r} takes {unknown} on the torch backend only (a preconditioner given by "
                        f"name); on NumPy arrays pass a preconditioner object as M, e.g. "
                        f"M=linsolve.precond.ssor(A, omega=...)")
    if unknown:
        where = f" on the {backend} backend" if backend else ""
        raise TypeError(f"method {name!r}{where} got unexpected options: {unknown} "
                        f"(it takes {sorted(allowed) or 'none'})")


_NAMED_SOLVER: list = []


def set_named_solver(factory: Callable) -> None:
    """Install the solve layer's ``factory(name) -> object with .solve(A, b, **hints)`` (done by linsolve.solve)."""
    _NAMED_SOLVER[:] = [factory]


def named_solver(name: str):
    """A solver object for the method ``name`` (see :func:`linsolve.solve.method_solver`).

    Lets layers below the solvers (problem generators that advance a
    simulation) accept ``solver="cg"`` without importing a solver: the name
    is data here, resolved by the factory :mod:`linsolve.solve` installs when
    ``linsolve`` is imported.
    """
    if not _NAMED_SOLVER:  # pragma: no cover - linsolve/__init__ always imports linsolve.solve
        raise RuntimeError("linsolve.solve is not imported; import linsolve first")
    return _NAMED_SOLVER[0](name)


_AUTO_DESCRIPTION = ("the fastest method for this matrix: the grid path (learned or classical multigrid) on grid "
                     "matrices found from the pattern, plain CG on small systems, Ruge-Stuben AMG on large other "
                     "ones")

_TORCH = "linsolve.backends.torch_backend:"
register_method("cg", "linsolve.krylov.cg:cg_result",
                "conjugate gradients (SciPy-identical iterates), optional M",
                torch=_TORCH + "_method_cg", grid=False, options=_opts(), torch_options=_opts("omega"))
register_method("amg-cg", "linsolve.krylov.pcg:amg_cg_result",
                "CG preconditioned by a PyAMG V-cycle (option amg_kind='sa'|'rs')",
                grid=False, options=None, reuse="preconditioner")
register_method("sor", "linsolve.krylov.sor:sor_result",
                "SOR / SSOR as a stationary solver (options omega, symmetric)",
                torch=_TORCH + "_method_sor", grid=False, options=_opts("omega", "symmetric"), param="omega")
register_method("ssor-cg", "linsolve.krylov.sor:ssor_cg_result",
                "CG preconditioned by symmetric SOR (option omega)",
                torch=_TORCH + "_method_ssor_cg", grid=False, options=_opts("omega"), param="omega")
register_method("dcdm", "linsolve.krylov.dcdm:dcdm_result",
                "Deep Conjugate Direction Method with a learned network (option model)",
                torch=_TORCH + "_method_dcdm", grid=True, options=_DCDM_OPTIONS)
register_method("learned-pcg", "linsolve.krylov.pcg:learned_pcg_result",
                "CG preconditioned by the learned geometric-multigrid V-cycle (options cell_types, grid_shape, "
                "model)", torch=_TORCH + "_method_learned_pcg", grid=True, options=None,
                reuse="preconditioner", update="previous")
register_method("gmg-pcg", "linsolve.krylov.pcg:gmg_pcg_result",
                "CG preconditioned by a classical geometric-multigrid V-cycle (options cell_types, grid_shape, "
                "omega, smoothing_steps)", torch=_TORCH + "_method_gmg_pcg", grid=True, options=None,
                reuse="preconditioner", update="previous")
register_method("banded-cg", "linsolve.krylov.pcg:banded_cg_result",
                "CG preconditioned by an exact banded Cholesky factor (1D problems, strips a few cells wide; "
                "option max_bandwidth)", grid=False, options=None, reuse="preconditioner")
register_method("factor-cg", "linsolve.krylov.pcg:factor_cg_result",
                "CG preconditioned by an exact sparse factor (SuperLU; a fixed 2D matrix solved many times; "
                "option max_rows)", grid=False, options=None, reuse="preconditioner")
register_method("jacobi-cg", "linsolve.krylov.pcg:jacobi_cg_result",
                "CG preconditioned by the diagonal (a matrix well conditioned once its diagonal is scaled out)",
                grid=False, options=None, reuse="preconditioner")
register_method("ic-cg", "linsolve.krylov.pcg:ic_cg_result", "CG preconditioned by incomplete Cholesky IC(0)",
                grid=False, options=None, reuse="preconditioner")
