"""DCDM acceptance benchmark: iterations and wall-clock of DCDM (shipped models) beside CG and PyAMG-CG.

Each problem is solved by DCDM three ways side by side: the default solver
(faithful one-level network ``poisson3d-32`` / ``poisson2d-64`` with the
aggregation deflation ``deflation="auto"``, columns ``dcdm_*``), the paper's
method (same network, ``deflation=None``, columns ``paper_*``) and the
multi-level 3D network ``poisson3d-32-ml`` with deflation (columns ``ml_*``).
The 64³ → 96³ iteration growth is reported for each.

Problems: 2D empty-domain Poisson (64², 128²) and 3D pressure Poisson with a
spherical obstacle (:func:`linsolve.problems.demo_problem`; 32³, 64³, 96³), each
with a random right-hand side and with a fluid-simulation right-hand side
(frame 2 of :func:`linsolve.problems.fluid_sequence`, ``smoke_plume`` in 2D,
``smoke_sphere`` in 3D, solved with its own matrix and cell types). Stopping
rule: true relative residual ``<= 1e-6``. DCDM time includes the network and
the deflation set-up; AMG time includes the hierarchy setup (reported separately
too). ``--quick`` uses 2D 32² and 3D 16³.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from .._argtypes import positive_int
from ._common import benchmark_parser, print_table, results_dir, save_figure, write_results

NAME = "dcdm"


def _problems(quick: bool, with_fluid: bool, max_fluid_3d: int):
    from ..problems.demo import demo_problem
    from ..problems import poisson

    # Cheapest first (a long run stopped early still has its small rows written); the 96^3 random row
    # comes before the 64^3 fluid row because the 64^3 -> 96^3 growth is the headline number.
    if quick:
        specs = [("2d", 32, "random"), ("3d", 16, "random")]
    else:
        specs = [("2d", 64, "random"), ("2d", 64, "fluid"), ("3d", 32, "random"), ("3d", 32, "fluid"),
                 ("2d", 128, "random"), ("2d", 128, "fluid"), ("3d", 64, "random"), ("3d", 96, "random"),
                 ("3d", 64, "fluid"), ("3d", 96, "fluid")]
    for kind, size, rhs in specs:
        if rhs == "fluid" and (not with_fluid or (kind == "3d" and size > max_fluid_3d)):
            continue
        if rhs == "random":
            if kind == "2d":
                A = poisson((size, size))
                b = np.random.default_rng(size).standard_normal(A.shape[0])
                yield f"2D {size}^2", "random", A, b, (size, size), None
            else:
                A, b, cells = demo_problem(size)
                yield f"3D {size}^3 sphere", "random", A, b, cells.shape, cells
        else:
            inst = _fluid_frame(kind, size)
            if inst is not None:
                label = f"2D {size}^2" if kind == "2d" else f"3D {size}^3 sphere"
                yield label, "fluid", inst.A, inst.b, tuple(inst.grid_shape), inst.cell_types


def _fluid_frame(kind, size):
    try:
        from ..problems import fluid_sequence
    except ImportError:  # pragma: no cover
        return None
    shape = (size, size) if kind == "2d" else (size, size, size)
    scene = "smoke_plume" if kind == "2d" else "smoke_sphere"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frames = list(fluid_sequence(shape, 3, scene=scene, seed=0, solver="amg-cg", rtol=1e-8, check=False))
    return frames[-1]


def _run(method, A, b, shape, cells, rtol, maxiter, model=None, deflation="auto"):
    from ..solve import solve

    options = {}
    if method == "dcdm":
        options = {"grid_shape": shape, "cell_types": cells, "model": model, "deflation": deflation}
    from ._common import time_call

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        # one untimed call first (numba compilation, the network's first run, caches), then the median of
        # the timed ones, as every other benchmark here
        elapsed, res = time_call(lambda: solve(A, b, method=method, rtol=rtol, maxiter=maxiter, **options),
                                 repeats=3, warmup=1)
    rel = float(np.linalg.norm(b - A @ res.x) / np.linalg.norm(b))
    return {"iterations": res.iterations, "time_s": elapsed, "setup_s": res.setup_time_s, "method_used": res.method,
            "converged": bool(res.converged and rel <= rtol * (1 + 1e-9)), "true_rel_residual": rel,
            "history": [float(v) / float(np.linalg.norm(b)) for v in res.residual_norms],
            "warnings": [str(w.message) for w in caught], "extras": {k: v for k, v in res.extras.items()
                                                                    if k in ("model", "dcdm_iterations",
                                                                             "fallback_at_iteration",
                                                                             "network_time_s",
                                                                             "deflation_coarse_size")}}


# Column prefix -> (command-line model option, deflation); "paper" is Kaneda et al.'s method unchanged.
_VARIANTS = {2: {"dcdm": ("model_2d", "auto"), "paper": ("model_2d", None)},
             3: {"dcdm": ("model_3d", "auto"), "paper": ("model_3d", None), "ml": ("model_3d_ml", "auto")}}


def _models(args):
    """``{dims: {column prefix: (model name, deflation)}}``; a model that is not shipped is skipped."""
    from .. import models

    shipped = set(models.available())
    out = {}
    for dims, variants in _VARIANTS.items():
        out[dims] = {}
        for prefix, (option, deflation) in variants.items():
            model = getattr(args, option)
            if model and (model in shipped or os.path.exists(model)) and not (prefix == "paper" and args.no_paper):
                out[dims][prefix] = (model, deflation)
    return out


def main(argv=None) -> int:
    parser = benchmark_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--rtol", type=float, default=1e-6)
    parser.add_argument("--no-fluid", action="store_true", help="skip the fluid-sequence right-hand sides")
    parser.add_argument("--maxiter", type=positive_int, default=1000)
    parser.add_argument("--threads", type=positive_int, default=2,
                        help="torch threads for the network (1 is faster on an oversubscribed machine)")
    parser.add_argument("--max-fluid-3d", type=positive_int, default=96,
                        help="largest 3D grid that also gets a fluid-simulation right-hand side")
    parser.add_argument("--model-2d", default="poisson2d-64", help="2D model (columns dcdm_*)")
    parser.add_argument("--model-3d", default="poisson3d-32", help="faithful 3D model (columns dcdm_*)")
    parser.add_argument("--model-3d-ml", default="poisson3d-32-ml",
                        help="multi-level 3D model (columns ml_*; '' to skip)")
    parser.add_argument("--jit", action="store_true",
                        help="let repeated solves use the frozen TorchScript network (off: every column runs the "
                             "eager network, so the columns sharing a model and grid are timed alike)")
    parser.add_argument("--no-paper", action="store_true",
                        help="skip the paper's method without deflation (columns paper_*)")
    args = parser.parse_args(argv)
    if not args.jit:
        os.environ["LINSOLVE_JIT"] = "0"
    import torch

    torch.set_num_threads(max(1, args.threads))
    model_sets = _models(args)
    rows, histories = [], {}
    for label, rhs, A, b, shape, cells in _problems(args.quick, not args.no_fluid and not args.quick, args.max_fluid_3d):
        row = {"problem": label, "rhs": rhs, "n": int(A.shape[0])}
        runs = [(prefix, "dcdm", model, deflation) for prefix, (model, deflation) in model_sets[len(shape)].items()]
        runs += [("cg", "cg", None, None), ("amg", "amg-cg", None, None)]
        text = []
        for key, method, model, deflation in runs:
            out = _run(method, A, b, shape, cells, args.rtol, args.maxiter, model, deflation)
            row[f"{key}_its"] = out["iterations"]
            row[f"{key}_s"] = out["time_s"]
            row[f"{key}_ok"] = out["converged"]
            if method == "dcdm":
                row[f"{key}_used"] = out["method_used"]
                row[f"{key}_model"] = model
                row[f"{key}_net_s"] = out["extras"].get("network_time_s")
                row[f"{key}_coarse"] = out["extras"].get("deflation_coarse_size")
                histories[f"{label} {rhs} {key} {model}"] = out["history"]
            if method == "amg-cg":
                row["amg_setup_s"] = out["setup_s"]
            used = f" ({out['method_used']})" if method == "dcdm" and out["method_used"] != "dcdm" else ""
            text.append(f"{key} {out['iterations']:4d} its {out['time_s']:7.2f}s{used}")
        # Headline columns first (docs/RESULTS.md shows a row's first ten scalar columns); None where not run.
        first = ["problem", "rhs", "n", "dcdm_its", "paper_its", "ml_its", "cg_its", "amg_its", "dcdm_s", "cg_s",
                 "amg_s"]
        row = {**{k: row.get(k) for k in first}, **{k: v for k, v in row.items() if k not in first}}
        rows.append(row)
        print(f"  {label:22s} {rhs:6s} " + " | ".join(text), flush=True)
        write_results(NAME, {"rows": rows, "growth": _growth(rows), "models": model_sets[3], "histories": histories,
                             "partial": True}, args)
    columns = ["problem", "rhs", "n", "dcdm_its", "dcdm_s", "paper_its", "paper_s", "ml_its", "ml_s", "cg_its", "cg_s",
               "amg_its", "amg_s", "amg_setup_s"]
    print_table(rows, columns, title=f"DCDM (dcdm: {args.model_3d} / {args.model_2d} with deflation; paper: same "
                                     f"without; ml: {args.model_3d_ml} with deflation) vs CG vs PyAMG-CG, true "
                                     f"relative residual <= {args.rtol:g}")
    growth = _growth(rows)
    if growth:
        print("DCDM iteration growth: " + ", ".join(f"{k}: {v:.2f}x" for k, v in growth.items()))
    # "summary" is what docs/RESULTS.md shows under the table (bench/readme_results.py).
    summary = {f"growth {k}": round(v, 3) for k, v in growth.items()}
    path = write_results(NAME, {"rows": rows, "growth": growth, "summary": summary, "models": model_sets[3],
                                "histories": histories, "partial": False}, args)
    print(f"results written to {path}")
    if not args.no_plots and histories:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 5))
        for name, hist in histories.items():
            ax.semilogy(hist, label=name, ls=":" if " paper " in name else "--" if " ml " in name else "-")
        ax.axhline(args.rtol, color="k", lw=0.8, ls="--")
        ax.set_xlabel("iteration")
        ax.set_ylabel("true relative residual")
        ax.set_title("DCDM (shipped models; dotted: paper, no deflation; dashed: multi-level)")
        ax.legend(fontsize=6, ncol=2)
        ax.grid(True, which="both", alpha=0.3)
        save_figure(fig, f"{results_dir(args)}/{NAME}.png")
    return 0


def _growth(rows):
    """DCDM iterations at 96³ over those at 64³, per right-hand side and model column."""
    out = {}
    for prefix in ("dcdm", "paper", "ml"):
        its = {(r["problem"].split()[1], r["rhs"]): r[f"{prefix}_its"] for r in rows
               if r["problem"].startswith("3D") and r.get(f"{prefix}_its")}
        for rhs in ("random", "fluid"):
            a, b = its.get(("64^3", rhs)), its.get(("96^3", rhs))
            if a and b:
                model = next((r[f"{prefix}_model"] for r in rows
                              if r["problem"].startswith("3D") and r.get(f"{prefix}_model")), prefix)
                out[f"64^3->96^3 {rhs} {prefix} {model}"] = b / a
    return out
