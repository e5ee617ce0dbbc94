"""PCG with a preconditioner built for the matrix: one driver for every preconditioner builder.

:func:`pcg_with` builds (or reuses) a preconditioner, runs :func:`linsolve.krylov.cg.cg_result`
with it and reports setup and solve apart. When the preconditioner knows the
matrix is singular (``M.zero_rows``: rows of A that are entirely zero;
``M.nullspace_labels``: closed regions whose constants are a null space, as
the structured multigrid reports them) the driver solves the consistent part:
``b`` is projected onto the range of A, CG runs on it, and the returned ``x``
has no null-space component. Convergence is still judged on the caller's
``b``: an inconsistent ``b`` (a non-zero mean on a closed region, a non-zero
entry in a zero row) can only be solved in the least-squares sense, and is
reported as not converged when that residual exceeds the tolerance.

The methods registered with :func:`linsolve.solve` that run through it are
:func:`gmg_pcg_result` (``"gmg-pcg"``), :func:`learned_pcg_result`
(``"learned-pcg"``), :func:`amg_cg_result` (``"amg-cg"``) and
:func:`ic_cg_result` (``"ic-cg"``), :func:`banded_cg_result` (``"banded-cg"``),
:func:`factor_cg_result` (``"factor-cg"``) and :func:`jacobi_cg_result` (``"jacobi-cg"``).
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import scipy.sparse as sp

from .._result import SolveResult
from .._validation import as_sparse_matrix, as_vector, check_maxiter, user_stacklevel
from .._threads import limit_blas
from .cg import STALL_AFTER, cg_result

__all__ = ["pcg_with", "gmg_pcg_result", "learned_pcg_result", "amg_cg_result", "ic_cg_result", "banded_cg_result",
           "factor_cg_result", "jacobi_cg_result", "project_range"]


def project_range(b, zero_rows=None, labels=None):
    """``b`` with its null-space part removed: 0 on zero rows, mean 0 on every closed region.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.krylov.pcg import project_range
    >>> project_range(np.array([1.0, 2.0, 3.0, 5.0]), np.array([False, False, False, True]),
    ...               np.array([0, 0, -1, -1])).tolist()
    [-0.5, 0.5, 3.0, 0.0]
    """
    out = np.array(b, dtype=np.result_type(b, np.float64), copy=True)
    if zero_rows is not None and np.any(zero_rows):
        out[zero_rows] = 0.0
    if labels is not None:
        inside = labels >= 0
        if np.any(inside):
            lab = labels[inside]
            means = np.bincount(lab, weights=out[inside]) / np.maximum(np.bincount(lab), 1)
            out[inside] -= means[lab]
    return out


#: A closed region (no Dirichlet row) is exactly singular, and its constant projected out, only where every row
#: sums to zero within this fraction of its diagonal (in float64). Float32 data of a closed two-phase box sum to
#: -8e-8 there: regular as stored (slightly indefinite), and the projection left 6e-5 of b out of reach (200
#: iterations, unconverged) where PCG on the matrix as it is converges in 14, as auto_cg does.
NULL_ROW_SUM_RTOL = 1e-10


def exactly_singular_regions(A, labels):
    """``labels`` (closed regions of a preconditioner, ``-1`` elsewhere) keeping only the regions whose
    constant A annihilates (:data:`NULL_ROW_SUM_RTOL`); ``None`` when none is left."""
    if labels is None or not np.any(labels >= 0):
        return None
    mat = as_sparse_matrix(A, "A")
    inside = labels >= 0
    sums = np.abs(np.asarray(mat.sum(axis=1, dtype=np.float64)).ravel())
    diag = np.abs(mat.diagonal().astype(np.float64))
    off = np.zeros(int(labels.max()) + 1)
    np.maximum.at(off, labels[inside], sums[inside] / np.where(diag[inside] > 0, diag[inside], 1.0))
    inexact = off > NULL_ROW_SUM_RTOL
    if not inexact.any():
        return labels
    kept = np.where(inside & ~inexact[np.maximum(labels, 0)], labels, -1)
    if not np.any(kept >= 0):
        return None
    _, renumbered = np.unique(kept[kept >= 0], return_inverse=True)
    out = np.full_like(labels, -1)
    out[kept >= 0] = renumbered
    return out


def pcg_with(build, name, A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
             preconditioner=None, accepts=None, keyword="preconditioner", label=None) -> SolveResult:
    """PCG preconditioned by ``build()`` (or by ``preconditioner``, built earlier for the same A).

    The one PCG driver behind every method that builds its own preconditioner
    (``amg-cg``, ``ic-cg``, ``gmg-pcg``, ``learned-pcg``). ``name`` is the
    reported method, or a callable ``name(preconditioner) -> str`` (then ``label`` names the method in
    error messages).
    ``accepts`` is the type a reused ``preconditioner`` must have
    (``keyword``: the argument name error messages use). The
    result's ``setup_time_s`` is the build (0 when reused),
    ``extras["preconditioner"]`` the operator (pass it back as
    ``preconditioner=`` while A is unchanged).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.krylov.pcg import pcg_with
    >>> A = linsolve.problems.poisson((16, 16)); b = np.ones(256)
    >>> res = pcg_with(lambda: linsolve.precond.ssor(A), "my-ssor-cg", A, b, rtol=1e-8)
    >>> again = pcg_with(None, "my-ssor-cg", A, b, rtol=1e-8, preconditioner=res.extras["preconditioner"])
    >>> res.converged, again.iterations == res.iterations, again.setup_time_s
    (True, True, 0.0)
    """
    label = label or (name if isinstance(name, str) else "pcg")
    if M is not None:
        raise ValueError(f"method={label!r} builds its own preconditioner; do not pass M "
                         f"(reuse one with preconditioner=...)")
    with limit_blas():
        if preconditioner is not None:
            if accepts is not None and not isinstance(preconditioner, accepts):
                raise TypeError(f"{keyword} must be a {accepts.__name__} built for this A, got "
                                f"{type(preconditioner).__name__}")
            n = A.shape[0]
            if tuple(preconditioner.shape) != (n, n):
                raise ValueError(f"{keyword} was built for shape {tuple(preconditioner.shape)}, but A has "
                                 f"shape {(n, n)}")
            precond, setup = preconditioner, 0.0
        else:
            t0 = time.perf_counter()
            precond = build()
            setup = time.perf_counter() - t0
        zero_rows = getattr(precond, "zero_rows", None)
        labels = exactly_singular_regions(A, getattr(precond, "nullspace_labels", None))
        block = precond.coupled_block() if hasattr(precond, "coupled_block") else None
        res = None if block is None else _block_cg(A, b, x0, rtol, atol, maxiter, callback, block, zero_rows, labels)
        if res is None:
            if (zero_rows is None or not np.any(zero_rows)) and labels is None:
                res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=precond, callback=callback,
                                stall_after=STALL_AFTER)
            else:
                res = _singular_cg(A, b, x0, rtol, atol, maxiter, precond, callback, zero_rows, labels)
    res.method = name if isinstance(name, str) else name(precond)
    res.setup_time_s = setup
    res.extras.update(levels=len(getattr(precond, "levels", ())), model=getattr(precond, "name", None),
                      preconditioner=precond)
    return res


def _deprecated_alias(value, alias: str, preconditioner, method: str):
    """``(preconditioner, keyword)``: the one given, or the method's old keyword for it (with a warning)."""
    if value is None:
        return preconditioner, "preconditioner"
    warnings.warn(f"{alias}= is deprecated for method={method!r}; pass preconditioner= (the one keyword that "
                  f"reuses a built preconditioner for every method)", DeprecationWarning, stacklevel=user_stacklevel())
    if preconditioner is not None:
        raise TypeError(f"pass preconditioner= or {alias}=, not both")
    return value, alias


