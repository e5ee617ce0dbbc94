"""3D Poisson benchmark in the shape of the DCDM paper's table.

For each grid (default 32³ … 128³, 7-point Dirichlet Laplacian, random
right-hand side) every available method solves to the same true relative
residual; we report iterations, setup seconds, solve seconds and the checked
``||b - A x|| / ||b||``, plus side-by-side speedups against SciPy CG and
against the better of PyAMG SA/RS in the same process.

Methods: SciPy CG, linsolve CG, IC(0)-PCG, PyAMG SA-PCG and RS-PCG, DCDM
(size-capped: its CNN is slow on a CPU), the fast learned preconditioner
``learned-pcg`` and its classical twin ``gmg-pcg`` when those are installed.
A method whose projected time at the next grid exceeds ``--max-method-seconds``
is skipped there, and the skip is printed and recorded.

Run ``python bench/poisson.py`` (full, < 30 min on 2 cores) or
``linsolve bench poisson --quick`` (< 1 min).
"""
from __future__ import annotations

import os
import time

import numpy as np

from .._argtypes import positive_int
from ._common import (benchmark_parser, median_runs, plot_convergence, plot_scaling, print_table,
                      results_dir, write_results)

__all__ = ["main", "METHODS"]

#: name -> (label in tables/plots, largest grid edge in the full run, in --quick; None = no cap)
METHODS = {
    "scipy-cg": ("SciPy CG", None, None),
    "cg": ("linsolve CG", None, None),
    "ic-cg": ("IC(0)-PCG", None, None),
    "amg-sa": ("PyAMG SA-PCG", None, None),
    "amg-rs": ("PyAMG RS-PCG", None, None),
    "dcdm": ("DCDM", 128, 16),  # above 64^3 the time projections usually skip it
    "learned-pcg": ("learned-PCG", None, None),
    "gmg-pcg": ("GMG-PCG", None, None),
}
#: methods whose single solve costs seconds (a CNN per iteration on a CPU): one timed repeat
SLOW_METHODS = ("dcdm",)
FULL_SIZES = (32, 48, 64, 96, 128)
QUICK_SIZES = (16, 24)


def _ensure_ic_registered():
    import importlib

    from ..solve import available_methods, register_method

    if "ic-cg" not in available_methods():
        register_method("ic-cg", "linsolve.krylov.pcg:ic_cg_result", "CG preconditioned by IC(0)")
    try:  # the multigrid module registers "learned-pcg" and "gmg-pcg" when imported
        importlib.import_module("linsolve.precond.multigrid")
    except ImportError:
        pass


def _scipy_cg(A, b, *, rtol, maxiter, callback=None):
    """SciPy's own CG, wrapped in a SolveResult with an honest convergence flag."""
    import scipy.sparse.linalg as sla

    from .._result import SolveResult

    count = [0]

    def counting(xk):
        count[0] += 1
        if callback is not None:
            callback(xk)

    t0 = time.perf_counter()
    x, info = sla.cg(A, b, rtol=rtol, atol=0.0, maxiter=maxiter, callback=counting)
    elapsed = time.perf_counter() - t0
    bnorm = float(np.linalg.norm(b))
    true = float(np.linalg.norm(b - A @ x))
    return SolveResult(x=x, converged=bool(true <= rtol * bnorm), info=int(info), iterations=count[0],
                       method="scipy-cg", time_s=elapsed, true_residual_norm=true, b_norm=bnorm,
                       residual_kind="none")


def _runner(name, A, b, shape, rtol, maxiter):
    """A zero-argument callable solving with ``name`` (callback optional), or raise ValueError."""
    from ..solve import available_methods, solve

    grid_opts = {"grid_shape": shape}
    if name == "scipy-cg":
        return lambda callback=None: _scipy_cg(A, b, rtol=rtol, maxiter=maxiter, callback=callback)
    if name in ("amg-sa", "amg-rs"):
        kind = name[-2:]
        return lambda callback=None: solve(A, b, method="amg-cg", amg_kind=kind, rtol=rtol, maxiter=maxiter,
                                           callback=callback)
    if name not in available_methods():
        raise ValueError(f"method {name!r} is not registered in this installation")
    opts = grid_opts if name in ("dcdm", "learned-pcg", "gmg-pcg") else {}
    its = maxiter if name != "dcdm" else None  # DCDM keeps its own iteration cap
    return lambda callback=None: solve(A, b, method=name, rtol=rtol, maxiter=its, callback=callback, **opts)


