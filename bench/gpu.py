"""GPU benchmark (see linsolve/benchmarks/gpu.py): GPU tests + Poisson-with-obstacles table, JSON out."""
from linsolve.benchmarks.gpu import main

raise SystemExit(main())
