"""Deep Conjugate Direction Method (Kaneda, Akar, Chen, Kala, Hyde, Teran, ICML 2023), safeguarded.

Each iteration feeds the residual (scaled to unit RMS) to a trained CNN, A-
orthogonalises the output ``q`` against the last ``n_orth`` search directions,
takes the exact line-search step ``α = qᵀr / qᵀAq`` and recomputes the true
residual ``b − A x``. The A-norm of the error then drops by exactly
``(qᵀr)²/(qᵀAq)``.

Deflation (``deflation="auto"``, the default; ``None`` is the paper's method):
the iterate starts with the exact coarse-space correction over aggregates of
``4³`` cells and every network direction is made A-orthogonal to that coarse
space (:mod:`linsolve.precond.deflation`). The network's receptive field is a
fixed number of cells, so it cannot see the global smooth error of a large
domain with Neumann walls; the aggregates capture it. On the 3D fluid-simulation
right-hand sides this takes the shipped model from 51 / 80 iterations at
64³ / 96³ to 16 / 17 (``bench/dcdm.py``).

Safeguard: that decrease is compared with the decrease a steepest-descent step
from the same iterate would give, ``(rᵀr)²/(rᵀAr)`` (one extra SpMV). When the
network's direction gives less than ``min_gain`` times that for ``patience``
iterations in a row, or produces NaN/Inf, the solver warns and continues from
the current iterate with PCG and a classical preconditioner (SSOR when
available, else an AMG V-cycle, else none); ``SolveResult.method`` is then
``"dcdm->pcg"``. Convergence is only ever claimed on the true residual.

torch is imported only when the solver runs (``import linsolve`` stays light).
"""
from __future__ import annotations

import collections
import numbers
import os
import time
import warnings

import numpy as np

from .._result import SolveResult
from .._validation import check_symmetric, make_system
from ._stopping import BREAKDOWN_NONFINITE, true_residual

__all__ = ["dcdm", "dcdm_result"]


def dcdm(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, model=None, n_orth=2, callback=None,
         grid_shape=None, deflation="auto", **options):
    """Solve SPD ``A x = b`` by the Deep Conjugate Direction Method, SciPy style.

    Parameters
    ----------
    A : sparse matrix, shape (n, n)
        Symmetric positive definite; unknowns in C order over a 2D or 3D grid.
    b : ndarray, shape (n,) or (n, 1)
    x0 : ndarray, optional
        Starting guess (zero by default).
    rtol, atol : float
        Stop when ``||b - A x||_2 <= max(rtol * ||b||_2, atol)`` (true residual,
        computed every iteration).
    maxiter : int, optional
        Maximum iterations (network and fallback together); ``None`` means ``10 * n``.
    model : None, str, path or torch.nn.Module
        ``None``: the shipped model matching A's grid dimensionality
        (:func:`linsolve.models.available`; ``"poisson2d-64"`` in 2D,
        ``"poisson3d-32"`` in 3D); a shipped name, a model file or a network
        from :func:`linsolve.models.load`. ``model="poisson3d-32-ml"`` is the
        multi-level 3D network. With the default deflation both 3D models take
        11-12 iterations on the demo problem's random right-hand side and 16-17
        on fluid-simulation ones at 64³ and 96³; without it (the paper's method)
        the multi-level one grows more slowly on random right-hand sides (11 → 13
        against 12 → 17) but needs more on fluid ones (71 / 91 against 51 / 80),
        see ``linsolve/models/weights/RECIPE.md``.
    n_orth : int
        Number of previous directions each new one is A-orthogonalised against (2 in the paper).
    callback : callable, optional
        ``callback(xk)`` once per iteration with a copy of the iterate.
    grid_shape : tuple, optional
        ``(nx, ny)`` or ``(nx, ny, nz)``. Inferred when ``n`` is a perfect square
        (2D) or cube (3D) and a model of that dimensionality exists; otherwise required.
    deflation : "auto", int or None
        Coarse space of piecewise-constant aggregates that the directions are
        made A-orthogonal to (see the module notes and
        :func:`linsolve.precond.aggregation_deflation`): ``"auto"`` uses
        blocks of 4 cells per axis (8 beyond ~136³ cells in 3D), an integer sets
        the block size, ``None`` or ``False`` is the paper's DCDM without it.
    **options
        Passed to :func:`dcdm_result` (``fallback``, ``cell_types``, ``patience``...).

    Returns
    -------
    x : ndarray
    info : int
        0 converged (true residual); > 0 not converged after ``info``
        iterations; < 0 breakdown (-3: NaN/Inf with the fallback disabled).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> b = np.random.default_rng(0).standard_normal(A.shape[0])
    >>> x, info = linsolve.dcdm(A, b, rtol=1e-6)
    >>> info, bool(np.linalg.norm(b - A @ x) <= 1e-6 * np.linalg.norm(b))
    (0, True)
    """
    res = dcdm_result(A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback, model=model,
                      n_orth=n_orth, grid_shape=grid_shape, deflation=deflation, **options)
    return res.x, res.info