def _trace(run, A, b):
    """One extra, untimed-for-the-table run recording residual vs iteration and vs seconds.

    Time spent inside our own callback (copying, residual evaluation) is
    subtracted so the seconds axis is the solver's.
    """
    stamps, extra_norms = [], []
    overhead = [0.0]
    start = [0.0]
    need_true = [False]

    def callback(xk):
        t = time.perf_counter()
        stamps.append(t - start[0] - overhead[0])
        if need_true[0]:
            extra_norms.append(float(np.linalg.norm(b - A @ xk)))
        overhead[0] += time.perf_counter() - t

    start[0] = time.perf_counter()
    probe = run(callback)
    need_true[0] = len(probe.residual_norms) != probe.iterations + 1
    if need_true[0]:  # SciPy returns no history: rerun evaluating b - A x per iteration
        stamps.clear()
        overhead[0] = 0.0
        start[0] = time.perf_counter()
        probe = run(callback)
        norms = [float(np.linalg.norm(b))] + extra_norms
    else:
        norms = list(probe.residual_norms)
    bnorm = float(np.linalg.norm(b))
    rel = np.asarray(norms, float) / bnorm
    seconds = np.concatenate([[probe.setup_time_s], stamps]) if len(stamps) == len(rel) - 1 else None
    return {"residual": rel.tolist(), "seconds": None if seconds is None else seconds.tolist(),
            "iterations": probe.iterations, "residual_kind": probe.residual_kind}


def main(argv=None) -> int:
    """Run the benchmark; returns 0 when every measured method converged, 1 otherwise.

    Examples
    --------
    >>> from linsolve.benchmarks.poisson import main
    >>> main(["--quick", "--out", "/tmp/linsolve-bench", "--no-plots"])  # doctest: +SKIP
    0
    """
    parser = benchmark_parser("poisson", "3D Poisson, DCDM-paper table: CG, IC(0)-PCG, PyAMG SA/RS-PCG, "
                                         "DCDM, learned PCG; iterations, setup/solve seconds, true residual")
    parser.add_argument("--sizes", default=None, help="comma-separated grid edges (default 32,48,64,96,128)")
    parser.add_argument("--rtol", type=float, default=1e-6, help="true relative residual target (1e-6)")
    parser.add_argument("--methods", default=None, help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--max-method-seconds", type=float, default=None,
                        help="skip a method at a grid where its projected time (all repeats) exceeds this")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop measuring new (method, grid) pairs whose projected time would end the run "
                             "after this many minutes (default 25 full, 3 quick)")
    parser.add_argument("--seed", type=int, default=0, help="random right-hand side seed")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="threads for BLAS/OpenMP, torch and numba, the same for every method (default 1: "
                             "SciPy's SpMV and PyAMG are single-threaded, and on a shared 2-core machine extra "
                             "threads add noise, not speed); 0 leaves the libraries' defaults")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.threads == 0:
        return _run(args, parser)
    with _thread_limits(args.threads):
        return _run(args, parser)


class _thread_limits:
    """Limit BLAS/OpenMP (threadpoolctl), torch and numba threads; restore on exit."""

    def __init__(self, n: int):
        self.n = n
        self._saved = {}

    def __enter__(self):
        from threadpoolctl import threadpool_limits

        self._pools = threadpool_limits(self.n)
        try:
            import numba

            self._saved["numba"] = numba.get_num_threads()
            numba.set_num_threads(min(self.n, numba.config.NUMBA_NUM_THREADS))
        except Exception:  # pragma: no cover - numba without threading layer
            pass
        try:
            import torch

            self._saved["torch"] = torch.get_num_threads()
            torch.set_num_threads(self.n)
        except ImportError:  # pragma: no cover
            pass
        return self

    def __exit__(self, *exc):
        self._pools.restore_original_limits()
        if "numba" in self._saved:
            import numba

            numba.set_num_threads(self._saved["numba"])
        if "torch" in self._saved:
            import torch

            torch.set_num_threads(self._saved["torch"])
        return False


