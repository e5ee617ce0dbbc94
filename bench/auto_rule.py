"""Measure the crossovers behind ``method="auto"`` (linsolve/_auto.py): ``python bench/auto_rule.py [--quick]``.

1. Grid matrices: plain CG against gmg-pcg / learned-pcg (setup included, and with the
   preconditioner reused) on moving-obstacle pressure matrices, 2D and 3D.
2. Non-grid matrices (the same matrices randomly permuted): plain CG against AMG-CG with
   PyAMG's Ruge-Stuben and smoothed-aggregation hierarchies.

Run it on an idle machine with ``NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1``; the best of a few
repetitions is reported. Writes ``bench/results/auto_rule.json``.
"""
import argparse
import os
import time

import numpy as np

import linsolve
from linsolve._io import atomic_write_json
from linsolve.krylov.pcg import gmg_pcg_result, learned_pcg_result

HERE = os.path.dirname(os.path.abspath(__file__))


def _frame(shape):
    inst = None
    for inst in linsolve.problems.fluid_sequence(shape, 3, scene="moving_sphere", seed=0):
        pass
    return inst.A, inst.b


def _best(call, reps):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t0)
    return min(times), out


def grid_rows(sizes, rtol):
    rows = []
    for shape in sizes:
        A, b = _frame(shape)
        reps = 5 if A.shape[0] < 20_000 else 2
        t_cg, r_cg = _best(lambda: linsolve.krylov.cg_result(A, b, rtol=rtol), reps)
        t_g, r_g = _best(lambda: gmg_pcg_result(A, b, rtol=rtol, grid_shape=shape), reps)
        M = r_g.extras["preconditioner"]
        t_gr, _ = _best(lambda: gmg_pcg_result(A, b, rtol=rtol, preconditioner=M), reps)
        row = {"shape": list(shape), "n": A.shape[0], "cg_s": t_cg, "cg_its": r_cg.iterations,
               "gmg_s": t_g, "gmg_its": r_g.iterations, "gmg_reused_s": t_gr}
        if len(shape) == 3:
            t_l, r_l = _best(lambda: learned_pcg_result(A, b, rtol=rtol, grid_shape=shape), reps)
            row.update(learned_s=t_l, learned_its=r_l.iterations)
        rows.append(row)
        print(row, flush=True)
    return rows


def amg_rows(sizes, rtol):
    rng = np.random.default_rng(0)
    rows = []
    for shape in sizes:
        A, b = _frame(shape)
        perm = rng.permutation(A.shape[0])
        A, b = A[perm][:, perm].tocsr(), b[perm]
        t_cg, r_cg = _best(lambda: linsolve.krylov.cg_result(A, b, rtol=rtol), 3)
        t_rs, r_rs = _best(lambda: linsolve.solve(A, b, method="amg-cg", rtol=rtol, amg_kind="rs"), 3)
        t_sa, r_sa = _best(lambda: linsolve.solve(A, b, method="amg-cg", rtol=rtol, amg_kind="sa"), 3)
        row = {"shape": list(shape), "n": A.shape[0], "permuted": True, "cg_s": t_cg, "cg_its": r_cg.iterations,
               "rs_s": t_rs, "rs_its": r_rs.iterations, "sa_s": t_sa, "sa_its": r_sa.iterations}
        rows.append(row)
        print(row, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few small sizes only")
    parser.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    if args.quick:
        grid = [(32, 32), (64, 64), (12, 12, 12), (24, 24, 24)]
        amg = [(64, 64), (16, 16, 16)]
    else:
        grid = [(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (96, 96), (128, 128),
                (8, 8, 8), (12, 12, 12), (16, 16, 16), (24, 24, 24), (32, 32, 32), (48, 48, 48)]
        amg = [(64, 64), (128, 128), (256, 256), (16, 16, 16), (32, 32, 32), (40, 40, 40)]
    result = {"rtol": args.rtol, "grid": grid_rows(grid, args.rtol), "non_grid": amg_rows(amg, args.rtol)}
    if not args.quick:
        atomic_write_json(os.path.join(HERE, "results", "auto_rule.json"), result, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
