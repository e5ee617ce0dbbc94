"""KSP solves of assembled (CSR) systems: PC SOR with a tuned omega, local-block Python preconditioners.

* :class:`PETScSequenceSolver` runs KSP CG + PC SOR across a sequence of
  systems; the SOR relaxation factor omega is chosen per solve by any
  :mod:`linsolve.tuning` tuner, passed to PETSc through the options database
  (``-<prefix>pc_sor_omega``), and PETSc's iteration count is fed back to the
  tuner as the cost.
* :class:`LocalBlockPreconditioner` is a PETSc Python preconditioner
  (``pc.setType("python")``) applying any ``LinearOperator`` built from each
  rank's *local diagonal block* (block Jacobi): a learned preconditioner, AMG,
  SSOR...

Notes
-----
PETSc's PC SOR on a parallel (MPIAIJ) matrix is *local*: each rank sweeps
its own diagonal block (block Jacobi with SSOR inside each block, PETSc's
``-pc_sor_local_symmetric``, the only symmetric sweep MPIAIJ supports). With
one rank it is exactly SSOR; with ``p`` ranks it is a weaker preconditioner
than the single-process SSOR, so iteration counts grow with ``p`` while the
solution (to the stopping tolerance) does not change.

The stopping rule matches linsolve's: KSP uses the unpreconditioned residual
norm (``NORM_UNPRECONDITIONED``) and PETSc's default test
``||r|| <= max(rtol ||b||, atol)``; convergence is then confirmed on the true
residual ``b - A x`` (restarting from ``x`` when the recurrence has drifted).
"""
from __future__ import annotations

import numbers
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from ..._result import SolveResult
from ..._validation import as_preconditioner, check_maxiter, check_omega, check_tolerances
from ...sequence import SequenceCore
from ._core import (_BREAKDOWN_INFO, _Watchdog, _agree, _collective, _mpi, _outcome_message, _reason_name,
                    csr_to_petsc, get_comm, numpy_to_vec, require_petsc, vec_to_numpy)

__all__ = ["SYMMETRIC_KSP_TYPES", "local_preconditioner_factory", "LocalBlockPreconditioner", "FixedValue",
           "petsc_solve", "PETScSequenceSolver"]


# --------------------------------------------------------------------------- local-block preconditioner


def _ssor_operator(A: sp.csr_matrix, omega: float) -> LinearOperator:
    """SSOR ``M^-1 = w(2-w) (D + wU)^-1 D (D + wL)^-1`` with SuperLU triangular solves (fallback only)."""
    from scipy.sparse.linalg import splu

    diag = A.diagonal()
    lower = sp.tril(A, k=-1, format="csc")
    upper = sp.triu(A, k=1, format="csc")
    dmat = sp.diags(diag, format="csc")
    # NATURAL ordering keeps the triangular factor triangular: the LU is the matrix itself.
    low = splu((dmat + omega * lower).tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0)
    up = splu((dmat + omega * upper).tocsc(), permc_spec="NATURAL", diag_pivot_thresh=0.0)
    scale = omega * (2.0 - omega)

    def matvec(r):
        y = low.solve(np.ravel(r))
        return scale * up.solve(diag * y)

    return LinearOperator(A.shape, matvec=matvec, rmatvec=matvec, dtype=np.float64)


#: KSP types whose theory needs a symmetric (positive definite) preconditioner.
SYMMETRIC_KSP_TYPES = frozenset({"cg", "pipecg", "pipecgrr", "groppcg", "cr", "pipecr", "minres", "symmlq", "nash",
                                 "stcg", "gltr", "qcg", "chebyshev"})