def build_deflation(deflation, matrix, grid_shape, fluid):
    """The coarse space of a DCDM solve, or ``None`` (off, or ``"auto"`` without A's entries)."""
    if deflation is None or deflation is False:
        return None
    from ..precond.deflation import aggregation_deflation, resolve_block

    block = resolve_block(deflation, grid_shape)
    if matrix is None:
        if deflation == "auto":
            return None
        raise ValueError("deflation needs A as a sparse matrix (the coarse matrix ZᵀAZ is built from its "
                         "entries); pass deflation=None for a LinearOperator A")
    try:
        return aggregation_deflation(matrix, grid_shape, block=block, mask=fluid)
    except ValueError as exc:
        if deflation != "auto":
            raise
        # "auto" must never make a solve fail that the paper's method could still attempt.
        warnings.warn(f"dcdm: deflation turned off: {exc}", RuntimeWarning, stacklevel=4)
        return None


def _fallback_preconditioner(A, kind: str):
    """(operator or None, name, setup seconds): SSOR if present, else AMG, else plain CG."""
    t0 = time.perf_counter()
    if kind in ("auto", "ssor"):
        try:
            from ..precond import ssor

            return ssor(A), "ssor", time.perf_counter() - t0
        except (ImportError, ValueError, TypeError):
            if kind == "ssor":
                raise
    if kind in ("auto", "amg"):
        try:
            from ..precond import amg

            M = amg(A)
            return M, "amg", getattr(M, "setup_time_s", time.perf_counter() - t0)
        except (ImportError, ValueError, TypeError):
            if kind == "amg":
                raise
    return None, "none", 0.0


def check_dcdm_options(M, n_orth, patience, min_gain) -> None:
    """Validate the options every DCDM driver (NumPy and torch) shares."""
    if M is not None:
        raise ValueError("dcdm takes no preconditioner M: the network generates the search directions "
                         "(pass model= instead)")
    if isinstance(n_orth, bool) or not isinstance(n_orth, numbers.Integral) or n_orth < 0:
        raise ValueError(f"n_orth must be a non-negative integer, got {n_orth!r}")
    if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
        raise ValueError(f"patience must be a positive integer, got {patience!r}")
    if not isinstance(min_gain, numbers.Real) or not np.isfinite(min_gain) or min_gain < 0:
        raise ValueError(f"min_gain must be a finite number >= 0, got {min_gain!r}")


