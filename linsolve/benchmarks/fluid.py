"""Benchmark ``fluid``: pressure solves along smoke-simulation sequences, changing and fixed A.

For every frame of :func:`linsolve.problems.fluid_sequence` (scenes
``moving_sphere``: A changes every frame; ``smoke_sphere``: A fixed) each
method solves ``A p = b`` from ``x0 = 0`` to ``rtol`` (true relative residual,
checked here again for every method):

* ``scipy-cg``: :func:`scipy.sparse.linalg.cg`, no preconditioner;
* ``amg-sa`` / ``amg-rs``: PyAMG smoothed-aggregation / Ruge-Stuben V-cycle in
  PCG, hierarchy rebuilt whenever A changes (every frame for
  ``moving_sphere``, once for ``smoke_sphere``);
* ``gmg-pcg``: the classical geometric-multigrid twin
  (:func:`linsolve.precond.multigrid.geometric_mg`), rebuilt when A changes;
* ``learned-pcg``: the learned V-cycle
  (:func:`linsolve.precond.multigrid.fast_learned`) with the shipped
  ``mg-*`` model, rebuilt when A changes (skipped when no model ships).

All PCG variants run the same CG loop (:func:`linsolve.krylov.cg.cg_result`),
so only the preconditioners differ; the multigrids go through the driver
users get (:func:`linsolve.krylov.pcg.pcg_with`: closed regions, and CG on
the coupled block of a cropped hierarchy alone). BLAS is limited to one thread for every
method (dot products of 1e5 entries only lose from threads on a shared CPU).
Reported per method: iterations, setup and solve seconds per frame, true
relative residual; totals and the acceptance ratios of issue #7. Writes
``bench/results/fluid.json`` and ``fluid.png`` (cumulative seconds vs frame).
"""
from __future__ import annotations

import time

import numpy as np

from .._argtypes import positive_int
from ._common import benchmark_parser, print_table, results_dir, save_figure, write_results

__all__ = ["main", "run_sequence", "METHODS"]

METHODS = ("scipy-cg", "amg-sa", "amg-rs", "gmg-pcg", "learned-pcg")


def _parser():
    p = benchmark_parser("fluid", "Pressure solves along fluid sequences (moving and fixed obstacles).")
    p.add_argument("--size", type=positive_int, default=None, help="cells per axis (default 64, --quick 24)")
    p.add_argument("--frames", type=positive_int, default=None, help="frames of moving_sphere (default 30, --quick 5)")
    p.add_argument("--fixed-frames", type=positive_int, default=None,
                   help="frames of smoke_sphere (default 10, --quick 4)")
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--model", default=None, help="learned multigrid model (default: the shipped mg-* model)")
    p.add_argument("--large", action="store_true",
                   help="also run 128^3 moving_sphere (gmg-pcg and learned-pcg only) for the iteration ratio")
    p.add_argument("--large-frames", type=positive_int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p


class _Runner:
    """One method: builds/reuses its preconditioner when A changes and solves one frame."""

    def __init__(self, name, rtol, model=None):
        self.name, self.rtol, self.model = name, rtol, model
        self.precond = None

    def solve(self, A, b, types, a_changed):
        from scipy.sparse.linalg import cg as scipy_cg

        from ..krylov.cg import cg_result
        from ..precond.amg import build_amg
        from ..precond.multigrid import fast_learned, geometric_mg

        setup = 0.0
        if self.name == "scipy-cg":
            count = [0]

            def cb(_):
                count[0] += 1

            t0 = time.perf_counter()
            x, _ = scipy_cg(A, b, rtol=self.rtol, atol=0.0, maxiter=10 * A.shape[0], callback=cb)
            solve = time.perf_counter() - t0
            iterations = count[0]
        else:
            if a_changed or self.precond is None:
                t0 = time.perf_counter()
                if self.name in ("amg-sa", "amg-rs"):
                    self.precond = build_amg(A, kind=self.name[-2:])  # PyAMG alone: our symmetry check is not its cost
                elif self.name == "gmg-pcg":  # the last frame's hierarchy: unchanged parts are taken over
                    self.precond = geometric_mg(A, types, previous=self.precond)
                else:
                    self.precond = fast_learned(A, types, self.model, previous=self.precond)
                setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            if self.name in ("gmg-pcg", "learned-pcg"):  # the driver that knows trapped cells and closed regions
                from ..krylov.pcg import pcg_with

                res = pcg_with(None, self.name, A, b, rtol=self.rtol, maxiter=2000, preconditioner=self.precond)
            else:
                res = cg_result(A, b, rtol=self.rtol, maxiter=2000, M=self.precond)
            solve = time.perf_counter() - t0
            x, iterations = res.x, res.iterations
        relres = float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))
        return {"iterations": int(iterations), "setup_s": setup, "solve_s": solve, "total_s": setup + solve,
                "relres": relres, "converged": bool(relres <= self.rtol)}


