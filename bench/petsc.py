"""Distributed PETSc solves (re-launched under mpiexec): PCMG on DMDA pressure systems at 1/2/4 ranks vs block
Jacobi and GAMG (``--part mg``, default), or tuned SOR omega in PETSc CG (``--part heat``); see
linsolve/benchmarks/petsc.py."""
from linsolve.benchmarks.petsc import main

raise SystemExit(main())