def dcdm_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None, model=None,
                n_orth=2, grid_shape=None, fallback=True, cell_types=None, patience=3, min_gain=0.25,
                fallback_precond="auto", device="cpu", deflation="auto", **options) -> SolveResult:
    """:func:`dcdm` returning a :class:`~linsolve.SolveResult`; the ``solve(method="dcdm")`` driver.

    ``residual_norms`` are **true** residual norms ``||b - A x_k||`` (initial
    one first, taken after the coarse-space correction of ``x0`` when deflation
    is on; ``extras["x0_residual_norm"]`` is the one before it), also after a
    fallback to PCG.

    Parameters
    ----------
    M : None
        DCDM takes no preconditioner (the network is one); anything else is refused.
    fallback : bool
        Switch to PCG when the network's directions stall (see module notes).
        With ``False`` the solve stops there, unconverged.
    cell_types : int array, optional
        Cell codes of a pressure grid (FLUID=0); non-fluid cells are masked out
        of the network's input and output (they are identity rows of A).
    patience : int
        Consecutive insufficient iterations tolerated before falling back.
    min_gain : float
        An iteration is insufficient when its A-norm error decrease is below
        ``min_gain`` times that of a steepest-descent step.
    fallback_precond : {"auto", "ssor", "amg", "none"}
        Preconditioner of the fallback PCG.
    device : str
        Torch device the network runs on.
    deflation : "auto", int, None or False
        See :func:`dcdm`. ``"auto"`` is silently off when ``A`` is only a
        LinearOperator (the coarse matrix needs A's entries); an explicit block
        size then raises.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> res = linsolve.solve(A, np.ones(A.shape[0]), method="dcdm", rtol=1e-6)
    >>> res.converged, res.method, res.residual_kind
    (True, 'dcdm', 'true')
    """
    if options:
        raise TypeError(f"dcdm got unexpected options: {sorted(options)}")
    from .._optional import require_torch

    require_torch("DCDM (linsolve.dcdm, method='dcdm')")
    check_dcdm_options(M, n_orth, patience, min_gain)
    if fallback_precond not in ("auto", "ssor", "amg", "none"):
        raise ValueError(f"fallback_precond must be 'auto', 'ssor', 'amg' or 'none', got {fallback_precond!r}")
    t_start = time.perf_counter()
    system = make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback)
    if system.matrix is not None:
        check_symmetric(system.matrix)
    from ..precond.learned import NetworkDirection, resolve_grid_shape, resolve_model

    shape = resolve_grid_shape(grid_shape, system.n, system.matrix, model)
    net = resolve_model(model, len(shape))
    direction = NetworkDirection(net, shape, system.matrix, cell_types, device=device)
    model_name = os.path.basename(getattr(net, "source_path", "") or "") or type(net).__name__
    coarse = build_deflation(deflation, system.matrix, shape, direction.fluid)
    setup_time = time.perf_counter() - t_start

    Aop, bvec, x, tol = system.A, system.b.astype(np.float64), system.x.astype(np.float64), system.tol
    extras = {"model": model_name, "grid_shape": shape, "n_orth": int(n_orth),
              "network_optimized": direction.optimized,
              "deflation_block": coarse.block if coarse else None,
              "deflation_coarse_size": coarse.n_coarse if coarse else 0}
    if system.bnorm == 0.0:
        return SolveResult(x=np.zeros_like(system.b), converged=True, info=0, iterations=0, residual_norms=[0.0],
                           method="dcdm", time_s=time.perf_counter() - t_start, true_residual_norm=0.0,
                           b_norm=0.0, residual_kind="true", message="b is zero; x = 0 is exact", extras=extras)
    r = true_residual(Aop, bvec, x)
    if coarse is not None:
        extras["x0_residual_norm"] = float(np.linalg.norm(r))
        if extras["x0_residual_norm"] > tol:  # an x0 that already meets the rule is returned untouched
            x += coarse.correction(r)
            r = true_residual(Aop, bvec, x)
    rnorm = float(np.linalg.norm(r))
    norms = [rnorm]
    history = collections.deque(maxlen=int(n_orth) if n_orth else 1)
    iteration, bad, reason = 0, 0, ""
    gains = []
    while rnorm > tol and iteration < system.maxiter:
        q = direction(r)
        if not np.all(np.isfinite(q)):
            reason = "the network returned NaN/Inf"
            break
        if coarse is not None:
            q = coarse.project(q)
        if n_orth:
            for p, Ap, pAp in history:
                q -= (q @ Ap / pAp) * p
        Aq = Aop.matvec(q)
        qAq = float(q @ Aq)
        qr = float(q @ r)
        if not (np.isfinite(qAq) and np.isfinite(qr)):
            reason = "NaN/Inf in the network direction's line search"
            break
        Ar = Aop.matvec(r)
        rAr = float(r @ Ar)
        # rᵀAr <= 0 means A is not SPD: no direction counts as good, and the PCG fallback reports the breakdown.
        sd_gain = float(r @ r) ** 2 / rAr if rAr > 0 else np.inf
        gain = qr * qr / qAq if qAq > 0 else 0.0
        gains.append(gain / sd_gain if sd_gain > 0 else 0.0)
        bad = bad + 1 if gain < min_gain * sd_gain else 0
        if qAq > 0 and qr != 0:
            x += (qr / qAq) * q
            if n_orth:
                history.append((q, Aq, qAq))
        iteration += 1
        r = true_residual(Aop, bvec, x)
        rnorm = float(np.linalg.norm(r))
        norms.append(rnorm)
        if system.callback is not None:
            system.callback(x.copy())
        if bad >= patience:
            reason = (f"the network's directions reduced the A-norm error by less than {min_gain:g}x a "
                      f"steepest-descent step for {patience} iterations")
            break
    extras.update(dcdm_iterations=iteration, network_time_s=round(direction.net_time_s, 4),
                  gain_over_steepest_descent=[round(g, 4) for g in gains])
    method = "dcdm"
    info = 0
    message = "converged (true residual)"
    if rnorm > tol and reason:
        if not fallback:
            info = BREAKDOWN_NONFINITE if "NaN" in reason else iteration
            message = f"stopped: {reason} (fallback disabled)"
        elif iteration >= system.maxiter:
            info = iteration
            message = f"not converged after {iteration} iterations"
        else:
            method = "dcdm->pcg"
            x, info, iteration, message, setup = _run_fallback(system, x, iteration, norms, reason,
                                                               fallback_precond, extras)
            setup_time += setup
            rnorm = norms[-1]
    elif rnorm > tol:
        info = iteration
        message = f"not converged after {iteration} iterations"
    true_norm = float(np.linalg.norm(true_residual(Aop, bvec, x)))
    converged = bool(np.isfinite(true_norm) and true_norm <= tol)
    if converged:
        info = 0
    elif info == 0:  # pragma: no cover - defensive: never claim convergence the residual denies
        info = max(iteration, 1)
        message = "not converged (true residual check failed)"
    return SolveResult(x=x.astype(system.dtype, copy=False), converged=converged, info=info, iterations=iteration,
                       residual_norms=norms, method=method, time_s=time.perf_counter() - t_start,
                       setup_time_s=setup_time, true_residual_norm=true_norm, b_norm=system.bnorm,
                       residual_kind="true", message=message, extras=extras)


