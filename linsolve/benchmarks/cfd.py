"""Benchmark ``cfd``: the pressure matrices real fluid codes solve, learned multigrid against PyAMG and the twin.

Scenes of :func:`linsolve.problems.fluid_sequence` whose matrix changes every
frame: ``dam_break`` (ghost-fluid free surface over cut-cell solids),
``rising_bubble`` (density ratio 1000), ``moving_sphere_graded`` (graded grid)
and, as the no-regression check, ``moving_sphere``; in 3D (64^3, 96^3 and one
scene at 128^3) and 2D (512^2, 1024^2). Every method solves every frame from
``x0 = 0`` to ``rtol`` on the true relative residual (checked here again),
once with the frame's own right-hand side (timed) and once with a random one
(iteration count only), rebuilding its preconditioner each frame:

* ``amg-sa`` / ``amg-rs``: PyAMG smoothed aggregation / Ruge-Stuben in PCG;
* ``gmg-pcg``: the classical twin (:func:`linsolve.precond.multigrid.geometric_mg`);
* ``learned-pcg``: the learned smoothing (:func:`linsolve.precond.multigrid.fast_learned`,
  shipped ``mg-fluid3d`` / ``mg-fluid2d``);
* ``scipy-cg`` (opt-in): :func:`scipy.sparse.linalg.cg`, unpreconditioned.

Fixed matrices: a ``smoke_sphere`` sequence in 3D (solve time per frame with the
hierarchy kept, against PyAMG's kept hierarchy) and in 2D (against a sparse
Cholesky factor back-solve, ``cholespy``, factored once). Trapped cells: a
porous medium (``porous_cells``) with trapped cells and closed pockets, solved
with a consistent right-hand side and checked to report an inconsistent one
as not converged.

All ratios are measured side by side in one process; iteration counts are
exact. Writes ``bench/results/cfd.json``, ``cfd_iterations.png`` and
``cfd_ratios.png``.
"""
from __future__ import annotations

import os
import time

import numpy as np

from .._argtypes import non_negative_int, positive_int
from ._common import benchmark_parser, print_table, results_dir, save_figure, write_results

__all__ = ["main", "run_changing", "run_fixed", "run_trapped", "METHODS"]

METHODS = ("amg-sa", "amg-rs", "gmg-pcg", "learned-pcg")
SCENES = ("dam_break", "rising_bubble", "moving_sphere_graded", "moving_sphere")


