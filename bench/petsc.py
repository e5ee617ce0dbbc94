"""Tuned SOR omega inside distributed PETSc CG (2 MPI ranks); see linsolve/benchmarks/petsc.py."""
from linsolve.benchmarks.petsc import main

raise SystemExit(main())