def local_preconditioner_factory(kind="amg", **options) -> Callable[[sp.csr_matrix], LinearOperator]:
    """A function ``A_local_csr -> LinearOperator`` for :class:`LocalBlockPreconditioner`, by name.

    Parameters
    ----------
    kind : str or callable
        ``"amg"`` (PyAMG V-cycle, ``linsolve.precond.amg``; options ``amg_kind``),
        ``"ssor"`` (``linsolve.precond.ssor``; option ``omega``),
        ``"learned"`` (``linsolve.precond.learned``, the DCDM network, *not*
        symmetric: use ``ksp_type="fcg"`` or ``"gcr"``; options ``model``,
        ``grid_shape`` = this rank's block shape, e.g. from
        :func:`slab_partition`), ``"fast_learned"`` (the SPD multigrid learned
        preconditioner, ``linsolve.precond.multigrid.fast_learned``; options
        ``cell_types`` = this rank's block of cell codes, ``grid_shape`` = this
        rank's block shape, ``model``).
        A callable is returned unchanged.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.backends import petsc
    >>> make = petsc.local_preconditioner_factory("amg")
    >>> M = make(linsolve.problems.poisson((16, 16)))
    >>> M.shape
    (256, 256)
    """
    if callable(kind):
        if options:
            raise TypeError("options are only accepted with a preconditioner name, not a callable")
        return kind
    if kind == "amg":
        amg_kind = options.pop("amg_kind", "sa")

        def make(A_local):
            from ...precond import amg

            return amg(A_local, kind=amg_kind, **options)
    elif kind == "ssor":
        omega = check_omega(options.pop("omega", 1.0))
        if options:
            raise TypeError(f"ssor takes only omega, got {sorted(options)}")

        def make(A_local):
            try:
                from ...precond import ssor
            except ImportError:
                return _ssor_operator(A_local, omega)
            return ssor(A_local, omega=omega)
    elif kind == "learned":
        def make(A_local):
            from ...precond import learned

            return learned(A_local, **options)
    elif kind == "fast_learned":
        unknown = set(options) - {"cell_types", "model", "grid_shape", "coarse_size"}
        if unknown:
            raise TypeError(f"fast_learned takes cell_types, model, grid_shape, coarse_size; got {sorted(unknown)}")

        def make(A_local):
            from ...precond.multigrid import fast_learned

            kwargs = {k: v for k, v in options.items() if k != "cell_types"}
            return fast_learned(A_local, options.get("cell_types"), **kwargs)
    else:
        raise ValueError(f"unknown local preconditioner {kind!r}; use 'amg', 'ssor', 'learned', "
                         f"'fast_learned' or a callable A_local -> LinearOperator")
    return make