def _parser():
    p = benchmark_parser("cfd", "Pressure matrices of real fluid codes: learned multigrid vs PyAMG and the twin.")
    p.add_argument("--scenes", default=",".join(SCENES))
    p.add_argument("--sizes3d", default=None, help="cells per axis of the 3D runs (default 64,96; --quick 24)")
    p.add_argument("--sizes2d", default=None, help="cells per axis of the 2D runs (default 512,1024; --quick 96)")
    p.add_argument("--frames", type=positive_int, default=None, help="frames per 3D run (default 4, --quick 2)")
    p.add_argument("--frames2d", type=positive_int, default=None, help="frames per 2D run (default 4, --quick 2)")
    p.add_argument("--large", type=non_negative_int, default=128, help="size of the one extra 3D run (0 to skip)")
    p.add_argument("--large-scene", default="rising_bubble")
    p.add_argument("--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS + ("scipy-cg",)))
    p.add_argument("--rtol", type=float, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    return p


# ----------------------------------------------------------------------------- one method

class _Method:
    """Builds its preconditioner for a matrix and solves; the same CG loop for every preconditioner."""

    def __init__(self, name, shape, rtol):
        self.name, self.shape, self.rtol = name, tuple(shape), rtol
        self.precond = None

    def setup(self, A):
        from ..precond.amg import build_amg
        from ..precond.multigrid import fast_learned, geometric_mg

        t0 = time.perf_counter()
        if self.name in ("amg-sa", "amg-rs"):
            self.precond = build_amg(A, kind=self.name[-2:])  # PyAMG alone: our symmetry check is not its cost
        elif self.name == "gmg-pcg":  # the last frame's hierarchy: unchanged parts are taken over
            self.precond = geometric_mg(A, grid_shape=self.shape, previous=self.precond)
        elif self.name == "learned-pcg":
            self.precond = fast_learned(A, grid_shape=self.shape, previous=self.precond)
        elif self.name == "factor-cg":  # a fixed 2D matrix: what auto_cg switches to once it pays
            from ..precond.direct import sparse_factor

            self.precond = sparse_factor(A, max_rows=None)
        else:
            self.precond = None
        return time.perf_counter() - t0

    def solve(self, A, b):
        from scipy.sparse.linalg import cg as scipy_cg

        from ..krylov.cg import cg_result
        from ..krylov.pcg import pcg_with

        t0 = time.perf_counter()
        if self.name == "scipy-cg":
            count = [0]
            x, _ = scipy_cg(A, b, rtol=self.rtol, atol=0.0, maxiter=20 * int(np.sqrt(A.shape[0])) + 2000,
                            callback=lambda _: count.__setitem__(0, count[0] + 1))
            iterations = count[0]
        elif self.name in ("gmg-pcg", "learned-pcg", "factor-cg"):
            res = pcg_with(None, self.name, A, b, rtol=self.rtol, maxiter=500, preconditioner=self.precond)
            x, iterations = res.x, res.iterations
        else:
            res = cg_result(A, b, rtol=self.rtol, maxiter=500, M=self.precond)
            x, iterations = res.x, res.iterations
        seconds = time.perf_counter() - t0
        relres = float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))
        return {"iterations": int(iterations), "seconds": seconds, "relres": relres,
                "converged": bool(relres <= self.rtol)}


def _consistent_random(A, rng, precond=None):
    """A random right-hand side on the coupled cells, with its null-space part removed when A is singular."""
    from ..krylov.pcg import project_range

    b = np.where(np.diff(A.indptr) > 1, rng.standard_normal(A.shape[0]), 0.0)
    if precond is not None and hasattr(precond, "zero_rows"):
        b = project_range(b, precond.zero_rows, precond.nullspace_labels)
    return b


def _frames(scene, shape, frames, seed):
    from ..krylov.pcg import gmg_pcg_result
    from ..problems import fluid_sequence

    def simulate(A, b, x0):  # how the simulation advances; not what is measured
        return gmg_pcg_result(A, b, x0=x0, rtol=1e-8, grid_shape=shape)

    return fluid_sequence(shape, frames, scene=scene, seed=seed, solver=simulate, check=False)


# ----------------------------------------------------------------------------- runs

def run_changing(scene, shape, frames, methods, rtol, *, seed=0, progress=True) -> dict:
    """Every frame: every method rebuilds its preconditioner, solves the frame's b (timed) and a random b.

    Examples
    --------
    >>> from linsolve.benchmarks.cfd import run_changing
    >>> out = run_changing("dam_break", (16, 16), 2, ["gmg-pcg"], 1e-6, progress=False)
    >>> out["summary"]["gmg-pcg"]["all_converged"]
    True
    """
    rng = np.random.default_rng(seed + 1)
    runners = {m: _Method(m, shape, rtol) for m in methods}
    records = {m: [] for m in methods}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=frames, desc=f"{scene} {'x'.join(map(str, shape))}", unit="frame", leave=False)
    for inst in _frames(scene, shape, frames, seed):
        if not np.any(inst.b):
            continue
        b_rand = None
        for m, run in runners.items():
            setup = run.setup(inst.A)
            own = run.solve(inst.A, inst.b)
            if b_rand is None:
                b_rand = _consistent_random(inst.A, rng, run.precond)
            rand = run.solve(inst.A, b_rand)
            records[m].append({"frame": inst.index, "setup_s": setup, "solve_s": own["seconds"],
                               "total_s": setup + own["seconds"], "iterations": own["iterations"],
                               "relres": own["relres"], "converged": own["converged"],
                               "iterations_random": rand["iterations"], "relres_random": rand["relres"],
                               "converged_random": rand["converged"]})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"kind": "changing", "scene": scene, "shape": list(shape), "rtol": rtol, "methods": records,
            "summary": _summarise(records)}