def amg_cg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None, amg_kind="sa",
                  preconditioner=None, hierarchy=None, **amg_options) -> SolveResult:
    """CG preconditioned by a PyAMG V-cycle: the driver of ``solve(method="amg-cg")``.

    ``amg_kind`` (``"sa"`` or ``"rs"``) and ``amg_options`` go to
    :func:`linsolve.precond.amg`; ``preconditioner`` reuses an
    :class:`~linsolve.precond.amg.AMGPreconditioner` built earlier
    (``hierarchy=`` is its deprecated alias). ``res.method`` is
    ``"amg-cg(sa)"`` or ``"amg-cg(rs)"``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.krylov.pcg import amg_cg_result
    >>> A = linsolve.problems.poisson((16, 16, 16))
    >>> res = amg_cg_result(A, np.ones(A.shape[0]), rtol=1e-8, amg_kind="rs")
    >>> res.converged, res.method
    (True, 'amg-cg(rs)')
    """
    from ..precond.amg import AMGPreconditioner, amg

    preconditioner, keyword = _deprecated_alias(hierarchy, "hierarchy", preconditioner, "amg-cg")
    if "kind" in amg_options:  # precond.amg's own name for it (solve(..., kind="rs") gave a bare TypeError)
        kind = amg_options.pop("kind")
        if amg_kind not in (None, kind) and amg_kind != "sa":
            raise TypeError(f"amg-cg got kind={kind!r} and amg_kind={amg_kind!r}: pass one of them")
        amg_kind = kind
    res = pcg_with(lambda: amg(A, kind=amg_kind, **amg_options), lambda P: f"amg-cg({P.kind})", A, b,
                   label="amg-cg", x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback,
                   preconditioner=preconditioner, accepts=AMGPreconditioner, keyword=keyword)
    precond = res.extras["preconditioner"]
    res.extras.update(levels=len(precond.hierarchy.levels), amg_levels=len(precond.hierarchy.levels),
                      hierarchy=precond)
    return res