def _run(args, parser) -> int:
    _ensure_ic_registered()
    if args.sizes:
        try:
            sizes = tuple(int(s) for s in args.sizes.split(","))
        except ValueError:
            parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
        if any(s < 2 for s in sizes):
            parser.error("--sizes entries must be >= 2")
    else:
        sizes = QUICK_SIZES if args.quick else FULL_SIZES
    methods = list(METHODS) if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if not (np.isfinite(args.rtol) and 0 < args.rtol < 1):
        parser.error("--rtol must lie in (0, 1)")
    budget = args.max_method_seconds or (60.0 if args.quick else 300.0)
    total_budget = 60.0 * (args.budget_minutes or (3.0 if args.quick else 25.0))
    plot_size = max(s for s in sizes if s <= 64) if any(s <= 64 for s in sizes) else min(sizes)

    def repeats_for(edge):
        if args.repeats:
            return args.repeats, 1
        if args.quick:
            return 3, 1
        # every grid gets its own warm-up run; 128^3 gets fewer timed repeats to fit the budget
        return (3, 1) if edge <= 96 else (2, 1)

    import linsolve.problems as problems

    rows, skipped, histories = [], [], {}
    last_time = {}
    notes = [f"3D 7-point Poisson, Dirichlet, b ~ N(0, I) (seed {args.seed}); converged means the checked "
             f"true relative residual <= {args.rtol:g}",
             f"threads (BLAS/OpenMP, torch, numba): {args.threads or 'library defaults'}, the same for every "
             "method; "
             "warm-up run excluded (two for DCDM, whose network is compiled on the second solve of a grid, "
             "so its time is that of a solve in a sequence); times are medians of the timed repeats (see "
             "'repeats' per row); "
             "speedups are ratios of total (setup + solve) seconds measured in this one process",
             f"a method is skipped at a grid when its projected time (repeats included) exceeds {budget:g} s, "
             f"or would carry the whole run past {total_budget / 60:g} minutes"]
    t_start = time.perf_counter()
    for edge in sizes:
        shape = (edge, edge, edge)
        A = problems.poisson(shape)
        n = A.shape[0]
        b = np.random.default_rng(args.seed).standard_normal(n)
        repeats, warmup = repeats_for(edge)
        maxiter = 10 * n
        print(f"--- grid {edge}^3 (n = {n}), {repeats} timed repeat(s) after {warmup} warm-up", flush=True)
        for name in methods:
            label, full_cap, quick_cap = METHODS[name]
            cap = quick_cap if args.quick else full_cap
            method_repeats = 1 if name in SLOW_METHODS and not args.repeats else repeats
            if cap is not None and edge > cap:
                reason = f"capped at {cap}^3 ({label} is too slow on this CPU above it)"
                skipped.append({"size": edge, "method": name, "reason": reason})
                print(f"  {label:14s} skipped: {reason}", flush=True)
                continue
            if name in last_time:
                # CG-type work grows like n^(4/3) = edge^4 (iterations ~ edge, cost per iteration ~ n)
                prev_edge, prev_t = last_time[name]
                projected = prev_t * (edge / prev_edge) ** 4 * (method_repeats + warmup + 1)
                spent = time.perf_counter() - t_start
                reason = None
                if projected > budget:
                    reason = f"projected {projected:.0f} s > per-method budget {budget:g} s"
                elif spent + projected > total_budget:
                    reason = (f"projected {projected:.0f} s would pass the {total_budget / 60:g}-minute run budget "
                              f"({spent:.0f} s spent)")
                if reason:
                    skipped.append({"size": edge, "method": name, "reason": reason})
                    print(f"  {label:14s} skipped: {reason}", flush=True)
                    continue
            try:
                run = _runner(name, A, b, shape, args.rtol, maxiter)
                # DCDM compiles its network the second time a grid is solved (linsolve.precond.learned): one
                # more warm-up puts that in the warm-up, so its timed solve is the steady state of a sequence.
                total, setup, solve_s, res = median_runs(run, repeats=method_repeats,
                                                         warmup=warmup + (1 if name == "dcdm" else 0))
            except (ValueError, TypeError, ImportError, RuntimeError, FileNotFoundError, KeyError) as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                skipped.append({"size": edge, "method": name, "reason": reason})
                print(f"  {label:14s} skipped: {reason}", flush=True)
                continue
            last_time[name] = (edge, total)
            true_rel = float(np.linalg.norm(b - A @ np.asarray(res.x)) / np.linalg.norm(b))
            row = {"size": edge, "grid": f"{edge}^3", "n": n, "method": name, "label": label,
                   "method_used": res.method, "iterations": int(res.iterations), "setup_s": setup,
                   "solve_s": solve_s, "total_s": total, "rel_residual": true_rel,
                   "converged": bool(res.converged and true_rel <= args.rtol * (1 + 1e-12)),
                   "repeats": method_repeats}
            model = res.extras.get("model") if isinstance(res.extras, dict) else None
            if isinstance(model, str):
                row["model"] = model  # which trained network (learned methods), for the record
            rows.append(row)
            print(f"  {label:14s} {row['iterations']:5d} its  setup {setup:8.3f} s  solve {solve_s:8.3f} s  "
                  f"rel.res {true_rel:.2e}{'' if row['converged'] else '  NOT CONVERGED'}", flush=True)
            if edge == plot_size and not args.no_plots:
                histories[name] = dict(_trace(run, A, b), size=edge, label=label)
    _add_ratios(rows)
    elapsed = time.perf_counter() - t_start
    notes.append(f"benchmark wall time {elapsed:.0f} s")

    columns = ["grid", "label", "iterations", "setup_s", "solve_s", "total_s", "rel_residual", "converged",
               "speedup_vs_scipy", "speedup_vs_best_amg"]
    table = print_table(rows, columns, title=f"3D Poisson, rtol {args.rtol:g} (true relative residual)")
    for s in skipped:
        print(f"skipped {s['method']} at {s['size']}^3: {s['reason']}")

    plots = []
    out = results_dir(args)
    if not args.no_plots:
        plots = _plots(rows, histories, out, plot_size, args.rtol)
        for p in plots:
            print(f"plot written: {p}")
    data = {"rtol": args.rtol, "sizes": list(sizes), "methods": methods, "rows": rows, "skipped": skipped,
            "histories": histories, "plots": [os.path.basename(p) for p in plots], "notes": notes,
            "table": table, "wall_time_s": elapsed}
    path = write_results("poisson", data, args)
    print(f"results written: {path}  ({elapsed:.0f} s)")
    return 0 if all(r["converged"] for r in rows) else 1