class LocalBlockPreconditioner:
    """PETSc Python preconditioner: a ``LinearOperator`` on each rank's local diagonal block (block Jacobi).

    At ``setUp`` each rank extracts the diagonal block of the operator it owns
    (rows and columns of its own unknowns; couplings to other ranks are
    dropped) as SciPy CSR and calls ``factory(A_local)``; ``apply`` then runs
    that operator on the rank's part of the residual. No communication
    happens inside ``apply``, so the preconditioner is
    ``blockdiag(M_0, ..., M_{p-1})``: symmetric positive definite (usable in
    CG) exactly when every local ``M_r`` is. Non-symmetric or nonlinear local
    operators (the DCDM network) need a flexible method (``ksp_type="fcg"``
    or ``"gcr"``).

    Parameters
    ----------
    factory : callable or str
        ``factory(A_local_csr) -> LinearOperator`` or a name accepted by
        :func:`local_preconditioner_factory`.
    **options
        Passed to :func:`local_preconditioner_factory` with a name.

    Examples
    --------
    >>> from linsolve.backends import petsc
    >>> ctx = petsc.LocalBlockPreconditioner("amg")
    >>> ctx.local_operator is None
    True
    """

    def __init__(self, factory="amg", **options):
        self.factory = local_preconditioner_factory(factory, **options)
        self.local_operator: Optional[LinearOperator] = None
        self.ksp_type: Optional[str] = None  # set by the solver that installs it (checks symmetry needs)
        self.setup_time_s = 0.0
        self.applications = 0
        self.error: Optional[BaseException] = None

    def setUp(self, pc):  # noqa: N802 - PETSc's name
        t0 = time.perf_counter()
        self.error = None
        _, P = pc.getOperators()
        comm = P.getComm()
        error = None
        try:
            block = P.getDiagonalBlock() if comm.getSize() > 1 else P
            indptr, indices, data = block.getValuesCSR()
            m = len(indptr) - 1
            A_local = sp.csr_matrix((np.array(data, dtype=np.float64), np.array(indices, dtype=np.int64),
                                     np.array(indptr, dtype=np.int64)), shape=(m, m))
            op = self.factory(A_local)
            if getattr(op, "symmetric", None) is False and self.ksp_type in SYMMETRIC_KSP_TYPES:
                raise ValueError(f"the local preconditioner {type(op).__name__} is not symmetric (e.g. the DCDM "
                                 f"network), but KSP {self.ksp_type!r} needs a symmetric preconditioner; use "
                                 f"ksp_type='fcg' or 'gcr'")
            self.local_operator = as_preconditioner(op, m, "local preconditioner")
        except Exception as exc:
            error = exc
        # setUp runs on every rank: agree, so a factory failing on one rank fails everywhere (no hang).
        try:
            _agree(comm, error if isinstance(error, (ValueError, TypeError)) or error is None
                   else RuntimeError(f"{type(error).__name__}: {error}"))
        except Exception as exc:
            self.error = exc  # PETSc wraps it in a PETSc.Error; the solver re-raises this one
            raise
        self.setup_time_s = time.perf_counter() - t0

    def apply(self, pc, x, y):
        r = x.getArray(readonly=True)
        z = np.asarray(self.local_operator.matvec(r), dtype=np.float64).ravel()
        y.setArray(z)
        self.applications += 1

    def applyTranspose(self, pc, x, y):  # noqa: N802
        r = x.getArray(readonly=True)
        z = np.asarray(self.local_operator.rmatvec(r), dtype=np.float64).ravel()
        y.setArray(z)

    def view(self, pc, viewer):
        name = type(self.local_operator).__name__ if self.local_operator is not None else "not set up"
        viewer.printfASCII(f"linsolve LocalBlockPreconditioner (block Jacobi), local operator: {name}\n")



# --------------------------------------------------------------------------- the KSP runner


class FixedValue:
    """A "tuner" that always suggests the same value (fixed omega baselines).

    Examples
    --------
    >>> from linsolve.backends.petsc import FixedValue
    >>> t = FixedValue(1.5); t.observe(10); t.suggest()
    1.5
    """

    def __init__(self, value: float):
        self.value = float(value)
        self.costs: List[float] = []

    def suggest(self, context=None) -> float:
        return self.value

    def observe(self, cost) -> None:
        self.costs.append(float(cost))

    def state_dict(self) -> dict:
        return {"value": self.value, "costs": list(self.costs)}


def _make_tuner(tuner, arms, context_range, seed):
    if tuner is None:
        return FixedValue(1.0)
    if isinstance(tuner, numbers.Real) and not isinstance(tuner, bool):
        return FixedValue(check_omega(tuner, "tuner (fixed omega)"))
    if isinstance(tuner, str):
        try:
            from ...tuning import make_tuner
        except ImportError as exc:
            raise ValueError(f"tuner {tuner!r} needs linsolve.tuning.make_tuner, which is not available: {exc}") \
                from None
        return make_tuner(tuner, arms=arms, context_range=context_range, seed=seed)
    if hasattr(tuner, "suggest") and hasattr(tuner, "observe"):
        return tuner
    raise TypeError(f"tuner must be None, a float omega, a tuner name or an object with suggest/observe, "
                    f"got {type(tuner).__name__}")



