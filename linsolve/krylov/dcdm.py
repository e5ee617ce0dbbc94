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

Safeguard, two checks. Per step, that decrease is compared with the decrease a
steepest-descent step from the same iterate would give, ``(rᵀr)²/(rᵀAr)`` (one
extra SpMV): less than ``min_gain`` times that for ``patience`` iterations in a
row is a stall. That alone misses a network that stays as good as steepest
descent while both crawl (a Poisson matrix with a log-normal coefficient,
σ = 3, 32²: 0.6x-2x steepest descent at every step, and still above 0.1 of
``||b||`` after 10 n iterations where SSOR-PCG takes 150). So the true residual
must also halve (relative to its value when it last did, the start at first)
within every ``PROGRESS_WINDOW`` (30) iterations, or the run is a stall too;
with the default deflation the shipped models halve it every 1-3 iterations.
On a stall, or NaN/Inf from the network, the solver warns and continues from
the current iterate with PCG and a classical preconditioner (SSOR when
available, else an AMG V-cycle, else none); ``SolveResult.method`` is then
``"dcdm->pcg"`` and ``extras`` say why (``fallback_reason``) and when
(``fallback_at_iteration``). ``min_gain=0`` turns both checks off (only
NaN/Inf then fall back): the paper's unguarded method. Convergence is only
ever claimed on the true residual.

