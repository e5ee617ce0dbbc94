"""Command line: ``linsolve demo | solve | run | bench | train | methods``.

Bad input ends with a one-line message on stderr and a non-zero exit code
(2 for usage / input errors, 1 for a solve that did not converge).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import numpy as np

from .._argtypes import OneLineParser, non_negative_float, positive_float, positive_int
from .._io import MissingFileError
from ..problems.demo import demo_problem  # noqa: F401  (linsolve.cli.demo_problem, as before)

BENCHMARKS = ("kernels", "poisson", "fluid", "cfd", "relax", "gpu", "dcdm", "petsc")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="linsolve", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="solve a 3D Poisson problem with an obstacle by every method",
                          description="3D Poisson (default 48^3) with a spherical obstacle, solved by "
                                      "each available method; prints a table and writes a plot.")
    demo.add_argument("--size", type=positive_int, default=48, help="grid cells per axis (default 48)")
    demo.add_argument("--rtol", type=positive_float, default=1e-6,
                      help="relative residual target (> 0: the demo runs every method to it)")
    demo.add_argument("--out", default="linsolve_demo.png", help="convergence plot PNG path")
    demo.add_argument("--methods", default=None,
                      help="comma-separated methods (default: every method that applies)")

    solve = sub.add_parser("solve", help="solve A x = b for a matrix file",
                           description="Solve A x = b with A from a Matrix Market (.mtx, .mtx.gz) or "
                                       ".npz file; b from --rhs (.npy / .txt) or all ones.")
    solve.add_argument("matrix", help="path to the matrix")
    solve.add_argument("--rhs", default=None, help="right-hand side file (.npy or text); default ones")
    solve.add_argument("--method", default="auto", help="solver method (see `linsolve methods`)")
    solve.add_argument("--rtol", type=non_negative_float, default=1e-6, help="relative residual target")
    solve.add_argument("--atol", type=non_negative_float, default=0.0, help="absolute residual target")
    solve.add_argument("--maxiter", type=positive_int, default=None, help="iteration limit")
    solve.add_argument("--output", default=None, help="write the solution to this .npy file")

    run = sub.add_parser("run", help="run a Python script with scipy.sparse.linalg.cg as linsolve.auto_cg",
                         description="Run SCRIPT as `python SCRIPT ARGS...` inside linsolve.patch_scipy(): a "
                                     "simulation that calls SciPy's cg (PhiFlow, FiPy) gets linsolve's fast "
                                     "path without a change to its code.")
    run.add_argument("script", nargs="?", help="the Python script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")

    bench = sub.add_parser("bench", help="run a benchmark (writes bench/results/NAME.json and plots)",
                           description="Run one benchmark; extra arguments go to the benchmark.")
    bench.add_argument("name", help=f"one of {', '.join(BENCHMARKS)}")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark (e.g. --quick)")

    # add_help=False: `linsolve train --help` is answered by the trainer's own parser (presets, options).
    train = sub.add_parser("train", help="train a learned model from a preset or config file", add_help=False,
                           description="Train a model; see `linsolve train --list` for presets.")
    train.add_argument("args", nargs=argparse.REMAINDER, help="preset or config, then options")

    sub.add_parser("methods", help="list the solver methods", description="List the solver methods.")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    # train/bench forward their own options (``linsolve train --list``) to the module behind them.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command in ("train", "bench"):
            args.args = list(extra) + list(args.args)
        else:
            prog = f"linsolve {args.command}"
            parser.exit(2, f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)\n")
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "solve":
            return _solve(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "run":
            return _run_script(args)
        if args.command == "train":
            from .train import main as train_main

            return int(train_main(args.args) or 0)
        if args.command == "methods":
            from ..solve import available_methods

            for name, text in available_methods().items():
                print(f"{name:12s} {text}")
            return 0
    except (ValueError, TypeError, ImportError, OSError) as exc:
        print(f"linsolve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "run":
            raise  # the script's own: python's traceback and death by SIGINT, as `python SCRIPT` ends
        print(f"linsolve {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _load_rhs(path, n):
    if not os.path.exists(path):
        raise MissingFileError(f"right-hand side file not found: {path}")
    try:
        if path.endswith(".npy"):
            b = np.load(path, allow_pickle=False)
        elif path.endswith((".npz", ".mtx", ".gz", ".pkl", ".pickle")):
            raise ValueError(f"right-hand side {path!r}: use a .npy file or a text file of numbers")
        else:
            b = np.loadtxt(path)
    except (UnicodeDecodeError, OSError, ValueError) as exc:
        if "use a .npy file" in str(exc):
            raise
        raise ValueError(f"cannot read the right-hand side {path!r} (a .npy file or a text file of numbers): "
                         f"{exc}") from None
    return b


def _solve(args) -> int:
    from ..problems import load_matrix
    from ..solve import solve

    A = load_matrix(args.matrix)
    n = A.shape[0]
    b = _load_rhs(args.rhs, n) if args.rhs else np.ones(n)
    res = solve(A, b, method=args.method, rtol=args.rtol, atol=args.atol, maxiter=args.maxiter)
    print(f"method={res.method} converged={res.converged} info={res.info} iterations={res.iterations} "
          f"relative_residual={res.relative_residual:.3e} time_s={res.time_s:.3f}")
    if args.output:
        from .._io import atomic_save_npy
        atomic_save_npy(args.output, np.asarray(res.x))
    return 0 if res.converged else 1


def _run_script(args) -> int:
    import runpy

    from ..shim import patch_scipy

    if args.script is None:
        raise ValueError("no script given: linsolve run SCRIPT [ARGS...]")
    if os.path.isdir(args.script):
        raise ValueError(f"{args.script} is a directory, not a Python script")
    if not os.path.isfile(args.script):
        raise MissingFileError(f"script not found: {args.script}")
    script = os.path.abspath(args.script)  # python gives __main__ an absolute __file__ (a chdir keeps it valid)
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [args.script] + list(args.args)
    sys.path.insert(0, os.path.dirname(script))  # as `python SCRIPT` would
    try:
        with patch_scipy():
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:  # the script's own exit, as `python SCRIPT` ends: sys.exit("text") prints it
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except Exception as exc:  # the script's own error (a ValueError too): its traceback and status 1, as python
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next  # from the script's own frames on, as python shows them
        sys.excepthook(type(exc), exc, tb if tb is not None else exc.__traceback__)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def _bench(args) -> int:
    if args.name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {args.name!r}; choose one of {', '.join(BENCHMARKS)}")
    try:
        module = importlib.import_module(f"linsolve.benchmarks.{args.name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"linsolve.benchmarks.{args.name}":
            raise ValueError(f"benchmark {args.name!r} is not available in this version") from None
        raise
    return int(module.main(args.args) or 0)


def _demo(args) -> int:
    import time

    from ..solve import available_methods, solve

    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in available_methods()]
        if unknown or not methods:
            raise ValueError(f"unknown method(s) {', '.join(unknown) or '(none given)'} in --methods; choose from "
                             f"{', '.join(available_methods())}")
    else:
        methods = [m for m in ("cg", "ssor-cg", "amg-cg", "learned-pcg", "dcdm") if m in available_methods()]
    A, b, cell_types = demo_problem(args.size)
    n = A.shape[0]
    print(f"linsolve demo: 3D pressure Poisson {args.size}^3 with a spherical obstacle, n = {n}, "
          f"nnz = {A.nnz}, rtol = {args.rtol:g} (true relative residual)")
    rows, histories = [], {}
    for method in methods:
        options = {}
        if method in ("dcdm", "learned-pcg"):
            options["grid_shape"] = cell_types.shape
            if method == "learned-pcg":
                options["cell_types"] = cell_types
        t0 = time.perf_counter()
        try:
            res = solve(A, b, method=method, rtol=args.rtol, **options)
        except (ValueError, TypeError, ImportError) as exc:
            print(f"  {method:12s} skipped: {exc}")
            continue
        elapsed = time.perf_counter() - t0
        rows.append((res.method, res.iterations, res.setup_time_s, elapsed, res.relative_residual, res.converged))
        histories[res.method] = np.asarray(res.residual_norms) / max(np.linalg.norm(b), 1e-300)
    header = f"{'method':18s} {'iters':>6s} {'setup s':>8s} {'total s':>8s} {'rel. residual':>14s} {'converged':>9s}"
    print(header)
    print("-" * len(header))
    for name, its, setup, total, rel, conv in rows:
        print(f"{name:18s} {its:6d} {setup:8.3f} {total:8.3f} {rel:14.3e} {str(conv):>9s}")
    _plot_histories(histories, args.out, title=f"3D Poisson {args.size}^3 with obstacle")
    print(f"convergence plot written to {args.out}")
    return 0 if all(r[-1] for r in rows) else 1


def _plot_histories(histories, path, title=""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, hist in histories.items():
        ax.semilogy(np.arange(len(hist)), hist, label=name)
    ax.set_xlabel("iteration")
    ax.set_ylabel("relative residual")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