class _KSPRunner:
    """One KSP (with its own options prefix) reused across solves; collective."""

    _counter = 0

    def __init__(self, comm, *, pc="sor", ksp_type="cg", local_preconditioner=None, prefix=None,
                 petsc_options=None, timeout_s=None):
        PETSc = require_petsc()
        self.PETSc = PETSc
        self.comm = get_comm(comm)
        if not isinstance(pc, str):
            raise TypeError(f"pc must be a string ('sor', 'gamg', 'python', 'none', ...), got {type(pc).__name__}")
        if not isinstance(ksp_type, str):
            raise TypeError(f"ksp_type must be a string, got {type(ksp_type).__name__}")
        _KSPRunner._counter += 1
        self.prefix = prefix if prefix is not None else f"linsolve{_KSPRunner._counter}_"
        if not isinstance(self.prefix, str) or (self.prefix and not self.prefix.endswith("_")):
            raise ValueError(f"prefix must be a string ending in '_', got {prefix!r}")
        self.pc_type = pc
        self.ksp_type = ksp_type
        self.petsc_options = dict(petsc_options or {})
        self.watchdog = _Watchdog(timeout_s, self.comm.getRank())
        self.ksp = PETSc.KSP().create(comm=self.comm)
        self.ksp.setOptionsPrefix(self.prefix)
        try:
            self.ksp.setType(ksp_type)
        except PETSc.Error:
            # PETSc's own error is a code and a C traceback; name what is wrong, the same on every rank
            raise ValueError(f"unknown ksp_type {ksp_type!r}: use a PETSc KSP type such as 'cg', 'fcg', 'gcr' or "
                             f"'gmres'") from None
        self.ksp.setNormType(PETSc.KSP.NormType.NORM_UNPRECONDITIONED)
        pc_obj = self.ksp.getPC()
        self.shell = None
        if pc == "python":
            if local_preconditioner is None:
                local_preconditioner = "amg"
            self.shell = local_preconditioner if isinstance(local_preconditioner, LocalBlockPreconditioner) \
                else LocalBlockPreconditioner(local_preconditioner)
            self.shell.ksp_type = ksp_type
            pc_obj.setType(PETSc.PC.Type.PYTHON)
            pc_obj.setPythonContext(self.shell)
        else:
            if local_preconditioner is not None:
                raise ValueError("local_preconditioner is only used with pc='python'")
            try:
                pc_obj.setType(pc)
            except PETSc.Error:
                raise ValueError(f"unknown pc {pc!r}: use a PETSc PC type such as 'sor', 'jacobi', 'gamg', 'none', "
                                 f"or 'python' (a linsolve preconditioner per rank)") from None
        self._options_set: List[str] = []
        self.last_setup_s = 0.0

    def _set_options(self, omega):
        opts = self.PETSc.Options()
        values: Dict[str, Any] = dict(self.petsc_options)
        if self.pc_type == "sor":
            values["pc_sor_local_symmetric"] = None
            values["pc_sor_omega"] = repr(float(omega))
        for key, value in values.items():
            full = f"{self.prefix}{key}"
            opts[full] = "" if value is None else value
            self._options_set.append(full)

    def _clear_options(self):
        opts = self.PETSc.Options()
        for key in self._options_set:
            if opts.hasName(key):
                opts.delValue(key)
        self._options_set = []

    def solve(self, A_mat, b_vec, x_vec, *, rtol, atol, maxiter, omega, nonzero_guess, max_restarts=2,
              guess_if_better=False):
        """Solve in place into ``x_vec``; returns (iterations, reason_name, info, true_norm, bnorm, omega_used).

        With ``guess_if_better`` a nonzero guess is kept only when it beats zero
        (:meth:`linsolve.sequence.SequenceCore.warm_start_helps`);
        ``self.last_guess_used`` says whether it was.
        """
        PETSc = self.PETSc
        ksp = self.ksp
        ksp.setOperators(A_mat)
        ksp.setTolerances(rtol=rtol, atol=atol, max_it=maxiter)
        self._set_options(omega)
        try:
            # setFromOptions reads -<prefix>pc_sor_omega (and any user overrides on the command line); PCMG's
            # level smoothers read theirs during the first set-up, so the options live until after it.
            ksp.setFromOptions()
            ksp.setTolerances(rtol=rtol, atol=atol, max_it=maxiter)
            ksp.setNormType(PETSc.KSP.NormType.NORM_UNPRECONDITIONED)
            # Set the preconditioner up here (KSPSolve would do it) so its cost is reported apart from the solve.
            t_setup = time.perf_counter()
            with self.watchdog.guard("KSPSetUp"):
                try:
                    ksp.setUp()
                except PETSc.Error:
                    if self.shell is not None and self.shell.error is not None:
                        raise self.shell.error from None
                    raise
        finally:
            self._clear_options()
        self.last_setup_s = time.perf_counter() - t_setup
        bnorm = b_vec.norm()
        tol = max(rtol * bnorm, atol)
        r_vec = b_vec.duplicate()
        total_its = 0
        reason_name = ""
        info = 0
        guess = nonzero_guess
        if guess and guess_if_better:
            A_mat.mult(x_vec, r_vec)
            r_vec.aypx(-1.0, b_vec)
            if not SequenceCore.warm_start_helps(r_vec.norm(), bnorm):
                x_vec.zeroEntries()
                guess = False
        self.last_guess_used = bool(guess)
        try:
            for attempt in range(max_restarts + 1):
                ksp.setInitialGuessNonzero(bool(guess))
                ksp.setTolerances(max_it=max(1, maxiter - total_its))
                with self.watchdog.guard("KSPSolve"):
                    try:
                        ksp.solve(b_vec, x_vec)
                    except PETSc.Error:
                        if self.shell is not None and self.shell.error is not None:
                            raise self.shell.error from None
                        raise
                    total_its += ksp.getIterationNumber()
                    reason = ksp.getConvergedReason()
                    reason_name = _reason_name(PETSc, reason)
                    # True residual b - A x, computed on every rank (collective).
                    A_mat.mult(x_vec, r_vec)
                    r_vec.aypx(-1.0, b_vec)
                    true_norm = r_vec.norm()
                if np.isfinite(true_norm) and true_norm <= tol:
                    info = 0
                    break
                if reason > 0 and total_its < maxiter and attempt < max_restarts:
                    # The recurrence residual drifted below the threshold but b - A x did not: restart from x.
                    guess = True
                    continue
                if reason_name in _BREAKDOWN_INFO:
                    info = _BREAKDOWN_INFO[reason_name]
                elif not np.isfinite(true_norm):
                    info = -3
                else:
                    info = max(total_its, 1)
                break
        finally:
            r_vec.destroy()
        if self.pc_type == "sor":
            omega_used = float(omega)
        else:
            omega_used = float("nan")
        return total_its, reason_name, info, float(true_norm), float(bnorm), omega_used

    def destroy(self):
        self.ksp.destroy()