def ic_cg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None, shift=0.0,
                 preconditioner=None, factor=None, **options) -> SolveResult:
    """CG preconditioned by IC(0) (:func:`linsolve.precond.ic0`): the driver of ``solve(method="ic-cg")``.

    ``shift`` goes to :func:`~linsolve.precond.ic0`; ``preconditioner`` reuses
    an :class:`~linsolve.precond.ic.IC0Preconditioner` (``factor=`` is its
    deprecated alias); ``extras["ic0"]`` is the factor used.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.krylov.pcg import ic_cg_result
    >>> A = linsolve.problems.poisson((16, 16, 16))
    >>> res = ic_cg_result(A, np.ones(A.shape[0]), rtol=1e-8)
    >>> res.converged, res.method
    (True, 'ic-cg')
    """
    from ..precond.ic import IC0Preconditioner, ic0

    if options:
        raise TypeError(f"method 'ic-cg' got unexpected options: {sorted(options)}")
    preconditioner, keyword = _deprecated_alias(factor, "factor", preconditioner, "ic-cg")
    res = pcg_with(lambda: ic0(A, shift=shift), "ic-cg", A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M,
                   callback=callback, preconditioner=preconditioner, accepts=IC0Preconditioner,
                   keyword=keyword)
    res.extras.update(ic0=res.extras["preconditioner"], shift=res.extras["preconditioner"].shift)
    return res


def banded_cg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                     preconditioner=None, max_bandwidth=None, **options) -> SolveResult:
    """CG preconditioned by an exact banded Cholesky factor (:func:`linsolve.precond.banded_cholesky`).

    The driver of ``solve(method="banded-cg")``, which ``method="auto"`` takes
    for a matrix of small bandwidth (a 1D problem, a strip a few cells wide):
    one or two PCG iterations, the second only where the factor's rounding
    leaves the tolerance unmet. ``preconditioner`` reuses a factor of the same
    A; ``extras["preconditioner"]`` is the factor used.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> n = 10_000                                  # 1D: plain CG needs about n iterations
    >>> A = sp.diags([-np.ones(n - 1), 2 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1], format="csr")
    >>> res = linsolve.solve(A, np.ones(n), method="banded-cg", rtol=1e-8)
    >>> res.converged, res.iterations
    (True, 1)
    """
    from ..precond.banded import BandedCholeskyPreconditioner, banded_cholesky

    if options:
        raise TypeError(f"method 'banded-cg' got unexpected options: {sorted(options)}")
    return pcg_with(lambda: banded_cholesky(A, max_bandwidth=max_bandwidth), "banded-cg", A, b, x0=x0, rtol=rtol,
                    atol=atol, maxiter=maxiter, M=M, callback=callback, preconditioner=preconditioner,
                    accepts=BandedCholeskyPreconditioner)


