"""A PhiFlow smoke plume around an obstacle, its pressure solves done by linsolve through ``patch_scipy()``.

PhiFlow 3.4 (NumPy backend, ``Solve('scipy-CG')``) looks up ``scipy.sparse.linalg.cg`` at
every pressure solve. Inside ``linsolve.patch_scipy()`` that is :func:`linsolve.auto_cg`,
which finds the grid, the obstacle's identity rows, the negative sign of PhiFlow's
Laplacian and (closed box) the Lagrange border from the matrix alone, and keeps its
multigrid preconditioner while the matrix is unchanged. Nothing in the simulation changes.

Usage::

    python examples/phiflow_smoke.py                      # 2D 64^2, 10 steps, linsolve vs SciPy
    python examples/phiflow_smoke.py --dims 3 --res 48
    python examples/phiflow_smoke.py --closed --precision 64
    python examples/phiflow_smoke.py --solvers scipy cg auto --res 128

``--solvers``: ``scipy`` (SciPy's cg), ``cg`` (``scipy.sparse.linalg.cg = linsolve.cg``, the
plain swap) and ``auto`` (``with linsolve.patch_scipy():``). Prints the median pressure-solve
time (PhiFlow's own ``SolveInfo.solve_time``), iterations, and how far each run's final
velocity is from SciPy's.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics

import numpy as np
import scipy.sparse.linalg as sla

import linsolve


def _solver_context(solver: str):
    if solver == "scipy":
        return contextlib.nullcontext()
    if solver == "auto":
        return linsolve.patch_scipy()
    if solver == "cg":
        return _plain_swap()
    raise ValueError(f"solver must be 'scipy', 'cg' or 'auto', got {solver!r}")


@contextlib.contextmanager
def _plain_swap():
    original = sla.cg
    sla.cg = linsolve.cg
    try:
        yield
    finally:
        sla.cg = original


@contextlib.contextmanager
def _wide_sparse_indices():
    """Work around PhiFlow 3.4 (phiml 1.16) on grids of more than 46,340 cells (48^3 and up).

    Its NumPy backend linearises sparse-matrix indices as ``row * n + col`` in the int32 of
    the index arrays, which overflows once ``n * n >= 2**31``, so building the pressure matrix
    fails before any solver runs. The linear indices are kept in int64 while the block runs.
    """
    from phiml.backend._numpy_backend import NumPyBackend

    original = NumPyBackend.ravel_multi_index

    def ravel_multi_index(self, multi_index, shape, mode="undefined"):
        return original(self, np.asarray(multi_index, dtype=np.int64), shape, mode)

    NumPyBackend.ravel_multi_index = ravel_multi_index
    try:
        yield
    finally:
        NumPyBackend.ravel_multi_index = original


def run(dims: int = 2, res: int = 64, steps: int = 10, *, closed: bool = False, obstacle: bool = True,
        solver: str = "auto", rtol: float = 1e-5, atol: float = 1e-5, max_iterations: int = 1000,
        precision: int = 32) -> dict:
    """Run the plume and return ``velocity`` (cell-centred NumPy array), ``solve_times`` and ``iterations``.

    ``closed``: walls all around (PhiFlow then borders its singular pressure matrix with a
    Lagrange row of ones); otherwise the top is open. ``solver``: see the module docstring.
    ``rtol``, ``atol``, ``max_iterations``: PhiFlow's ``Solve`` settings (its defaults).
    ``precision``: PhiFlow's floating-point bits (32 by default; SciPy's cg rarely converges on
    the float32 closed-box system, so compare closed boxes at 64).
    """
    from phi import math
    from phi.flow import (ZERO_GRADIENT, Box, CenteredGrid, Obstacle, Solve, Sphere, StaggeredGrid, advect,
                          fluid, resample, vec)

    names = "xyz"[:dims]
    size = {n: res for n in names}
    bounds = Box(**{n: 100 for n in names})
    if closed:
        boundary = 0
    else:
        boundary = {"x": 0, "y-": 0, "y+": ZERO_GRADIENT, **({"z": 0} if dims == 3 else {})}
    centre = {n: 50 for n in names}
    velocity = StaggeredGrid(0, boundary, bounds, **size)
    smoke = CenteredGrid(0, ZERO_GRADIENT, bounds, **size)
    inflow = Sphere(center=vec(**{**centre, "y": 12}), radius=10)
    obstacles = [Obstacle(Sphere(center=vec(**{**centre, "y": 55}), radius=14))] if obstacle else []
    up = vec(**{n: (0.2 if n == "y" else 0.0) for n in names})
    pressure = None
    times, iterations = [], []
    wide = _wide_sparse_indices() if res ** dims > 46_340 else contextlib.nullcontext()
    with _solver_context(solver), math.precision(precision), wide:
        for _ in range(steps):
            smoke = advect.mac_cormack(smoke, velocity, 1.0) + 0.2 * resample(inflow, to=smoke, soft=True)
            velocity = advect.semi_lagrangian(velocity, velocity, 1.0) + resample(smoke * up, to=velocity)
            with math.SolveTape() as tape:
                velocity, pressure = fluid.make_incompressible(
                    velocity, obstacles, Solve("scipy-CG", rtol, atol, x0=pressure, max_iterations=max_iterations))
            info = tape.solves[-1]
            times.append(float(info.solve_time))
            iterations.append(int(info.iterations.max))
    values = velocity.at_centers().values.numpy(",".join(names) + ",vector")
    return {"velocity": np.asarray(values, dtype=np.float64), "solve_times": times, "iterations": iterations,
            "dims": dims, "res": res, "closed": closed, "solver": solver}


def compare(runs: dict) -> list:
    """One line per run: median solve time, its ratio to SciPy's, iterations, velocity difference."""
    ref = runs.get("scipy")
    lines = []
    for name, out in runs.items():
        median = statistics.median(out["solve_times"])
        line = f"{name:>6}: median pressure solve {median * 1e3:8.2f} ms, iterations {out['iterations']}"
        if ref is not None and name != "scipy":
            ratio = median / statistics.median(ref["solve_times"])
            diff = np.linalg.norm(out["velocity"] - ref["velocity"]) / np.linalg.norm(ref["velocity"])
            line += f", {ratio:.2f}x SciPy's time, velocity differs from SciPy's by {diff:.1e} (relative)"
        lines.append(line)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2)
    parser.add_argument("--res", type=int, default=64, help="cells per axis")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--closed", action="store_true", help="walls all around (Lagrange-bordered matrix)")
    parser.add_argument("--no-obstacle", action="store_true")
    parser.add_argument("--solvers", nargs="+", default=["scipy", "auto"], choices=("scipy", "cg", "auto"))
    parser.add_argument("--max-iterations", type=int, default=1000, help="PhiFlow's Solve(max_iterations)")
    parser.add_argument("--precision", type=int, choices=(32, 64), default=32, help="PhiFlow's float bits")
    args = parser.parse_args(argv)
    runs = {name: run(args.dims, args.res, args.steps, closed=args.closed, obstacle=not args.no_obstacle,
                      solver=name, max_iterations=args.max_iterations, precision=args.precision)
            for name in args.solvers}
    print(f"PhiFlow smoke plume {args.dims}D {args.res}^{args.dims}, {args.steps} steps, "
          f"{'closed' if args.closed else 'open'} box{'' if args.no_obstacle else ', sphere obstacle'}, "
          f"float{args.precision}")
    for line in compare(runs):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
