"""Learning to Relax benchmark (online ω tuning); see ``linsolve.benchmarks.relax``."""
from linsolve.benchmarks.relax import main

raise SystemExit(main())