def factor_cg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                     preconditioner=None, max_rows=None, **options) -> SolveResult:
    """CG preconditioned by an exact sparse factor (:func:`linsolve.precond.sparse_factor`).

    ``solve(method="factor-cg")``: for a fixed 2D matrix solved with many
    right-hand sides, factor once (``extras["preconditioner"]``) and pass it
    back as ``preconditioner=``; each later solve is one back-solve and one PCG
    iteration (a second only where the factor's rounding leaves the tolerance
    unmet). ``max_rows``: as in ``sparse_factor`` (default its
    :data:`~linsolve.precond.direct.MAX_FACTOR_CELLS`). ``auto_cg`` switches to
    it by itself for a fixed 2D matrix once the solves have paid for the factor.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((128, 128))
    >>> first = linsolve.solve(A, np.ones(A.shape[0]), method="factor-cg", rtol=1e-8)
    >>> again = linsolve.solve(A, np.arange(A.shape[0]), method="factor-cg", rtol=1e-8,
    ...                        preconditioner=first.extras["preconditioner"])
    >>> again.converged, again.iterations, again.setup_time_s
    (True, 1, 0.0)
    """
    from ..precond.direct import MAX_FACTOR_CELLS, SparseFactorPreconditioner, sparse_factor

    if options:
        raise TypeError(f"method 'factor-cg' got unexpected options: {sorted(options)}")
    limit = MAX_FACTOR_CELLS if max_rows is None else max_rows
    return pcg_with(lambda: sparse_factor(A, max_rows=limit), "factor-cg", A, b, x0=x0, rtol=rtol, atol=atol,
                    maxiter=maxiter, M=M, callback=callback, preconditioner=preconditioner,
                    accepts=SparseFactorPreconditioner)


def jacobi_cg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                     preconditioner=None, **options) -> SolveResult:
    """CG preconditioned by the diagonal (:func:`linsolve.precond.jacobi`).

    ``solve(method="jacobi-cg")``, which ``method="auto"`` takes for a matrix
    well conditioned only once its diagonal is scaled out
    (:func:`linsolve._auto.jacobi_pays`: a transient step on cells of very
    different volumes).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp, linsolve
    >>> A = (sp.diags(np.geomspace(1.0, 1e3, 4096)) * 1e3 + linsolve.problems.poisson((64, 64))).tocsr()
    >>> res = linsolve.solve(A, np.ones(4096), method="jacobi-cg", rtol=1e-8)
    >>> res.converged, res.iterations < 10
    (True, True)
    """
    from ..precond.jacobi import JacobiPreconditioner, jacobi

    if options:
        raise TypeError(f"method 'jacobi-cg' got unexpected options: {sorted(options)}")
    return pcg_with(lambda: jacobi(A), "jacobi-cg", A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M,
                    callback=callback, preconditioner=preconditioner, accepts=JacobiPreconditioner)


def _block_cg(A, b, x0, rtol, atol, maxiter, callback, block, zero_rows, labels):
    """CG on the coupled block of A alone, the decoupled rows outside it solved exactly; None where it cannot.

    ``block`` (``rows``, ``operator``, ``outside_inv``, ``outside_zero``) comes
    from the preconditioner (e.g. a multigrid cropped to the cells a free
    surface leaves coupled). Every row outside ``rows`` holds its diagonal
    only, so ``x = b / a_ii`` there, and the Krylov vectors need not carry those
    cells. The stopping rule and the reported residual are the whole
    system's: ``||b - A x|| <= max(rtol ||b||, atol)``, checked on ``b - A x``
    with the full A. Returns None (the caller solves the whole matrix) when
    a row inside couples to one outside, or when b is non-zero on a zero row
    outside (an inconsistent b, which the whole-matrix path reports).
    """
    from ..kernels.spmv import csr_principal_block

    mat = as_sparse_matrix(A, "A")
    n = mat.shape[0]
    b_arr = as_vector(b, n, "b")
    rows = block.rows
    if isinstance(x0, str) or b_arr.dtype.kind == "c" or np.any(b_arr[block.outside_zero]):
        return None
    ptr, idx, data, closed = csr_principal_block(mat.indptr, mat.indices, mat.data, rows, n)
    if not closed:
        return None
    sub = sp.csr_matrix((data, idx, ptr), shape=(rows.size, rows.size))
    b_norm = float(np.linalg.norm(b_arr))
    target = max(float(rtol) * b_norm, float(atol))
    outside = b_arr * block.outside_inv                            # 0 inside the block, b / a_ii outside
    x0_rows = None if x0 is None else as_vector(x0, n, "x0")[rows]

    def on_grid(x_rows):
        full = outside.copy()
        full[rows] = x_rows
        return full

    inner_callback = None if callback is None else (lambda x_rows: callback(on_grid(x_rows)))
    b_rows = b_arr[rows]
    # the same absolute tolerance; b's part outside the block is met exactly
    rows_norm = float(np.linalg.norm(b_rows))
    rtol_rows = float(rtol) * b_norm / rows_norm if rows_norm > 0 else 0.0
    atol_rows = float(atol) if rows_norm > 0 else target
    zero_in = None if zero_rows is None else zero_rows[rows]
    labels_in = None if labels is None else labels[rows]
    if (zero_in is None or not np.any(zero_in)) and (labels_in is None or not np.any(labels_in >= 0)):
        res = cg_result(sub, b_rows, x0_rows, rtol=rtol_rows, atol=atol_rows, maxiter=maxiter, M=block.operator,
                        callback=inner_callback, stall_after=STALL_AFTER)
    else:
        res = _singular_cg(sub, b_rows, x0_rows, rtol_rows, atol_rows, maxiter, block.operator, inner_callback,
                           zero_in, labels_in)
    x = on_grid(res.x).astype(res.x.dtype, copy=False)              # the whole path's dtype (float32 stays)
    true = float(np.linalg.norm(b_arr - mat @ x))
    res.x, res.true_residual_norm, res.b_norm = x, true, b_norm
    if res.converged and true > target:  # rounding outside the block; never claim what b - A x denies
        res.converged = False
        res.info = max(res.iterations, 1)
        res.message = f"true residual {true:.3e} exceeds the tolerance {target:.3e}"
    res.extras["coupled_rows"] = int(rows.size)
    return res