torch is imported only when the solver runs (``import linsolve`` stays light).
"""
from __future__ import annotations

import math
import numbers
import os
import time
import warnings

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._result import SolveResult
from .._validation import complex_operand, make_system, solve_scaled, user_stacklevel
from ..structure import check_symmetric
from ..backends.array_api import NUMPY
from ._stopping import BREAKDOWN_NONFINITE
from .cg import pcg_loop

__all__ = ["dcdm", "dcdm_result", "dcdm_loop", "run_dcdm", "build_deflation", "check_dcdm_options",
           "FALLBACK_PRECONDITIONERS"]

#: The ``fallback_precond`` values every DCDM driver takes.
FALLBACK_PRECONDITIONERS = ("auto", "ssor", "amg", "jacobi", "none")

#: The progress check of the safeguard: the network is given up on when ``PROGRESS_WINDOW`` iterations have
#: passed without a true residual ``PROGRESS_FACTOR`` times the reference one (the residual when it last got
#: there; the first one at the start). With the default deflation the shipped models halve the residual every
#: 1-3 iterations on Poisson and fluid grids; the paper's method (``deflation=None``) has plateaus on fluid
#: frames (up to 22 iterations on a 128^2 smoke frame, 9 / 12 on the 64^3 / 96^3 sphere ones, solved in 131,
#: 51 / 80), which the window leaves alone. Halving only every 30 iterations means 800 to 1e-8, where
#: SSOR-PCG takes 50-150 on the 32^2-64^2 log-normal-coefficient grids it was measured on, each iteration a
#: fraction of a network call; on a 256^2 smoke frame (plateaus of 50) the hand-over at iteration 44 takes
#: the paper's method from 310 iterations in 15 s to 406 in 3 s.
PROGRESS_WINDOW = 30
PROGRESS_FACTOR = 0.5


def dcdm(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, model=None, n_orth=2, callback=None,
         grid_shape=None, deflation="auto", **options):
    """Solve SPD ``A x = b`` by the Deep Conjugate Direction Method, SciPy style.

    Parameters
    ----------
    A : sparse matrix, shape (n, n)
        Symmetric positive definite; unknowns in C order over a 2D or 3D grid.
        What SciPy's ``cg`` takes but the network cannot run on (complex
        data; without ``grid_shape``/``model``, a LinearOperator or a matrix
        of no grid) is solved by the safeguard's PCG from the start, with a
        ``UserWarning`` and ``method="dcdm->pcg"``.
    b : ndarray, shape (n,) or (n, 1)
    x0 : ndarray, optional
        Starting guess (zero by default).
    rtol, atol : float
        Stop when ``||b - A x||_2 <= max(rtol * ||b||_2, atol)`` (true residual,
        computed every iteration). ``rtol = atol = 0`` can never be met: as
        with SciPy the result is unconverged (``info > 0``, ``x`` as accurate
        as double precision allows). Once the network's iterate stops
        improving (at the floor of the arithmetic) the safeguard hands over
        to PCG, which runs to ``maxiter`` unless its residual reaches the
        floor first, as :func:`linsolve.cg`'s does there; then the solve stops
        early, ``info`` is the number of iterations done and the message says
        that no further progress is possible, quoting the true residual.
    maxiter : int, optional
        Maximum iterations (network and fallback together); ``None`` means ``10 * n``.
    model : None, str, path or torch.nn.Module
        ``None``: the shipped model matching A's grid dimensionality
        (:func:`linsolve.models.available`; ``"poisson2d-64"`` in 2D,
        ``"poisson3d-32"`` in 3D); a shipped name, a model file or a network
        from :func:`linsolve.models.load`. ``model="poisson3d-32-ml"`` is the
        multi-level 3D network. With the default deflation both 3D models take
        10 iterations on the demo problem's random right-hand side (rtol 1e-6) and 16-17
        on fluid-simulation ones at 64³ and 96³; without it (the paper's method)
        the multi-level one grows more slowly on random right-hand sides (11 → 13
        against 12 → 17) but needs more on fluid ones (71 / 91 against 51 / 80),
        see ``linsolve/models/weights/RECIPE.md``.
    n_orth : int
        Number of previous directions each new one is A-orthogonalised against (2 in the paper).
    callback : callable, optional
        ``callback(xk)`` once per iteration with a copy of the iterate.
    grid_shape : tuple, optional
        ``(nx, ny)`` or ``(nx, ny, nz)``. Read off A's sparsity pattern
        (:func:`linsolve.find_grid`) when not given; required where A has no grid pattern.
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
        iterations (``maxiter``, or fewer when no further progress was
        possible, or when the network stalled with ``fallback=False``);
        < 0 breakdown (-3: NaN/Inf with the fallback disabled).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> b = np.random.default_rng(0).standard_normal(A.shape[0])
    >>> x, info = linsolve.dcdm(A, b, rtol=1e-6)
    >>> info, bool(np.linalg.norm(b - A @ x) <= 1e-6 * np.linalg.norm(b))
    (0, True)
    """
    def run(b, x0, atol, callback):
        return dcdm_result(A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback, model=model,
                           n_orth=n_orth, grid_shape=grid_shape, deflation=deflation, **options)

    res = solve_scaled(run, b, x0, atol, callback)  # right-hand sides beyond 2^+-400, as cg does
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
        warnings.warn(f"dcdm: deflation turned off: {exc}", RuntimeWarning, stacklevel=user_stacklevel())
        return None


def _no_network_reason(A, b, grid_shape, cell_types, model=None):
    """Why the network cannot run on this system (None when it can): complex data, or no grid to read.

    Only what the contract lets a caller pass to any CG (SciPy's ``cg`` takes
    complex Hermitian systems, LinearOperators and matrices of no grid);
    a grid that is given but wrong, or a model asked for by name on a matrix
    of no grid, is bad input and is refused later.
    """
    complex_name = complex_operand((A, "A"), (b, "b"))
    if complex_name is not None:
        return f"{complex_name} is complex (the network is real)"
    if grid_shape is not None or cell_types is not None or model is not None:
        return None
    import scipy.sparse as sp

    if isinstance(A, LinearOperator) and not sp.issparse(A):
        return "A is a LinearOperator and no grid_shape was given"
    from .._validation import as_sparse_matrix
    from ..structure import find_grid

    try:
        found = find_grid(as_sparse_matrix(A, "A"))
    except (TypeError, ValueError):
        return None  # let the validation name what is wrong
    if found is None or found.border is not None:
        return "A is no 5/7-point stencil on a grid (pass grid_shape= if it is one)"
    return None


def _without_network(A, b, x0, rtol, atol, maxiter, callback, fallback_precond, reason, t_start) -> SolveResult:
    """The safeguard's PCG from the start, said in ``method``, ``message`` and a warning."""
    from .cg import cg_result

    matrix = None
    if fallback_precond != "none":
        from .._validation import as_sparse_matrix

        try:
            matrix = as_sparse_matrix(A, "A")
        except (TypeError, ValueError):
            matrix = None
    M, name, setup = (None, "none", 0.0)
    if matrix is not None and matrix.dtype.kind != "c":
        try:
            M, name, setup = _fallback_preconditioner(matrix, fallback_precond)
        except (ValueError, TypeError):
            M, name, setup = None, "none", 0.0
    warnings.warn(f"dcdm: {reason}; solved by PCG ({name}) instead", UserWarning, stacklevel=user_stacklevel())
    res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback)
    res.method = "dcdm->pcg"
    res.message = f"{reason}: solved by PCG ({name}); {res.message}"
    res.setup_time_s = setup
    res.time_s = time.perf_counter() - t_start
    res.extras.update(fallback_reason=reason, fallback_preconditioner=name)
    return res