def run_fixed(scene, shape, frames, methods, rtol, *, seed=0, cholesky=False) -> dict:
    """A fixed matrix: the preconditioner (or a Cholesky factor) is built once, then every frame is solved."""
    records = {m: [] for m in methods}
    runners = {m: _Method(m, shape, rtol) for m in methods}
    setups = {}
    factor = None
    for inst in _frames(scene, shape, frames, seed):
        if not np.any(inst.b):
            continue
        if not setups:
            for m, run in runners.items():
                setups[m] = run.setup(inst.A)
            if cholesky:
                factor, setups["cholesky"] = _cholesky(inst.A)
                records["cholesky"] = []
        for m, run in runners.items():
            own = run.solve(inst.A, inst.b)
            records[m].append({"frame": inst.index, "setup_s": 0.0, "solve_s": own["seconds"],
                               "total_s": own["seconds"], "iterations": own["iterations"], "relres": own["relres"],
                               "converged": own["converged"]})
        if factor is not None:
            t0 = time.perf_counter()
            x = factor(inst.b)
            seconds = time.perf_counter() - t0
            relres = float(np.linalg.norm(inst.b - inst.A @ x) / np.linalg.norm(inst.b))
            records["cholesky"].append({"frame": inst.index, "setup_s": 0.0, "solve_s": seconds, "total_s": seconds,
                                        "iterations": 0, "relres": relres, "converged": bool(relres <= rtol)})
    summary = _summarise(records)
    for m, s in summary.items():
        s["setup_once_s"] = setups.get(m, 0.0)
    return {"kind": "fixed", "scene": scene, "shape": list(shape), "rtol": rtol, "methods": records,
            "summary": summary}


def _cholesky(A):
    """A sparse Cholesky factor of A (cholespy), or None when cholespy is not installed."""
    try:
        from cholespy import CholeskySolverD, MatrixType
    except ImportError:
        return None, float("nan")
    t0 = time.perf_counter()
    csr = A.tocsr()
    solver = CholeskySolverD(csr.shape[0], csr.indptr.astype(np.int32), csr.indices.astype(np.int32),
                             np.ascontiguousarray(csr.data, dtype=np.float64), MatrixType.CSR)
    seconds = time.perf_counter() - t0

    def solve(b):
        x = np.zeros_like(b)
        solver.solve(np.ascontiguousarray(b, dtype=np.float64), x)
        return x

    return solve, seconds


def run_trapped(shape, methods, rtol, *, seed=0) -> dict:
    """A porous medium with trapped cells and closed pockets: consistent b solved, inconsistent b refused."""
    from ..problems import porous_cells, pressure_matrix

    types = porous_cells(shape, 0.25, seed=seed)
    A = pressure_matrix(types)
    rng = np.random.default_rng(seed)
    out = {"kind": "trapped", "shape": list(shape), "rtol": rtol, "methods": {}}
    for m in methods:
        run = _Method(m, shape, rtol)
        setup = run.setup(A)
        b = _consistent_random(A, rng, run.precond if m in ("gmg-pcg", "learned-pcg") else None)
        if m in ("amg-sa", "amg-rs"):  # PyAMG gets the same consistent b as ours
            from ..precond.multigrid import geometric_mg
            from ..krylov.pcg import project_range

            ref = geometric_mg(A, grid_shape=shape)
            b = project_range(b, ref.zero_rows, ref.nullspace_labels)
        own = run.solve(A, b)
        rec = {"setup_s": setup, **own}
        if m in ("gmg-pcg", "learned-pcg"):
            from ..krylov.pcg import pcg_with

            bad = np.where(np.diff(A.indptr) > 1, rng.standard_normal(A.shape[0]), 0.0)
            res = pcg_with(None, m, A, bad, rtol=rtol, maxiter=500, preconditioner=run.precond)
            true = float(np.linalg.norm(bad - A @ res.x) / np.linalg.norm(bad))
            rec["inconsistent_b"] = {"converged": bool(res.converged), "relres": true,
                                     "honest": bool(res.converged == (true <= rtol)), "message": res.message}
        out["methods"][m] = rec
    out["zero_rows"] = int(np.count_nonzero((np.diff(A.indptr) == 0)))
    return out