def _singular_cg(A, b, x0, rtol, atol, maxiter, precond, callback, zero_rows, labels) -> SolveResult:
    """CG on the consistent part of a singular system; convergence judged on the caller's ``b``."""
    mat = as_sparse_matrix(A, "A")
    b_arr = as_vector(b, mat.shape[0], "b")
    target = max(float(rtol) * float(np.linalg.norm(b_arr)), float(atol))
    b_proj = project_range(b_arr, zero_rows, labels)
    inconsistent = float(np.linalg.norm(b_arr - b_proj))
    # Whatever x is, ||b - A x||^2 = ||b_proj - A x||^2 + inconsistent^2 (the range and the null space
    # are orthogonal), so the projected system gets exactly the tolerance that is left.
    reachable = target > inconsistent
    # Out of reach, the consistent part is solved to the accuracy asked for relative to b (an atol alone, with
    # rtol = 0, asked a tolerance of 0 there: 10 n iterations into rounding).
    b_norm = float(np.linalg.norm(b_arr))
    relative = max(float(rtol), float(atol) / b_norm if b_norm > 0 else 0.0)
    tol = np.sqrt(target ** 2 - inconsistent ** 2) if reachable else relative * float(np.linalg.norm(b_proj))
    # The V-cycle is definite on the range of A but leaves null-space parts in its output; CG would carry them
    # along in every direction, where they grow until p^T A p is lost in rounding. Projecting the output keeps
    # the preconditioner symmetric, definite on the range, and inside it.
    from scipy.sparse.linalg import LinearOperator

    projected = LinearOperator(precond.shape, dtype=np.float64,
                               matvec=lambda r: project_range(precond.matvec(r), zero_rows, labels))
    res = cg_result(mat, b_proj, x0, rtol=0.0, atol=tol, maxiter=maxiter, M=projected, callback=callback,
                    stall_after=STALL_AFTER)
    x = project_range(res.x, zero_rows, labels)
    true = float(np.linalg.norm(b_arr - mat @ x))
    res.x = x
    res.true_residual_norm = true
    res.b_norm = float(np.linalg.norm(b_arr))
    converged = res.info == 0 and true <= target
    if not converged and res.info == 0:
        res.info = max(res.iterations, 1)
        res.message = (f"b is inconsistent with the null space of A (zero rows or closed regions): its part "
                       f"there, {inconsistent:.3e}, exceeds the tolerance {target:.3e}; x is the least-squares "
                       f"solution")
    res.converged = converged
    n_closed = int(labels.max()) + 1 if labels is not None and labels.size and labels.max() >= 0 else 0
    res.extras.update(nullspace_dim=n_closed + int(np.count_nonzero(zero_rows)) if zero_rows is not None
                      else n_closed, inconsistency=inconsistent)
    return res