def _validated_solve_args(rtol, atol, maxiter, n):
    rtol, atol = check_tolerances(rtol, atol)
    return rtol, atol, check_maxiter(maxiter, n)


def petsc_solve(A, b, *, x0=None, rtol=1e-6, atol=0.0, maxiter=None, pc="sor", omega=1.0, ksp_type="cg",
                local_preconditioner=None, comm=None, local_rows=None, gather=True, petsc_options=None,
                timeout_s=None) -> SolveResult:
    """Solve ``A x = b`` once with PETSc KSP (CG by default) across the ranks of ``comm``. Collective.

    Parameters
    ----------
    A : sparse matrix (the whole matrix, identical on every rank) or an assembled ``PETSc.Mat``.
    b, x0 : ndarray (whole vectors, identical on every rank)
    rtol, atol, maxiter
        As in :func:`linsolve.cg`; KSP stops on the unpreconditioned residual
        and convergence is confirmed on ``b - A x``.
    pc : str
        ``"sor"`` (SSOR sweeps on each rank's block, factor ``omega``),
        ``"python"`` (:class:`LocalBlockPreconditioner` with
        ``local_preconditioner``), or any PETSc PC type (``"gamg"``, ``"jacobi"``, ``"none"``).
    ksp_type : str
        PETSc KSP type; ``"cg"`` needs a symmetric preconditioner.
    local_rows : int, optional
        This rank's row count (default: PETSc's even split).
    gather : bool
        Return the whole ``x`` on every rank (else this rank's part).
    petsc_options : dict, optional
        Extra options (without prefix), e.g. ``{"pc_gamg_threshold": 0.02}``.
    timeout_s : float, optional
        Abort this rank if one KSPSolve takes longer (see :class:`PETScSequenceSolver`).

    Returns
    -------
    SolveResult
        ``method`` is ``"petsc-<ksp>-<pc>"``; ``extras`` holds ``reason``
        (KSP converged reason), ``omega``, ``ranks``; ``residual_kind`` is
        ``"true"`` (only the initial and the final true residual are recorded).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends import petsc
    >>> A = linsolve.problems.poisson((32, 32))
    >>> res = petsc.petsc_solve(A, np.ones(1024), rtol=1e-8, omega=1.5)  # doctest: +SKIP
    >>> res.converged  # doctest: +SKIP
    True
    """
    runner = _KSPRunner(comm, pc=pc, ksp_type=ksp_type, local_preconditioner=local_preconditioner,
                        petsc_options=petsc_options, timeout_s=timeout_s)
    try:
        if pc == "sor":
            omega = _collective(runner.comm, check_omega, omega)
        with runner.watchdog.guard("petsc_solve"):
            return _solve_with(runner, A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter, omega=omega,
                               local_rows=local_rows, gather=gather)
    finally:
        runner.destroy()


