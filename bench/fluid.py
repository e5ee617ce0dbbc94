"""Fluid benchmark (issue #7/#9): ``python bench/fluid.py [--quick] [--large]``; see linsolve/benchmarks/fluid.py."""
from linsolve.benchmarks.fluid import main

raise SystemExit(main())
