"""DCDM acceptance benchmark; see ``linsolve.benchmarks.dcdm``."""
from linsolve.benchmarks.dcdm import main

raise SystemExit(main())
