"""3D Poisson benchmark (DCDM paper table shape); see ``linsolve.benchmarks.poisson``."""
from linsolve.benchmarks.poisson import main

raise SystemExit(main())
