"""SequenceSolver(method='auto') on a fluid-cells-only (compact) numbered pressure matrix never keeps its
multigrid: the SAME matrix 20 times -> hierarchy_reused False every call, setups == 0, and ~3x slower than
linsolve.auto_cg (which keeps its plan). Run: OPENBLAS_NUM_THREADS=1 /work/main/.venv/bin/python repro_compact_no_reuse.py"""
import os, time; os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np, linsolve
from smoke import Smoke
sim = Smoke((256, 256)); A, b = sim.next_system(0)        # compact numbering, fixed matrix
s = linsolve.SequenceSolver()                              # method="auto"
ts, ta = [], []
x = None
for k in range(20):
    t = time.perf_counter(); r = s.solve(A, b * (1 + 0.01 * k)); ts.append(time.perf_counter() - t)
    t = time.perf_counter(); x, info = linsolve.auto_cg(A, b * (1 + 0.01 * k), x0=x, rtol=1e-6); ta.append(time.perf_counter() - t)
print("method", r.method, "reused", [st["hierarchy_reused"] for st in s.stats][-5:], "setups", s.setups,
      "setup_seconds(last)", s.stats[-1]["setup_seconds"])
print(f"median SequenceSolver {np.median(ts)*1e3:.1f} ms   auto_cg {np.median(ta)*1e3:.1f} ms")