def _fallback_preconditioner(A, kind: str):
    """(operator or None, name, setup seconds): SSOR if present, else AMG, else plain CG (or Jacobi)."""
    t0 = time.perf_counter()
    if A is None and kind == "auto":
        kind = "none"  # a LinearOperator: nothing to build a preconditioner from
    if kind == "jacobi":
        from scipy.sparse.linalg import LinearOperator

        from .._validation import check_positive_diagonal

        inv = 1.0 / check_positive_diagonal(A, "A")
        return LinearOperator(A.shape, matvec=lambda r: inv * r, dtype=np.float64), "jacobi", \
            time.perf_counter() - t0
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


def check_dcdm_options(M, n_orth, patience, min_gain, fallback_precond="auto") -> None:
    """Validate the options every DCDM driver (NumPy and torch) shares."""
    if fallback_precond not in FALLBACK_PRECONDITIONERS:
        raise ValueError(f"fallback_precond must be one of {', '.join(map(repr, FALLBACK_PRECONDITIONERS))}, "
                         f"got {fallback_precond!r}")
    if M is not None:
        raise ValueError("dcdm takes no preconditioner M: the network generates the search directions "
                         "(pass model= instead)")
    if isinstance(n_orth, bool) or not isinstance(n_orth, numbers.Integral) or n_orth < 0:
        raise ValueError(f"n_orth must be a non-negative integer, got {n_orth!r}")
    if isinstance(patience, bool) or not isinstance(patience, numbers.Integral) or patience < 1:
        raise ValueError(f"patience must be a positive integer, got {patience!r}")
    if not isinstance(min_gain, numbers.Real) or not np.isfinite(min_gain) or min_gain < 0:
        raise ValueError(f"min_gain must be a finite number >= 0, got {min_gain!r}")


