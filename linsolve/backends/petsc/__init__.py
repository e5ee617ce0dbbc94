"""Distributed solves through PETSc (petsc4py + MPI).

We do not write a distributed solver: PETSc's DMDA, KSP and PC do the
parallel work, and this package feeds them what linsolve knows.

* Structured pressure systems (:mod:`.dmda`, :mod:`.mg`, :mod:`.pressure`):
  :class:`PressureDMDA` assembles the pressure matrix of a cell grid on a
  ``DMDA``, each rank its own rows from its own sub-box of the fields (cell
  types, density, level set, face fractions; one ghost layer), and
  :class:`DMDAPressureSolver` solves it with KSP CG + PCMG: Galerkin coarse
  operators over cell-centred DMDA hierarchies, per-level SOR smoothers and
  coarse-correction scales from the learned multigrid model
  (:func:`level_parameters`), or their classical twin. The same solver runs
  GAMG, hypre BoomerAMG / PFMG and the block-Jacobi Python preconditioner
  on the same matrix, and is a sequence solver for changing ``A`` (same DM
  and Mat re-assembled, KSP reused, warm start).
* Assembled CSR systems (:mod:`.ksp`): :func:`petsc_solve`,
  :class:`PETScSequenceSolver` (KSP CG + PC SOR with an online-tuned omega)
  and :class:`LocalBlockPreconditioner` (any ``LinearOperator`` on each rank's
  diagonal block).
* Conversions and collectives (:mod:`._core`): :func:`csr_to_petsc`,
  :func:`petsc_to_csr`, :func:`numpy_to_vec`, :func:`vec_to_numpy`,
  :func:`slab_partition`, :func:`abort_on_error`.

Everything here is *collective*: every rank must call every function in the
same order. Errors detected on one rank are agreed on by all ranks before
raising, so bad input raises the same ``ValueError`` everywhere instead of
leaving the other ranks hanging.

Examples
--------
Run with ``mpiexec -n 2 python -m mpi4py script.py`` (every rank runs the same code)::

    import numpy as np, linsolve
    from linsolve.backends import petsc as lp
    cells = np.zeros((64, 64, 64), dtype=np.int8)
    solver = lp.DMDAPressureSolver(cells.shape, method="learned-mg", rtol=1e-6)
    res = solver.solve(cells, b=np.ones(cells.size))      # b on every rank, or b_local=
    print(res.iterations, res.extras["levels"])
"""
from ._core import (INSTALL_HINT, abort_on_error, available, csr_to_petsc, get_comm, numpy_to_vec, petsc_to_csr,
                    require_petsc, row_ranges, slab_partition, vec_to_numpy)
from .ksp import (SYMMETRIC_KSP_TYPES, FixedValue, LocalBlockPreconditioner, PETScSequenceSolver,
                  _ssor_operator, local_preconditioner_factory, petsc_solve)  # noqa: F401 (_ssor_operator: tests)
from .dmda import PressureDMDA
from .mg import level_parameters, mg_options
from .pressure import DMDAPressureSolver, METHODS

__all__ = [
    "available",
    "require_petsc",
    "INSTALL_HINT",
    "get_comm",
    "row_ranges",
    "slab_partition",
    "csr_to_petsc",
    "petsc_to_csr",
    "numpy_to_vec",
    "vec_to_numpy",
    "LocalBlockPreconditioner",
    "local_preconditioner_factory",
    "petsc_solve",
    "PETScSequenceSolver",
    "FixedValue",
    "abort_on_error",
    "SYMMETRIC_KSP_TYPES",
    "PressureDMDA",
    "level_parameters",
    "mg_options",
    "DMDAPressureSolver",
    "METHODS",
]
