"""Generate the README "Results" section (docs/RESULTS.md) from bench/results/*.json."""
from linsolve.benchmarks.readme_results import main

raise SystemExit(main())