def _generator_solver(shape):
    from ..krylov.pcg import gmg_pcg_result

    def solve(A, b, x0):
        return gmg_pcg_result(A, b, x0=x0, rtol=1e-8, grid_shape=shape)

    return solve


def run_sequence(scene, shape, frames, methods, rtol, *, model=None, seed=0, progress=True) -> dict:
    """Run ``methods`` on every frame of one fluid sequence; return per-method per-frame records.

    Examples
    --------
    >>> from linsolve.benchmarks.fluid import run_sequence
    >>> out = run_sequence("moving_sphere", (12, 12, 12), 2, ["gmg-pcg"], 1e-6, progress=False)
    >>> len(out["methods"]["gmg-pcg"]), out["methods"]["gmg-pcg"][0]["converged"]
    (2, True)
    """
    from ..problems import fluid_sequence

    runners = {m: _Runner(m, rtol, model) for m in methods}
    records = {m: [] for m in methods}
    prev_types = None
    seq = fluid_sequence(shape, frames, scene=scene, seed=seed, solver=_generator_solver(shape), check=False)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=frames, desc=f"{scene} {shape[0]}^{len(shape)}", unit="frame", leave=False)
    for inst in seq:
        a_changed = prev_types is None or not np.array_equal(inst.cell_types, prev_types)
        prev_types = inst.cell_types
        if not np.any(inst.b):
            continue
        for m in methods:
            rec = runners[m].solve(inst.A, inst.b, inst.cell_types, a_changed)
            rec["frame"] = inst.index
            rec["a_changed"] = bool(a_changed)
            records[m].append(rec)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    summary = {}
    for m, recs in records.items():
        summary[m] = {key: float(sum(r[key] for r in recs)) for key in ("setup_s", "solve_s", "total_s")}
        summary[m].update(frames=len(recs), mean_iterations=float(np.mean([r["iterations"] for r in recs])),
                          max_iterations=int(max(r["iterations"] for r in recs)),
                          max_relres=float(max(r["relres"] for r in recs)),
                          all_converged=bool(all(r["converged"] for r in recs)))
    return {"scene": scene, "shape": list(shape), "frames": frames, "rtol": rtol, "methods": records,
            "summary": summary}


def _ratio(a, b):
    return float(a / b) if b and b > 0 else float("nan")


def _acceptance(moving, fixed, large) -> dict:
    out = {}
    for best in ("learned-pcg", "gmg-pcg"):
        tag = "learned" if best == "learned-pcg" else "twin"
        if moving is not None and best in moving["summary"]:
            s = moving["summary"]
            amg = [s[m]["total_s"] for m in ("amg-sa", "amg-rs") if m in s]
            if amg:
                out[f"moving_{tag}_vs_best_amg_total"] = _ratio(s[best]["total_s"], min(amg))
            if "scipy-cg" in s:
                out[f"moving_{tag}_vs_scipy_cg_total"] = _ratio(s[best]["total_s"], s["scipy-cg"]["total_s"])
            out[f"moving_{tag}_max_iterations"] = s[best]["max_iterations"]
        if fixed is not None and best in fixed["summary"]:
            s = fixed["summary"]
            amg = [s[m]["solve_s"] for m in ("amg-sa", "amg-rs") if m in s]
            if amg:
                out[f"fixed_{tag}_vs_best_amg_solve_per_frame"] = _ratio(s[best]["solve_s"], min(amg))
                amg_tot = [s[m]["total_s"] for m in ("amg-sa", "amg-rs") if m in s]
                out[f"fixed_{tag}_vs_best_amg_total_incl_setup"] = _ratio(s[best]["total_s"], min(amg_tot))
        if large is not None and moving is not None and best in large["summary"] and best in moving["summary"]:
            out[f"large_{tag}_iteration_ratio"] = _ratio(large["summary"][best]["max_iterations"],
                                                         moving["summary"][best]["max_iterations"])
    if moving is not None and {"learned-pcg", "gmg-pcg"} <= set(moving["summary"]):
        s = moving["summary"]
        out["moving_learned_vs_twin_total"] = _ratio(s["learned-pcg"]["total_s"], s["gmg-pcg"]["total_s"])
        out["moving_learned_vs_twin_iterations"] = _ratio(s["learned-pcg"]["mean_iterations"],
                                                          s["gmg-pcg"]["mean_iterations"])
    if fixed is not None and {"learned-pcg", "gmg-pcg"} <= set(fixed["summary"]):
        s = fixed["summary"]
        out["fixed_learned_vs_twin_solve"] = _ratio(s["learned-pcg"]["solve_s"], s["gmg-pcg"]["solve_s"])
    return out