def _solve_with(runner, A, b, *, x0, rtol, atol, maxiter, omega, local_rows, gather, x0_local=None):
    """Convert, solve, check, convert back. ``x0_local``: this rank's part of a warm start (kept only when
    it beats zero)."""
    PETSc = runner.PETSc
    comm = runner.comm
    t0 = time.perf_counter()
    owns_mat = False
    if isinstance(A, PETSc.Mat):
        A_mat = A
    else:
        A_mat = csr_to_petsc(A, comm, local_rows=local_rows)
        owns_mat = True
    n = A_mat.getSize()[0]
    rtol, atol, maxiter = _collective(comm, _validated_solve_args, rtol, atol, maxiter, n)
    b_vec = numpy_to_vec(b, A_mat, name="b")
    if x0 is not None:
        x_vec = numpy_to_vec(x0, A_mat, name="x0")
    elif x0_local is not None:
        x_vec = numpy_to_vec(x0_local, A_mat, distributed=True, name="x0")
    else:
        x_vec = b_vec.duplicate()
        x_vec.zeroEntries()
    nonzero_guess = x0 is not None or x0_local is not None
    setup = time.perf_counter() - t0
    try:
        its, reason, info, true_norm, bnorm, omega_used = runner.solve(
            A_mat, b_vec, x_vec, rtol=rtol, atol=atol, maxiter=maxiter, omega=omega,
            nonzero_guess=nonzero_guess, guess_if_better=x0 is None and x0_local is not None)
        nonzero_guess = runner.last_guess_used
        x_local = vec_to_numpy(x_vec, gather=False)
        x = vec_to_numpy(x_vec, gather=True) if gather else x_local
    finally:
        b_vec.destroy()
        x_vec.destroy()
        if owns_mat:
            A_mat.destroy()
    message = _outcome_message(bnorm, info, its, reason)
    extras = {"x_local": x_local, "reason": reason, "ranks": comm.getSize(), "ksp_type": runner.ksp_type,
              "pc_type": runner.pc_type, "warm_start": nonzero_guess}
    if runner.pc_type == "sor":
        extras["omega"] = omega_used
    if runner.shell is not None:
        extras["local_setup_time_s"] = runner.shell.setup_time_s
    return SolveResult(x=x, converged=info == 0, info=int(info), iterations=int(its),
                       residual_norms=[float(bnorm) if not nonzero_guess else float("nan"), true_norm],
                       method=f"petsc-{runner.ksp_type}-{runner.pc_type}", time_s=time.perf_counter() - t0,
                       setup_time_s=setup, true_residual_norm=true_norm, b_norm=bnorm, residual_kind="true",
                       message=message, extras=extras)