def _summarise(records) -> dict:
    summary = {}
    for m, recs in records.items():
        if not recs:
            continue
        s = {key: float(sum(r[key] for r in recs)) for key in ("setup_s", "solve_s", "total_s")}
        s.update(frames=len(recs), mean_iterations=float(np.mean([r["iterations"] for r in recs])),
                 max_iterations=int(max(r["iterations"] for r in recs)),
                 max_relres=float(max(r["relres"] for r in recs)),
                 all_converged=bool(all(r["converged"] for r in recs)))
        if "iterations_random" in recs[0]:
            s.update(max_iterations_random=int(max(r["iterations_random"] for r in recs)),
                     all_converged_random=bool(all(r["converged_random"] for r in recs)))
        summary[m] = s
    return summary


# ----------------------------------------------------------------------------- acceptance

def _ratio(a, b):
    return float(a / b) if b and b > 0 else float("nan")


def acceptance(runs) -> dict:
    """The issue's goals, one entry per run: iteration caps, time ratios, growth, honesty."""
    out = {}
    changing = [r for r in runs if r["kind"] == "changing"]
    for run in changing:
        key = f"{run['scene']}@{'x'.join(map(str, run['shape']))}"
        s = run["summary"]
        if "learned-pcg" in s:
            out[f"{key}:learned_max_iterations"] = max(s["learned-pcg"]["max_iterations"],
                                                       s["learned-pcg"].get("max_iterations_random", 0))
            amg = [s[m]["total_s"] for m in ("amg-sa", "amg-rs") if m in s]
            if amg:
                out[f"{key}:learned_vs_best_amg_total"] = _ratio(s["learned-pcg"]["total_s"], min(amg))
            if "gmg-pcg" in s:
                out[f"{key}:learned_vs_twin_total"] = _ratio(s["learned-pcg"]["total_s"], s["gmg-pcg"]["total_s"])
        if "gmg-pcg" in s:
            out[f"{key}:twin_max_iterations"] = max(s["gmg-pcg"]["max_iterations"],
                                                    s["gmg-pcg"].get("max_iterations_random", 0))
    by_scene = {}
    for run in changing:
        if len(run["shape"]) == 3 and "learned-pcg" in run["summary"]:
            s = run["summary"]["learned-pcg"]
            by_scene.setdefault(run["scene"], {})[run["shape"][0]] = max(s["max_iterations"],
                                                                         s.get("max_iterations_random", 0))
    for scene, sizes in by_scene.items():
        if 64 in sizes and len(sizes) > 1:
            largest = max(sizes)
            out[f"{scene}:learned_growth_64_to_{largest}"] = _ratio(sizes[largest], sizes[64])
    for run in (r for r in runs if r["kind"] == "fixed"):
        key = f"fixed {run['scene']}@{'x'.join(map(str, run['shape']))}"
        s = run["summary"]
        if "learned-pcg" in s:
            amg = [s[m]["solve_s"] for m in ("amg-sa", "amg-rs") if m in s]
            if amg:
                out[f"{key}:learned_vs_best_amg_solve_per_frame"] = _ratio(s["learned-pcg"]["solve_s"], min(amg))
            if "cholesky" in s:
                out[f"{key}:learned_vs_cholesky_solve_per_frame"] = _ratio(s["learned-pcg"]["solve_s"],
                                                                           s["cholesky"]["solve_s"])
                out[f"{key}:cholesky_factor_s"] = s["cholesky"]["setup_once_s"]
            if "factor-cg" in s:
                ours, factored = s["learned-pcg"]["solve_s"], s["factor-cg"]["solve_s"]
                out[f"{key}:factor_cg_vs_learned_solve_per_frame"] = _ratio(factored, ours)
                frames = max(len(run["methods"]["factor-cg"]), 1)
                saved = (ours - factored) / frames
                # frames after which the factor has paid for itself (auto_cg's ski rental waits about twice as long)
                out[f"{key}:factor_cg_pays_after_frames"] = (s["factor-cg"]["setup_once_s"] / saved if saved > 0
                                                             else float("inf"))
    for run in (r for r in runs if r["kind"] == "trapped"):
        key = f"trapped@{'x'.join(map(str, run['shape']))}"
        for m, rec in run["methods"].items():
            out[f"{key}:{m}_converged"] = rec["converged"]
            if "inconsistent_b" in rec:
                out[f"{key}:{m}_inconsistent_reported_honestly"] = rec["inconsistent_b"]["honest"]
    converged = all(rec["converged"] and rec.get("converged_random", True)
                    for run in runs if run["kind"] != "trapped"
                    for recs in run["methods"].values() for rec in recs)
    out["every_reported_convergence_is_true"] = bool(converged)
    return out


