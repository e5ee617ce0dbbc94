"""Distributed pressure solves on a DMDA: KSP CG + PCMG (learned or classical), GAMG, BoomerAMG, block Jacobi.

:class:`DMDAPressureSolver` is both a one-shot solver and a sequence solver
for changing ``A``: every :meth:`~DMDAPressureSolver.solve` re-assembles the
matrix into the same ``Mat`` (same DMDA, same sparsity), updates the
multigrid hierarchy in place (interpolation values, ``MatPtAP`` with reuse),
re-uses the KSP and starts from the previous solution when that is closer
than zero. It shares :class:`linsolve.SequenceSolver`'s core
(:class:`linsolve.sequence.SequenceCore`: warm start only when ``||b - A
x_prev|| < ||b||``, the cost of a failed solve, one :attr:`stats` entry per
call with the same keys where they apply) without a tuner, which a fixed
multigrid does not need.
"""
from __future__ import annotations

import numbers
import time
from typing import Dict, List, Optional

import numpy as np

from ..._result import SolveResult
from ..._validation import check_maxiter, check_tolerances
from ...sequence import SequenceCore
from ._core import _agree, _collective, _outcome_message, get_comm, require_petsc
from .dmda import PressureDMDA
from .ksp import LocalBlockPreconditioner, _KSPRunner
from .mg import CellHierarchy, level_parameters, mg_options

__all__ = ["DMDAPressureSolver", "METHODS"]

#: Methods of :class:`DMDAPressureSolver` with a one-line description.
METHODS = {
    "learned-mg": "CG + PCMG (Galerkin, cell-centred DMDA levels); per-level SOR omega and coarse-correction "
                  "scale from the learned multigrid model",
    "gmg": "CG + PCMG, the classical twin: same hierarchy and options with omega = 1, correction = 1",
    "gamg": "CG + PETSc GAMG (smoothed aggregation; its setup runs again for every new A)",
    "hypre": "CG + hypre BoomerAMG (needs a PETSc built with hypre)",
    "bjacobi-learned": "CG + block Jacobi: linsolve's learned V-cycle on each rank's own box (Python PC), "
                       "no coupling between ranks",
}
_MG = ("learned-mg", "gmg")