def gmg_pcg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                   cell_types=None, grid_shape=None, preconditioner=None, **mg_options) -> SolveResult:
    """PCG with the classical structured multigrid (:func:`~linsolve.precond.multigrid.geometric_mg`).

    ``method="gmg-pcg"``. ``preconditioner`` reuses a V-cycle built earlier
    (A unchanged across frames); ``mg_options`` go to ``geometric_mg``.
    ``residual_norms`` are the CG recurrence residuals; the true residual of
    ``x`` is checked before ``converged`` is claimed. Singular matrices with
    zero rows or closed regions are handled (see the module docstring).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.krylov.pcg import gmg_pcg_result
    >>> A = linsolve.problems.poisson((24, 24, 24))
    >>> res = gmg_pcg_result(A, np.ones(A.shape[0]), rtol=1e-8, grid_shape=(24, 24, 24))
    >>> res.converged, res.iterations < 15
    (True, True)
    """
    from ..precond.multigrid import GeometricMG, geometric_mg

    _refuse_unknown_keywords("gmg-pcg", geometric_mg, mg_options, skip=("A", "cell_types", "grid_shape"))
    res = pcg_with(lambda: geometric_mg(A, cell_types, grid_shape=grid_shape, **mg_options), "gmg-pcg", A, b,
                   x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback,
                   preconditioner=preconditioner, accepts=GeometricMG)
    if "precision" in mg_options:
        return res
    return _in_double_after_breakdown(
        res, lambda: geometric_mg(A, cell_types, grid_shape=grid_shape, precision="double", **mg_options),
        "gmg-pcg", A, b, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback)


def _refuse_unknown_keywords(method: str, builder, options, skip=()) -> None:
    """``TypeError`` naming the method and what it takes, not the builder's bare "unexpected keyword"."""
    import inspect

    taken = [name for name in inspect.signature(builder).parameters if name not in skip]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise TypeError(f"method {method!r} got unexpected options: {unknown} (it takes {sorted(taken)}, "
                        f"and the common ones of linsolve.solve)")


def learned_pcg_result(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None,
                       cell_types=None, grid_shape=None, model=None, preconditioner=None,
                       **mg_options) -> SolveResult:
    """PCG with the learned structured multigrid (:func:`~linsolve.precond.multigrid.fast_learned`).

    ``method="learned-pcg"``; same contract as :func:`gmg_pcg_result`,
    ``model=None`` uses the shipped model for A's dimensionality.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.krylov.pcg import learned_pcg_result
    >>> A = linsolve.problems.poisson((16, 16, 16))
    >>> plain = {"weights": np.zeros((1, 6)), "bias": [0.0], "log_correction": [0.0]}
    >>> res = learned_pcg_result(A, np.ones(A.shape[0]), rtol=1e-8, model=plain, grid_shape=(16, 16, 16))
    >>> res.converged
    True
    """
    from ..precond.multigrid import GeometricMG, fast_learned

    _refuse_unknown_keywords("learned-pcg", fast_learned, mg_options, skip=("A", "cell_types", "model", "grid_shape"))
    res = pcg_with(lambda: fast_learned(A, cell_types, model, grid_shape=grid_shape, **mg_options),
                   "learned-pcg", A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, callback=callback,
                   preconditioner=preconditioner, accepts=GeometricMG)
    if "precision" in mg_options:
        return res
    return _in_double_after_breakdown(
        res, lambda: fast_learned(A, cell_types, model, grid_shape=grid_shape, precision="double", **mg_options),
        "learned-pcg", A, b, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback)


def _in_double_after_breakdown(res, build_double, name, A, b, *, rtol, atol, maxiter, callback) -> SolveResult:
    """PCG on from ``res.x`` with the cycle rebuilt in double precision, where the single-precision one broke
    down (``info < 0``: float32 rounding leaves a cycle indefinite on coefficient jumps of 1e5-1e6; 30 % single
    air cells at 1e6 on 256^2: stalled at 0.1 relative residual, in double 268 iterations).
    ``extras["preconditioner"]`` is then the double one, which a caller keeping it reuses."""
    from ..precond.multigrid import GeometricMG

    first = res.extras.get("preconditioner")
    if res.info >= 0 or getattr(first, "precision", None) != "single":
        return res
    left = check_maxiter(maxiter, A.shape[0]) - res.iterations
    if left <= 0:
        return res
    again = pcg_with(build_double, name, A, b, x0=res.x, rtol=rtol, atol=atol, maxiter=left, callback=callback,
                     accepts=GeometricMG).continuing(res)
    again.extras["single_precision_breakdown"] = res.message
    return again