class PETScSequenceSolver(SequenceCore):
    """KSP + PC SOR over a sequence of distributed systems, omega chosen per solve by a tuner. Collective.

    Each :meth:`solve` asks the tuner for omega (on rank 0, then broadcast so
    every rank uses the same value), sets ``-<prefix>pc_sor_omega`` in PETSc's
    options database, runs KSP with the unpreconditioned-residual stopping
    rule, checks the converged reason and the true residual, and feeds the
    cost back to the tuner. Tuner calls, the cost of a failed solve, the
    warm-start rule and the stats are :class:`linsolve.sequence.SequenceCore`'s,
    as in :class:`linsolve.SequenceSolver`.

    Parameters
    ----------
    tuner : str, float, tuner object or None
        A :mod:`linsolve.tuning` name (``"tsallis"``, ``"binned"``, ``"chebcb"``,
        ... via ``make_tuner(name, arms, context_range, seed)``), a tuner
        object with ``suggest(context)`` / ``observe(cost)``, a fixed omega,
        or ``None`` (omega = 1).
    arms, context_range, seed
        Passed to ``make_tuner`` with a tuner name.
    rtol, atol, maxiter
        Stopping rule, as in :func:`linsolve.cg`.
    warm_start : bool
        Start each solve from the previous solution when the size matches and
        it beats zero (``||b - A x_prev|| < ||b||``).
    pc : str
        ``"sor"`` (tuned); ``"python"`` (:class:`LocalBlockPreconditioner`, the
        tuner is then not consulted), or any PETSc PC type (``"gamg"``).
    ksp_type : str
        ``"cg"`` by default.
    local_preconditioner : str or callable, optional
        With ``pc="python"``: the local-block factory (see :func:`local_preconditioner_factory`).
    comm : None, PETSc.Comm or mpi4py communicator
    prefix : str, optional
        Options prefix of the KSP (default unique per solver).
    gather : bool
        Return the whole ``x`` on every rank.
    timeout_s : float, optional
        If one KSPSolve takes longer, print which rank gave up and exit that
        rank, so the launcher ends the job instead of hanging when another rank died.
    petsc_options : dict, optional
        Extra KSP/PC options (without prefix).

    Attributes
    ----------
    stats : list of dict
        Per solve: ``call``, ``omega``, ``iterations``, ``reason``, ``converged``, ``time_s``, ``context``,
        ``relative_residual``, ``warm_start``, ``cost`` (fed to the tuner).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends import petsc
    >>> A = linsolve.problems.poisson((32, 32))
    >>> solver = petsc.PETScSequenceSolver(tuner=1.5, rtol=1e-8)  # doctest: +SKIP
    >>> res = solver.solve(A, np.ones(1024))  # doctest: +SKIP
    >>> res.converged, solver.stats[0]["omega"]  # doctest: +SKIP
    (True, 1.5)
    """

    def __init__(self, tuner="tsallis", *, arms=None, context_range=None, seed=0, rtol=1e-6, atol=0.0,
                 maxiter=None, warm_start=True, pc="sor", ksp_type="cg", local_preconditioner=None, comm=None,
                 prefix=None, gather=True, timeout_s=None, petsc_options=None):
        self.comm = get_comm(comm)
        self.rtol, self.atol = _collective(self.comm, check_tolerances, rtol, atol)
        self.maxiter = maxiter
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real)
                                      or not timeout_s > 0):
            raise ValueError(f"timeout_s must be a positive number or None, got {timeout_s!r}")
        SequenceCore.__init__(
            self, _collective(self.comm, _make_tuner, tuner, arms, context_range, seed) if pc == "sor" else None,
            context_range if context_range is not None else (0.0, 1.0))
        self.warm_start = bool(warm_start)
        self.gather = bool(gather)
        self._runner = _KSPRunner(self.comm, pc=pc, ksp_type=ksp_type,
                                  local_preconditioner=local_preconditioner, prefix=prefix,
                                  petsc_options=petsc_options, timeout_s=timeout_s)
        self._x_prev: Optional[np.ndarray] = None
        self._n_prev: Optional[int] = None

    @property
    def prefix(self) -> str:
        return self._runner.prefix

    @property
    def ksp(self):
        """The underlying ``PETSc.KSP`` (for ``ksp.view()`` and extra settings)."""
        return self._runner.ksp

    @property
    def total_iterations(self) -> int:
        return int(sum(s["iterations"] for s in self.stats))

    def _suggest(self, context):
        mpi = _mpi(self.comm)
        omega, error = None, None
        # Every rank's tuner copy suggests (same seed, same costs: same state); rank 0's value is used,
        # so a tuner with hidden nondeterminism still gives one omega for all ranks.
        try:
            omega = check_omega(float(SequenceCore.suggest(self, context)[0]), "omega suggested by the tuner")
        except Exception as exc:  # a tuner error must reach every rank, not hang them
            error = f"{type(exc).__name__}: {exc}"
        omega, error = mpi.bcast((omega, error), root=0)
        if error is not None:
            raise RuntimeError(f"tuner failed on rank 0: {error}")
        return omega

    def solve(self, A, b, context=None, *, x0=None, local_rows=None) -> SolveResult:
        """Solve one system of the sequence. Collective; ``A`` and ``b`` are whole arrays on every rank.

        ``A`` may also be an assembled ``PETSc.Mat`` (then ``local_rows`` is
        ignored). ``x0`` overrides the warm start. Returns a
        :class:`~linsolve.SolveResult` whose ``extras`` has ``omega``,
        ``reason`` and ``context``.

        Examples
        --------
        >>> import numpy as np, linsolve
        >>> from linsolve.backends import petsc
        >>> solver = petsc.PETScSequenceSolver(tuner=1.2, rtol=1e-8)  # doctest: +SKIP
        >>> res = solver.solve(linsolve.problems.poisson((16, 16)), np.ones(256))  # doctest: +SKIP
        >>> res.converged  # doctest: +SKIP
        True
        """
        # Every collective of the solve (tuner broadcast, conversions, KSPSolve, gathers) is timed.
        with self._runner.watchdog.guard(f"solve {len(self.stats)}"):
            return self._solve(A, b, context, x0, local_rows)

    def _solve(self, A, b, context, x0, local_rows) -> SolveResult:
        t0 = time.perf_counter()
        omega = self._suggest(context) if self.tuner is not None else float("nan")
        x0_local = None
        if x0 is None and self.warm_start and self._x_prev is not None:
            n = A.getSize()[0] if isinstance(A, self._runner.PETSc.Mat) else np.shape(A)[0]
            # Same global size and same local size on every rank, else start from zero.
            same = self._n_prev == n and self._x_prev.shape[0] == self._local_size(n, local_rows, A)
            if all(_mpi(self.comm).allgather(same)):
                x0_local = self._x_prev
        res = _solve_with(self._runner, A, b, x0=x0, rtol=self.rtol, atol=self.atol, maxiter=self.maxiter,
                          omega=omega, local_rows=local_rows, gather=self.gather, x0_local=x0_local)
        # Iterations are identical on every rank, so every rank's tuner copy stays in step; only
        # rank 0's suggestions are used.
        cost = self.observe(res.iterations, res.converged)
        if self.warm_start and res.info == 0:  # as SequenceSolver: only a converged solution is the next start
            self._x_prev = res.extras["x_local"]
            self._n_prev = res.x.shape[0] if self.gather else None
            if not self.gather:
                self._n_prev = A.getSize()[0] if isinstance(A, self._runner.PETSc.Mat) else np.shape(A)[0]
        res.time_s = time.perf_counter() - t0
        res.extras["context"] = context
        self.record({"omega": omega, "iterations": res.iterations, "reason": res.extras["reason"],
                     "converged": res.converged, "time_s": res.time_s, "context": context,
                     "relative_residual": res.relative_residual, "warm_start": res.extras["warm_start"],
                     "cost": cost})
        return res

    def _local_size(self, n, local_rows, A):
        if isinstance(A, self._runner.PETSc.Mat):
            start, end = A.getOwnershipRange()
            return end - start
        if local_rows is not None:
            return int(local_rows)
        size, rank = self.comm.getSize(), self.comm.getRank()
        return n // size + (1 if rank < n % size else 0)

    def close(self) -> None:
        """Destroy the PETSc objects (also done when the solver is garbage collected)."""
        if self._runner is not None:
            self._runner.destroy()
            self._runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