class DMDAPressureSolver(SequenceCore):
    """Pressure solves on a DMDA over a sequence of frames (``A`` may change every frame). Collective.

    Parameters
    ----------
    grid_shape : tuple of 2 or 3 ints
    method : str
        One of :data:`METHODS`.
    model : optional
        Learned multigrid model for ``"learned-mg"`` / ``"bjacobi-learned"``
        (see :func:`level_parameters`; ``None`` = the shipped one).
    rtol, atol, maxiter
        Stopping rule on the true residual ``||b - A x|| <= max(rtol ||b||, atol)``
        (KSP stops on the unpreconditioned residual; ``b - A x`` is checked after).
    warm_start : bool
        Start from the previous frame's solution when ``||b - A x_prev|| < ||b||``.
    comm, proc_sizes, ownership_ranges
        Communicator and (optional) decomposition, see :class:`PressureDMDA`.
    coarse_size : int
        PCMG coarsens until a level has at most this many cells (LU there).
    smoothing_steps : int
        Richardson/SOR sweeps per level before and after the coarse correction.
    gather : bool
        Return the whole solution on every rank (else this rank's box, flat).
    prefix : str, optional
        KSP options prefix (command-line options such as ``-<prefix>ksp_view`` apply).
    petsc_options : dict, optional
        Extra options without prefix (they override the method's own).
    timeout_s : float, optional
        Exit a rank whose solve takes longer (see :class:`PETScSequenceSolver`).

    Attributes
    ----------
    stats : list of dict
        Per call: ``call``, ``iterations``, ``seconds``, ``setup_seconds`` (assembly +
        hierarchy + PC set-up), ``assembly_seconds``, ``hierarchy_seconds``,
        ``pc_setup_seconds``, ``solve_seconds``, ``converged``, ``info``,
        ``relative_residual``, ``warm_start``, ``reason``, ``method``, ``cost`` (as SequenceSolver's).
    levels : list of tuple
        Grid shapes of the PCMG levels, finest first (MG methods).
    parameters : list of dict
        Per-level ``omega`` / ``correction`` in use (MG methods).

    Examples
    --------
    Under ``mpiexec -n 2 python -m mpi4py script.py``::

        import numpy as np
        from linsolve.backends import petsc as lp
        cells = np.zeros((32, 32, 32), dtype=np.int8); cells[:, :2] = 1   # solid floor
        b = np.random.default_rng(0).standard_normal(cells.size); b[cells.ravel() != 0] = 0
        solver = lp.DMDAPressureSolver(cells.shape, method="learned-mg", rtol=1e-6)
        res = solver.solve(cells, b)
        assert res.converged
    """

    def __init__(self, grid_shape, method: str = "learned-mg", *, model=None, rtol: float = 1e-6,
                 atol: float = 0.0, maxiter: Optional[int] = None, warm_start: bool = True, comm=None,
                 proc_sizes=None, ownership_ranges=None, coarse_size: int = 512, smoothing_steps: int = 1,
                 gather: bool = True, prefix: Optional[str] = None, petsc_options: Optional[dict] = None,
                 timeout_s: Optional[float] = None):
        PETSc = require_petsc()
        self.PETSc = PETSc
        self.comm = get_comm(comm)
        error = None
        if not isinstance(method, str) or method not in METHODS:
            error = ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        elif method == "hypre" and not PETSc.Sys.hasExternalPackage("hypre"):
            error = ValueError("method 'hypre' needs a PETSc built with hypre (this one is not; see docs/PETSC.md)")
        elif isinstance(coarse_size, bool) or not isinstance(coarse_size, numbers.Integral) or coarse_size < 1:
            error = ValueError(f"coarse_size must be a positive int, got {coarse_size!r}")
        elif isinstance(smoothing_steps, bool) or not isinstance(smoothing_steps, numbers.Integral) \
                or smoothing_steps < 1:
            error = ValueError(f"smoothing_steps must be a positive int, got {smoothing_steps!r}")
        elif timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real)
                                        or not timeout_s > 0):
            error = ValueError(f"timeout_s must be a positive number or None, got {timeout_s!r}")
        _agree(self.comm, error)
        self.rtol, self.atol = _collective(self.comm, check_tolerances, rtol, atol)
        self.maxiter = maxiter
        self.method = method
        self.model = model
        self.warm_start = bool(warm_start)
        self.gather = bool(gather)
        self.coarse_size = int(coarse_size)
        self.smoothing_steps = int(smoothing_steps)
        self.dm = PressureDMDA(grid_shape, self.comm, proc_sizes=proc_sizes, ownership_ranges=ownership_ranges)
        self._user_options = dict(petsc_options or {})
        self._local_types = None
        local = None
        pc = method
        if method in _MG:
            pc = "mg"
        elif method == "bjacobi-learned":
            pc = "python"
            local = LocalBlockPreconditioner(self._make_local_vcycle)
        options = {}
        if method == "hypre":
            options["pc_hypre_type"] = "boomeramg"
        options.update(self._user_options)
        self._runner = _KSPRunner(self.comm, pc=pc, ksp_type="cg", local_preconditioner=local, prefix=prefix,
                                  petsc_options=options, timeout_s=timeout_s)
        self.hierarchy: Optional[CellHierarchy] = None
        self.parameters: List[Dict[str, float]] = []
        self._b = self.dm.create_vec()
        self._x = self.dm.create_vec()
        self._have_prev = False
        SequenceCore.__init__(self)

    # ------------------------------------------------------------------------- properties

    @property
    def ksp(self):
        """The underlying ``PETSc.KSP`` (``solver.ksp.view()`` prints the whole configuration)."""
        return self._runner.ksp

    @property
    def prefix(self) -> str:
        return self._runner.prefix

    @property
    def levels(self) -> list:
        return self.hierarchy.shapes if self.hierarchy is not None else []

    @property
    def options(self) -> Dict[str, str]:
        """The PETSc options (without prefix) this solver sets on every solve."""
        return dict(self._runner.petsc_options)

    @property
    def total_iterations(self) -> int:
        return int(sum(s["iterations"] for s in self.stats))

    # ------------------------------------------------------------------------- pieces

    def _make_local_vcycle(self, A_local):
        """Block Jacobi: linsolve's learned V-cycle on this rank's box (the DMDA's local block is that box)."""
        from ...precond.multigrid import fast_learned

        return fast_learned(A_local, self._local_types, self.model, grid_shape=self.dm.owned_shape)

    def _setup_mg(self) -> float:
        t0 = time.perf_counter()
        if self.hierarchy is None:
            self.hierarchy = CellHierarchy(self.dm, coarse_size=self.coarse_size)
            n = len(self.hierarchy.levels)
            model = "classical" if self.method == "gmg" else self.model
            self.parameters = _collective(self.comm, level_parameters, model, n)
            self.hierarchy.update([p["correction"] for p in self.parameters[:-1]])
            self.hierarchy.configure(self.ksp.getPC())
            options = mg_options(self.parameters, smoothing_steps=self.smoothing_steps,
                                 ranks=self.comm.getSize())
            options.update(self._user_options)
            self._runner.petsc_options = options
        else:
            self.hierarchy.update()
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------- solving

    def solve(self, cell_types, b, *, h=1.0, density=None, phi=None, face_fractions=None, x0=None,
              theta_min: float = 0.01) -> SolveResult:
        """Assemble this frame's matrix from the fields and solve. Collective.

        Parameters
        ----------
        cell_types, h, density, phi, face_fractions, theta_min
            The frame's fields and grid, as for
            :func:`linsolve.problems.pressure_matrix` (a scene's
            ``inst.extras["matrix_options"]`` fits as is); each field either
            global (the same array on every rank) or this rank's ghosted box
            (``solver.dm.ghosted``), see :meth:`PressureDMDA.assemble`.
        b : ndarray
            Right-hand side: the global vector (C order, every rank the same)
            or this rank's owned box (``solver.dm.owned``).
        x0 : ndarray, optional
            Starting guess (global or owned box); overrides the warm start.

        Returns
        -------
        SolveResult
            ``x`` (global, or this rank's box with ``gather=False``),
            ``iterations``, ``converged`` (true residual checked), ``info``,
            ``setup_time_s``; ``extras``: ``reason``, ``ranks``, ``levels``,
            ``parameters``, ``trapped_cells``, ``warm_start`` and the set-up parts.
        """
        t0 = time.perf_counter()
        with self._runner.watchdog.guard(f"pressure solve {len(self.stats)}"):
            A = self.dm.assemble(cell_types, h=h, density=density, phi=phi, face_fractions=face_fractions,
                                 theta_min=theta_min)
            t_asm = time.perf_counter() - t0
            if self.method == "bjacobi-learned":
                self._local_types = np.ascontiguousarray(self.dm.local_cell_types())
            t_h = self._setup_mg() if self.method in _MG else 0.0
            n = int(np.prod(self.dm.grid_shape))
            maxiter = _collective(self.comm, check_maxiter, self.maxiter, n)
            self.dm.vec_from_array(b, name="b", vec=self._b)
            warm = x0 is None and self.warm_start and self._have_prev
            if x0 is not None:
                self.dm.vec_from_array(x0, name="x0", vec=self._x)
            elif not warm:
                self._x.zeroEntries()
            t_solve = time.perf_counter()
            # A warm start is kept only when it beats x = 0 (SequenceCore.warm_start_helps, in the runner).
            its, reason, info, true_norm, bnorm, _ = self._runner.solve(
                A, self._b, self._x, rtol=self.rtol, atol=self.atol, maxiter=maxiter, omega=1.0,
                nonzero_guess=x0 is not None or warm, guess_if_better=warm)
            guess = self._runner.last_guess_used
            warm = warm and guess
            t_end = time.perf_counter()
            x = self.dm.gather(self._x) if self.gather else self.dm.owned_array(self._x).ravel()
        pc_setup = self._runner.last_setup_s
        solve_s = t_end - t_solve - pc_setup
        self._have_prev = info == 0  # as SequenceSolver: only a converged solution is the next start
        if not self._have_prev:
            self._x.zeroEntries()
        setup = t_asm + t_h + pc_setup
        message = _outcome_message(bnorm, info, its, reason)
        rel = true_norm / bnorm if bnorm > 0 else 0.0
        cost = self.observe(int(its), info == 0)
        entry = self.record({"iterations": int(its), "seconds": time.perf_counter() - t0,
                             "setup_seconds": setup, "assembly_seconds": t_asm, "hierarchy_seconds": t_h,
                             "pc_setup_seconds": pc_setup, "solve_seconds": solve_s, "converged": info == 0,
                             "info": int(info), "relative_residual": float(rel), "warm_start": warm,
                             "reason": reason, "method": self.method, "cost": cost})
        extras = {"reason": reason, "ranks": self.comm.getSize(), "levels": self.levels,
                  "parameters": [dict(p) for p in self.parameters], "trapped_cells": self.dm.trapped_cells,
                  "warm_start": warm, "assembly_time_s": t_asm, "hierarchy_time_s": t_h,
                  "pc_setup_time_s": pc_setup, "solve_only_time_s": solve_s, "sequence": dict(entry)}
        return SolveResult(x=x, converged=info == 0, info=int(info), iterations=int(its),
                           residual_norms=[float(bnorm) if not guess else float("nan"), float(true_norm)],
                           method=f"petsc-dmda-{self.method}", time_s=time.perf_counter() - t0,
                           setup_time_s=setup, true_residual_norm=float(true_norm), b_norm=float(bnorm),
                           residual_kind="true", message=message, extras=extras)

    def close(self) -> None:
        """Destroy the PETSc objects."""
        if self._runner is None:
            return
        self._runner.destroy()
        self._runner = None
        if self.hierarchy is not None:
            self.hierarchy.destroy()
            self.hierarchy = None
        for v in (self._b, self._x):
            v.destroy()
        self.dm.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