def _add_ratios(rows):
    """Speedups in total seconds vs SciPy CG and vs the better PyAMG method at the same grid."""
    by_size = {}
    for r in rows:
        by_size.setdefault(r["size"], {})[r["method"]] = r
    for group in by_size.values():
        ref = group.get("scipy-cg")
        amg = [group[m]["total_s"] for m in ("amg-sa", "amg-rs") if m in group and group[m]["converged"]]
        best_amg = min(amg) if amg else None
        for r in group.values():
            r["speedup_vs_scipy"] = ref["total_s"] / r["total_s"] if ref and r["total_s"] > 0 else None
            r["speedup_vs_best_amg"] = best_amg / r["total_s"] if best_amg and r["total_s"] > 0 else None


def _plots(rows, histories, out, plot_size, rtol):
    import os

    paths = []
    curves_it = {h["label"]: (np.arange(len(h["residual"])), h["residual"]) for h in histories.values()}
    if curves_it:
        paths.append(plot_convergence(curves_it, os.path.join(out, "poisson_residual_vs_iteration.png"),
                                      title=f"3D Poisson {plot_size}^3: residual vs iteration"))
    # log time axis: the methods span three decades (a CNN per iteration vs a V-cycle); the
    # first point sits at the end of the setup, clipped to 1 ms so setup-free methods show too
    curves_t = {h["label"]: (np.maximum(h["seconds"], 1e-3), h["residual"])
                for h in histories.values() if h["seconds"]}
    if curves_t:
        paths.append(plot_convergence(curves_t, os.path.join(out, "poisson_residual_vs_seconds.png"),
                                      xlabel="seconds (setup included; log scale, >= 1 ms)", logx=True,
                                      title=f"3D Poisson {plot_size}^3: residual vs wall time"))
    series = {}
    for r in rows:
        xs, ys = series.setdefault(r["label"], ([], []))
        xs.append(r["n"])
        ys.append(r["total_s"])
    if series:
        paths.append(plot_scaling(series, os.path.join(out, "poisson_time_vs_size.png"),
                                  xlabel="unknowns n (grid edge³)", ylabel="setup + solve seconds",
                                  title=f"3D Poisson, rtol {rtol:g}: time vs grid size"))
    return paths
