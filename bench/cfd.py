"""CFD benchmark (issue #16): ``python bench/cfd.py [--quick]``; see linsolve/benchmarks/cfd.py."""
from linsolve.benchmarks.cfd import main

raise SystemExit(main())
