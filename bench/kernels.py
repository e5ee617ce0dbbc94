"""Time our numba kernels against PyAMG's SOR and SciPy's SpMV (see linsolve/benchmarks/kernels.py)."""
from linsolve.benchmarks.kernels import main

raise SystemExit(main())