def _plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6.0 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs):
        for m, recs in run["methods"].items():
            if not recs:
                continue
            ax.plot([r["frame"] for r in recs], np.cumsum([r["total_s"] for r in recs]), marker=".", label=m)
        ax.set_title(f"{run['scene']} {'x'.join(map(str, run['shape']))}, rtol {run['rtol']:g}")
        ax.set_xlabel("frame")
        ax.set_ylabel("cumulative setup + solve seconds")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv=None) -> int:
    """Run the fluid benchmark; see ``linsolve bench fluid --help``."""
    import os

    from threadpoolctl import threadpool_limits

    args = _parser().parse_args(argv)
    size = args.size or (24 if args.quick else 64)
    frames = args.frames or (5 if args.quick else 30)
    fixed_frames = args.fixed_frames or (4 if args.quick else 10)
    if size < 8 or frames < 1 or fixed_frames < 0:
        raise SystemExit("--size must be >= 8 and --frames >= 1")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {','.join(METHODS)}")
    if "learned-pcg" in methods:
        from ..precond.multigrid import load_mg_parameters

        try:
            load_mg_parameters(args.model)
        except ValueError as exc:
            print(f"skipping learned-pcg: {exc}")
            methods.remove("learned-pcg")
    shape = (size,) * 3
    with threadpool_limits(1, user_api="blas"):
        # Warm-up: numba compilation and PyAMG imports are not part of any frame's time.
        run_sequence("moving_sphere", (12, 12, 12), 2, methods, args.rtol, model=args.model, progress=False)
        t0 = time.perf_counter()
        moving = run_sequence("moving_sphere", shape, frames, methods, args.rtol, model=args.model, seed=args.seed)
        fixed = None
        if fixed_frames:
            fixed = run_sequence("smoke_sphere", shape, fixed_frames, methods, args.rtol, model=args.model,
                                 seed=args.seed)
        large = None
        if args.large:
            big = [m for m in methods if m in ("gmg-pcg", "learned-pcg")]
            large = run_sequence("moving_sphere", (2 * size,) * 3, args.large_frames, big, args.rtol,
                                 model=args.model, seed=args.seed)
        wall = time.perf_counter() - t0
    runs = [r for r in (moving, fixed, large) if r is not None]
    rows = []
    for run in runs:
        for m, s in run["summary"].items():
            rows.append({"scene": run["scene"], "grid": f"{run['shape'][0]}^3", "method": m, "frames": s["frames"],
                         "mean_its": s["mean_iterations"], "max_its": s["max_iterations"], "setup_s": s["setup_s"],
                         "solve_s": s["solve_s"], "total_s": s["total_s"], "max_relres": s["max_relres"]})
    print_table(rows, ["scene", "grid", "method", "frames", "mean_its", "max_its", "setup_s", "solve_s", "total_s",
                       "max_relres"], title=f"fluid benchmark (rtol {args.rtol:g}, totals over frames)")
    acceptance = _acceptance(moving, fixed, large)
    for key, value in acceptance.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    data = {"runs": runs, "acceptance": acceptance, "wall_seconds": wall}
    path = write_results("fluid", data, args)
    print(f"results: {path}")
    if not args.no_plots:
        print(f"plot: {_plot(runs, os.path.join(results_dir(args), 'fluid.png'))}")
    return 0