def run_dcdm(ops, matvec, direction, b, x, *, tol, maxiter, n_orth=2, patience=3, min_gain=0.25,
             fallback=True, fallback_preconditioner=None, coarse=None, callback=None, check_every=1,
             window=PROGRESS_WINDOW):
    """DCDM with its deflated start, safeguard and PCG fallback: the one driver every backend runs.

    ``direction(r)`` is the network's search direction; ``coarse`` (or
    ``None``) a deflation space with ``correction(r)`` and ``project(q)`` on
    the same arrays; ``fallback_preconditioner()`` returns ``(psolve or
    None, name)`` for the PCG that takes over when the network stalls (either
    check of :func:`dcdm_loop`; ``window`` is its progress window).
    Returns ``(x, info, iterations, residual_norms, true_norm, message,
    method, extras)``; ``residual_norms`` are true residuals, also after a
    fallback; ``method`` is ``"dcdm"`` or ``"dcdm->pcg"``. An unconverged
    fallback's message quotes the true residual (never PCG's recurrence one)
    and says when PCG stopped before ``maxiter`` because no further progress
    was possible.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.array_api import NUMPY
    >>> from linsolve.krylov.dcdm import run_dcdm
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64)
    >>> out = run_dcdm(NUMPY, A.dot, lambda r: 0 * r, b, np.zeros(64), tol=1e-8, maxiter=100,
    ...                fallback_preconditioner=lambda: (None, "none"))   # a useless network
    >>> out[1], out[6], out[7]["fallback_reason"].startswith("the network")
    (0, 'dcdm->pcg', True)
    """
    extras = {}
    network_direction = direction
    if coarse is not None:
        r0 = b - matvec(x)
        extras["x0_residual_norm"] = ops.to_float(ops.norm(r0))
        if extras["x0_residual_norm"] > tol:  # an x0 that already meets the rule is returned untouched
            x = x + coarse.correction(r0)

        def direction(r):
            return coarse.project(network_direction(r))
    x, info, its, norms, true_norm, message, stall, gains = dcdm_loop(
        ops, matvec, direction, b, x, tol=tol, maxiter=maxiter, n_orth=int(n_orth), patience=int(patience),
        min_gain=float(min_gain), callback=callback, check_every=check_every, window=window)
    extras.update(dcdm_iterations=its, gain_over_steepest_descent=[round(g, 4) for g in gains])
    method = "dcdm"
    if stall and true_norm > tol:
        if not fallback:
            info = BREAKDOWN_NONFINITE if "NaN" in stall else its
            message = f"stopped: {stall} (fallback disabled)"
        elif its >= maxiter:
            info, message = its, f"not converged after {its} iterations"
        else:
            method = "dcdm->pcg"
            psolve, what = fallback_preconditioner()
            warnings.warn(f"dcdm: {stall}; continuing from iteration {its} with PCG (preconditioner: {what})",
                          RuntimeWarning, stacklevel=user_stacklevel())
            extras.update(fallback_reason=stall, fallback_precond=what, fallback_at_iteration=its)
            pending = []

            def record(xk):
                pending.append(ops.norm(b - matvec(xk)))  # true residuals, fetched once at the end
                if callback is not None:
                    callback(xk)

            budget = max(maxiter - its, 1)
            x, info2, its2, _, true_norm, message2 = pcg_loop(ops, matvec, psolve, b, x, tol=tol,
                                                              maxiter=budget, callback=record)
            norms = norms + ops.to_host(pending)
            extras["fallback_iterations"] = its2
            switched = f"fallback to PCG ({what}) at iteration {its}"
            its += its2
            info = 0 if info2 == 0 else (info2 if info2 < 0 else its)
            if info2 <= 0:
                message = f"{message2} after {switched}"
            else:
                # PCG's own message may quote its recurrence residual (e.g. one that underflowed to 1e-160 at
                # rtol = atol = 0); the verdict is the true residual's.
                bnorm = ops.to_float(ops.norm(b))
                rel = true_norm / bnorm if bnorm > 0 else math.inf
                message = (f"not converged after {its} iterations ({switched}): ||b - A x|| = {true_norm:.3e} "
                           f"({rel:.1e} of ||b||) above the tolerance {tol:.3e}")
                if its2 < budget:
                    message += ("; no further progress possible (the PCG residual reached the floor of the "
                                "arithmetic)")
    converged = math.isfinite(true_norm) and true_norm <= tol
    if converged:
        info = 0
    elif info == 0:  # pragma: no cover - defensive: never claim convergence the residual denies
        info, message = max(its, 1), "not converged (true residual check failed)"
    return x, info, its, norms, true_norm, message, method, extras


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
        Cell codes of a pressure grid; non-fluid cells are masked out of the
        network's input and output (they are identity rows of A).
    patience : int
        Consecutive insufficient iterations tolerated before falling back.
    min_gain : float
        An iteration is insufficient when its A-norm error decrease is below
        ``min_gain`` times that of a steepest-descent step. With ``min_gain > 0``
        the network is also given up on when the true residual has not halved
        in :data:`PROGRESS_WINDOW` iterations (module notes); ``0`` turns both
        checks off (NaN/Inf still fall back).
    fallback_precond : {"auto", "ssor", "amg", "jacobi", "none"}
        Preconditioner of the fallback PCG (``"auto"``: SSOR, else AMG, else none).
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
    check_dcdm_options(M, n_orth, patience, min_gain, fallback_precond)
    t_start = time.perf_counter()
    reason = _no_network_reason(A, b, grid_shape, cell_types, model)
    if reason is not None:
        return _without_network(A, b, x0, rtol, atol, maxiter, callback, fallback_precond, reason, t_start)
    system = make_system(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback)
    if system.matrix is not None:
        check_symmetric(system.matrix)
    from ..precond.learned import NetworkDirection, resolve_grid_shape, resolve_model

    if grid_shape is None and cell_types is not None:
        grid_shape = np.shape(cell_types)  # the grid the caller gave: a pattern of decoupled cells shows none
    shape = resolve_grid_shape(grid_shape, system.n, system.matrix, model)
    net = resolve_model(model, len(shape))
    direction = NetworkDirection(net, shape, system.matrix, cell_types, device=device)
    model_name = os.path.basename(getattr(net, "source_path", "") or "") or type(net).__name__
    coarse = build_deflation(deflation, system.matrix, shape, direction.fluid)
    setup_time = time.perf_counter() - t_start

    extras = {"model": model_name, "grid_shape": shape, "n_orth": int(n_orth),
              "network_optimized": direction.optimized,
              "deflation_block": coarse.block if coarse else None,
              "deflation_coarse_size": coarse.n_coarse if coarse else 0}
    if system.bnorm == 0.0:
        return SolveResult(x=np.zeros_like(system.b), converged=True, info=0, iterations=0, residual_norms=[0.0],
                           method="dcdm", time_s=time.perf_counter() - t_start, true_residual_norm=0.0,
                           b_norm=0.0, residual_kind="true", message="b is zero; x = 0 is exact", extras=extras)
    matvec = system.matrix.dot if system.matrix is not None else system.A.matvec
    fallback_setup = []

    def fallback_preconditioner():
        M_fb, name, setup = _fallback_preconditioner(system.matrix, fallback_precond)
        fallback_setup.append(setup)
        return (M_fb.matvec if M_fb is not None else None), name

    x, info, its, norms, true_norm, message, method, more = run_dcdm(
        NUMPY, matvec, direction, system.b.astype(np.float64), system.x.astype(np.float64), tol=system.tol,
        maxiter=system.maxiter, n_orth=n_orth, patience=patience, min_gain=min_gain, fallback=fallback,
        fallback_preconditioner=fallback_preconditioner, coarse=coarse, callback=system.callback)
    extras.update(more, network_time_s=round(direction.net_time_s, 4))
    x = np.asarray(x, dtype=np.float64).astype(system.dtype, copy=False)
    if system.dtype != np.float64:
        # The loop ran in double; the x returned is the caller's precision, and so is the verdict.
        true_norm = float(np.linalg.norm(system.b.astype(np.float64) - matvec(x.astype(np.float64))))
        if info == 0 and true_norm > system.tol:
            info = max(its, 1)
            message = (f"not converged: x rounded to {system.dtype} leaves ||b - A x|| = {true_norm:.3e} above "
                       f"the tolerance {system.tol:.3e} (reached in double)")
    return SolveResult(x=x, converged=info == 0,
                       info=info, iterations=its, residual_norms=norms, method=method,
                       time_s=time.perf_counter() - t_start, setup_time_s=setup_time + sum(fallback_setup),
                       true_residual_norm=true_norm, b_norm=system.bnorm, residual_kind="true", message=message,
                       extras=extras)