def _run_fallback(system, x, iteration, norms, reason, kind, extras):
    """PCG from the current iterate; appends true residual norms to ``norms`` in place."""
    from .cg import cg_result

    A_in = system.matrix if system.matrix is not None else system.A
    if system.matrix is None and kind == "auto":
        kind = "none"
    M, name, setup = _fallback_preconditioner(A_in, kind)
    warnings.warn(f"dcdm: {reason}; continuing from iteration {iteration} with PCG "
                  f"(preconditioner: {name})", RuntimeWarning, stacklevel=3)
    extras.update(fallback_reason=reason, fallback_precond=name, fallback_at_iteration=iteration)
    Aop, b = system.A, system.b.astype(np.float64)
    user_cb = system.callback

    def record(xk):
        norms.append(float(np.linalg.norm(b - Aop.matvec(xk))))
        if user_cb is not None:
            user_cb(xk)

    res = cg_result(A_in, b, x, rtol=system.rtol, atol=system.atol, maxiter=max(system.maxiter - iteration, 1),
                    M=M, callback=record)
    extras["fallback_iterations"] = res.iterations
    total = iteration + res.iterations
    info = 0 if res.converged else (res.info if res.info < 0 else total)
    return np.asarray(res.x, dtype=np.float64), info, total, f"{res.message} after fallback to PCG ({name})", setup