def _plots(runs, folder) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    changing = [r for r in runs if r["kind"] == "changing"]
    if changing:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(changing) + 2), 4.2))
        labels = [f"{r['scene']}\n{'x'.join(map(str, r['shape']))}" for r in changing]
        methods = [m for m in ("amg-sa", "amg-rs", "gmg-pcg", "learned-pcg") if any(m in r["summary"] for r in changing)]
        width = 0.8 / max(len(methods), 1)
        for k, m in enumerate(methods):
            its = [max(r["summary"][m]["max_iterations"], r["summary"][m].get("max_iterations_random", 0))
                   if m in r["summary"] else np.nan for r in changing]
            ax.bar(np.arange(len(changing)) + k * width, its, width, label=m)
        ax.axhline(15, color="k", lw=0.8, ls="--", label="goal 15")
        ax.set_xticks(np.arange(len(changing)) + 0.4 - width / 2, labels, fontsize=7)
        ax.set_ylabel("max PCG iterations (own b, random b)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save_figure(fig, os.path.join(folder, "cfd_iterations.png")))
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(changing) + 2), 4.2))
        for k, (m, ref) in enumerate((("learned vs best PyAMG", None), ("learned vs twin", "gmg-pcg"))):
            vals = []
            for r in changing:
                s = r["summary"]
                if "learned-pcg" not in s:
                    vals.append(np.nan)
                elif ref is None:
                    amg = [s[x]["total_s"] for x in ("amg-sa", "amg-rs") if x in s]
                    vals.append(_ratio(s["learned-pcg"]["total_s"], min(amg)) if amg else np.nan)
                else:
                    vals.append(_ratio(s["learned-pcg"]["total_s"], s[ref]["total_s"]) if ref in s else np.nan)
            ax.bar(np.arange(len(changing)) + k * 0.4, vals, 0.4, label=m)
        ax.axhline(0.3, color="C0", lw=0.8, ls="--")
        ax.axhline(0.7, color="C1", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(changing)) + 0.2, labels, fontsize=7)
        ax.set_ylabel("total time ratio (setup every frame + solve)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save_figure(fig, os.path.join(folder, "cfd_ratios.png")))
    return paths


def main(argv=None) -> int:
    """Run the cfd benchmark; see ``linsolve bench cfd --help``."""
    from threadpoolctl import threadpool_limits

    args = _parser().parse_args(argv)
    sizes3d = [int(s) for s in (args.sizes3d or ("24" if args.quick else "64,96")).split(",") if s]
    sizes2d = [int(s) for s in (args.sizes2d or ("96" if args.quick else "512,1024")).split(",") if s]
    frames = args.frames or (2 if args.quick else 4)
    frames2d = args.frames2d or (2 if args.quick else 4)
    scenes = [s.strip() for s in args.scenes.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS) - {"scipy-cg"})
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {','.join(METHODS + ('scipy-cg',))}")
    if "learned-pcg" in methods:
        from ..precond.multigrid import load_mg_parameters

        for dims in {3 if sizes3d else None, 2 if sizes2d else None} - {None}:
            try:
                load_mg_parameters(None, dims=dims)
            except ValueError as exc:
                print(f"skipping learned-pcg: {exc}")
                methods.remove("learned-pcg")
                break
    runs = []
    t0 = time.perf_counter()
    with threadpool_limits(1, user_api="blas"):
        # Warm-up: numba compilation and imports are not part of any frame's time.
        run_changing("dam_break", (16, 16, 16), 1, methods, args.rtol, progress=False)
        run_changing("dam_break", (32, 32), 1, methods, args.rtol, progress=False)
        big = 3 if args.quick else args.large
        for n in sizes3d:
            for scene in scenes:
                runs.append(run_changing(scene, (n,) * 3, frames, methods, args.rtol, seed=args.seed))
        if big and not args.quick:
            ours = [m for m in methods if m in ("gmg-pcg", "learned-pcg")]
            runs.append(run_changing(args.large_scene, (big,) * 3, 2, ours, args.rtol, seed=args.seed))
        for n in sizes2d:
            for scene in scenes:
                runs.append(run_changing(scene, (n, n), frames2d, methods, args.rtol, seed=args.seed))
        fixed_methods = [m for m in methods if m != "scipy-cg"]
        if sizes3d:
            runs.append(run_fixed("smoke_sphere", (sizes3d[0],) * 3, frames, fixed_methods, args.rtol, seed=args.seed))
        if sizes2d:
            n = sizes2d[0]
            runs.append(run_fixed("smoke_sphere", (n, n), frames2d, [m for m in fixed_methods if "pcg" in m]
                                  + ["factor-cg"], args.rtol, seed=args.seed, cholesky=True))
        if sizes3d:
            runs.append(run_trapped((sizes3d[0],) * 3, fixed_methods, args.rtol, seed=args.seed))
        if sizes2d:
            runs.append(run_trapped((sizes2d[0],) * 2, fixed_methods, args.rtol, seed=args.seed))
    wall = time.perf_counter() - t0
    rows = []
    for run in runs:
        if run["kind"] == "trapped":
            for m, rec in run["methods"].items():
                rows.append({"kind": "trapped", "case": "porous", "grid": "x".join(map(str, run["shape"])),
                             "method": m, "its": rec["iterations"], "setup_s": rec["setup_s"],
                             "solve_s": rec["seconds"], "converged": rec["converged"]})
            continue
        for m, s in run["summary"].items():
            rows.append({"kind": run["kind"], "case": run["scene"], "grid": "x".join(map(str, run["shape"])),
                         "method": m, "its": s["max_iterations"], "its_rand": s.get("max_iterations_random", ""),
                         "setup_s": s.get("setup_once_s", s["setup_s"]), "solve_s": s["solve_s"],
                         "total_s": s["total_s"], "converged": s["all_converged"]})
    print_table(rows, ["kind", "case", "grid", "method", "its", "its_rand", "setup_s", "solve_s", "total_s",
                       "converged"], title=f"cfd benchmark (rtol {args.rtol:g}; times summed over frames)")
    goals = acceptance(runs)
    for key, value in goals.items():
        print(f"{key}: {value:.3g}" if isinstance(value, float) else f"{key}: {value}")
    path = write_results("cfd", {"runs": runs, "acceptance": goals, "wall_seconds": wall}, args)
    print(f"results: {path}")
    if not args.no_plots:
        for p in _plots(runs, results_dir(args)):
            print(f"plot: {p}")
    return 0