def dcdm_loop(ops, matvec, direction, b, x, *, tol, maxiter, n_orth=2, patience=3, min_gain=0.25,
              callback=None, check_every=1, window=PROGRESS_WINDOW):
    """The safeguarded DCDM iteration (module notes), on any array kind of :mod:`linsolve.backends.array_api`.

    Each iteration: ``q = direction(r)``; A-orthogonalise ``q`` against the
    last ``n_orth`` directions; if ``q^T A q > 0`` and ``q^T r != 0`` step
    ``x += (q^T r / q^T A q) q`` (and remember ``q``), otherwise skip the step;
    then the **true** residual ``r = b - A x``. The
    step's A-norm error decrease ``(q^T r)^2 / q^T A q`` is compared with a
    steepest-descent step's ``(r^T r)^2 / r^T A r``; ``patience`` insufficient
    iterations in a row (``< min_gain`` times it), ``window`` iterations
    (:data:`PROGRESS_WINDOW`) without a true residual :data:`PROGRESS_FACTOR`
    times the reference one (the last to get there; the first one at the
    start), or NaN/Inf stop the loop with a
    ``stall`` reason so that the caller can fall back to PCG. ``min_gain=0``
    (or ``window=None``) switches the progress window off.

    Batched checks (``check_every = k > 1``, no callback): *k* iterations run
    with every decision taken on the device (a skipped step is a zero step);
    their scalars come back in one transfer and the host replays the NumPy
    single-step decisions on them. If any iteration of the batch stops, skips a
    step or stalls, ``x``, ``r`` and the remembered directions are restored
    from the start of the batch and the iterations up to it are replayed one
    by one with host decisions (each replayed step costs one network call),
    so the iterates, count and history equal those of the unbatched loop.
    After a rewind the next batch is half as long (down to single checked
    steps) and it doubles back to ``k`` after each unbatched step, which
    bounds the wasted network calls when steps are skipped often.

    Returns ``(x, info, iterations, residual_norms, true_norm, message, stall, gains)``;
    ``stall`` is ``""`` or the reason the network was given up on, ``gains`` the
    per-iteration ratio to steepest descent.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.array_api import NUMPY
    >>> from linsolve.krylov.dcdm import dcdm_loop
    >>> A = linsolve.problems.poisson((6, 6)); b = np.ones(36)
    >>> out = dcdm_loop(NUMPY, A.dot, lambda r: r.copy(), b, np.zeros(36), tol=1e-8, maxiter=500,
    ...                 min_gain=0.0)
    >>> out[1], out[4] <= 1e-8
    (0, True)
    """
    host, norm, dot = ops.to_float, ops.norm, ops.dot
    r = b - matvec(x)
    rnorm_dev = norm(r)
    rnorm = host(rnorm_dev)
    norms = [rnorm]
    gains = []
    iteration, bad = 0, 0
    # Progress check: the reference residual (the last one to fall below PROGRESS_FACTOR x the one before), and when.
    best, best_at = rnorm, 0
    watch = bool(window) and min_gain > 0
    hist = []  # (p, A p, p^T A p) of the last n_orth accepted directions
    keep = max(int(n_orth), 0)
    batched = check_every > 1 and callback is None
    batch = check_every
    replay = 0

    def propose(r, hist):
        q = direction(r)
        finite_q = ops.all_finite(q)
        for p_j, ap_j, pap_j in hist:
            ops.sub_scaled(q, dot(q, ap_j) / pap_j, p_j)
        aq = matvec(q)
        ar = matvec(r)
        rr = dot(r, r)
        return q, aq, (finite_q, dot(q, aq), dot(q, r), rr * rr, dot(r, ar))

    def commit(x, q, aq, alpha, hist):
        ops.add_scaled(x, alpha, q)
        if keep:
            hist = (hist + [(q, aq, None)])[-keep:]
        r = b - matvec(x)
        return r, norm(r), hist

    def judge(finite_q, qaq, qr, rr2, rar):
        """Host decisions: (nan_reason, accept, gain ratio, insufficient)."""
        if not finite_q:
            return "the network returned NaN/Inf", False, 0.0, False
        if not (math.isfinite(qaq) and math.isfinite(qr)):
            return "NaN/Inf in the network direction's line search", False, 0.0, False
        # rᵀAr <= 0 means A is not SPD: no direction counts as good, and the PCG fallback reports the breakdown.
        sd_gain = rr2 / rar if rar > 0 else math.inf
        gain = qr * qr / qaq if qaq > 0 else 0.0
        return "", (qaq > 0 and qr != 0), (gain / sd_gain if sd_gain > 0 else 0.0), gain < min_gain * sd_gain

    def progress(it, rn, best, best_at):
        """(best, best_at, stalled) once iteration ``it`` has left the true residual norm ``rn``."""
        if rn <= PROGRESS_FACTOR * best:
            return rn, it, False
        return best, best_at, watch and it - best_at >= window and rn > tol

    def finish(info, message, stall=""):
        true_norm = host(norm(b - matvec(x)))
        return x, info, iteration, norms, true_norm, message, stall, gains

    while True:
        if rnorm <= tol:
            return finish(0, "converged (true residual)")
        if iteration >= maxiter:
            return finish(iteration, f"not converged after {iteration} iterations")
        if batched and replay == 0 and batch > 1:
            steps = min(batch, maxiter - iteration)
            saved = (ops.copy(x), r, rnorm_dev, list(hist))
            pending = []
            for _ in range(steps):
                q, aq, sc = propose(r, hist)
                finite_q, qaq, qr = sc[0], sc[1], sc[2]
                ok = (qaq > 0) & (qr != 0)
                alpha = ops.select(ok, qr / qaq, ops.zeros_like(qaq))
                r, rnorm_dev, hist = commit(x, q, aq, alpha, [(p, ap, pap) for p, ap, pap in hist])
                hist = [(p, ap, qaq if pap is None else pap) for p, ap, pap in hist]
                pending += list(sc) + [rnorm_dev]
            values = ops.to_host(pending)
            stop, sim_bad, batch_gains = None, bad, []
            sim_best, sim_at = best, best_at
            for j in range(steps):
                fq, qaq_h, qr_h, rr2, rar, rn = values[6 * j:6 * j + 6]
                reason, accept, ratio, insufficient = judge(fq > 0, qaq_h, qr_h, rr2, rar)
                sim_bad = sim_bad + 1 if insufficient else 0
                sim_best, sim_at, no_progress = progress(iteration + j + 1, rn, sim_best, sim_at)
                batch_gains.append(ratio)
                if (reason or not accept or sim_bad >= patience or no_progress or not (rn > tol)
                        or not math.isfinite(rn)):
                    stop = j
                    break
            if stop is None:
                iteration += steps
                bad = sim_bad
                best, best_at = sim_best, sim_at
                gains += batch_gains
                norms += values[5::6]
                rnorm = norms[-1]
                continue
            x, r, rnorm_dev, hist = saved
            replay = stop + 1
            # Skipped steps can recur; halving the batch bounds the replayed network calls.
            batch = max(1, batch // 2)
            continue
        if replay:
            replay -= 1
        elif batched:
            batch = min(check_every, 2 * batch)
        q, aq, sc = propose(r, hist)
        fq, qaq_h, qr_h, rr2, rar = ops.to_host(list(sc))
        reason, accept, ratio, insufficient = judge(fq > 0, qaq_h, qr_h, rr2, rar)
        if reason:
            return finish(-3, "breakdown: " + reason, stall=reason)
        gains.append(ratio)
        bad = bad + 1 if insufficient else 0
        if accept:
            r, rnorm_dev, hist = commit(x, q, aq, qr_h / qaq_h, hist)
            hist = [(p, ap, qaq_h if pap is None else pap) for p, ap, pap in hist]
        else:
            r = b - matvec(x)
            rnorm_dev = norm(r)
        iteration += 1
        rnorm = host(rnorm_dev)
        norms.append(rnorm)
        if callback is not None:
            callback(ops.copy(x))
        best, best_at, no_progress = progress(iteration, rnorm, best, best_at)
        if bad >= patience and rnorm > tol:
            reason = (f"the network's directions reduced the A-norm error by less than {min_gain:g}x a "
                      f"steepest-descent step for {patience} iterations")
            return finish(iteration, "stopped: " + reason, stall=reason)
        if no_progress:
            reason = (f"the network's directions stopped making progress: the true residual did not fall below "
                      f"{PROGRESS_FACTOR:g}x its value at iteration {best_at} ({best:.3e}) in "
                      f"{iteration - best_at} iterations")
            return finish(iteration, "stopped: " + reason, stall=reason)
