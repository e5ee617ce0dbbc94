"""What every benchmark shares: arguments, timing, machine info, atomic result files, plots.

Rules (DEVELOPERS.md): a warm-up run is excluded, timings are medians of
repeats, and ratios are measured side by side in one process; iteration counts
are exact and reported beside times.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from typing import Callable

import numpy as np

from .._argtypes import OneLineParser, positive_int
from .._io import atomic_write_bytes, atomic_write_json
from .._provenance import git_commit

__all__ = ["benchmark_parser", "time_call", "machine_info", "git_commit", "write_results",
           "save_figure", "print_table", "results_dir", "median_runs", "plot_convergence",
           "plot_scaling", "plot_cumulative", "new_figure"]


def results_dir(args=None) -> str:
    """``--out`` if given, else ``bench/results`` under the current directory."""
    out = getattr(args, "out", None) or os.path.join("bench", "results")
    os.makedirs(out, exist_ok=True)
    return out


def benchmark_parser(name: str, description: str) -> argparse.ArgumentParser:
    """Parser with the options every benchmark takes (``--quick``, ``--out``, ``--repeats``)."""
    parser = OneLineParser(prog=f"linsolve bench {name}", description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, finishes in under a minute")
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed repeats per measurement")
    parser.add_argument("--no-plots", action="store_true", help="skip PNG plots")
    return parser


def time_call(fn: Callable, repeats: int = 3, warmup: int = 1):
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times; return (median seconds, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def machine_info() -> dict:
    """Platform, CPU count, library versions and BLAS/OpenMP thread pools (threadpoolctl)."""
    import numba
    import pyamg
    import scipy

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pyamg": pyamg.__version__,
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "git_commit": git_commit(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        info["torch"] = None
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
                               for p in threadpool_info()]
    except Exception:  # pragma: no cover
        info["threadpools"] = []
    return info


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        value = float(obj)
        return value if np.isfinite(value) else str(value)
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    # Anything else (a thread pool's version callable, a path...) is recorded by its text.
    return str(obj)


def write_results(name: str, data: dict, args=None) -> str:
    """Write ``{machine, args, results}`` to ``<out>/<name>.json`` atomically; return the path."""
    path = os.path.join(results_dir(args), f"{name}.json")
    payload = {"benchmark": name, "machine": machine_info(),
               "arguments": {k: v for k, v in vars(args).items()} if args is not None else {},
               "results": data}
    atomic_write_json(path, _jsonable(payload))
    return path


def save_figure(fig, path: str) -> str:
    """Save a matplotlib figure as PNG atomically and close it."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def print_table(rows: list[dict], columns: list[str], title: str = "", floatfmt: str = ".3g") -> str:
    """Print (and return) a plain-text table of ``rows`` restricted to ``columns``."""
    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    text = "\n".join(lines)
    print(text)
    return text


def median_runs(fn: Callable, repeats: int = 3, warmup: int = 1):
    """Like :func:`time_call` for solvers: median total and median setup seconds.

    ``fn()`` must return an object with a ``setup_time_s`` attribute (a
    :class:`~linsolve.SolveResult`); the solve time is the median of
    ``total - setup`` over the timed repeats. Returns
    ``(total_s, setup_s, solve_s, last_result)``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.benchmarks._common import median_runs
    >>> A = linsolve.problems.poisson((16, 16))
    >>> total, setup, solve_s, res = median_runs(lambda: linsolve.solve(A, np.ones(256), method="cg"))
    >>> res.converged and total >= solve_s >= 0
    True
    """
    result = None
    for _ in range(warmup):
        result = fn()
    totals, setups = [], []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        totals.append(time.perf_counter() - t0)
        setups.append(float(getattr(result, "setup_time_s", 0.0) or 0.0))
    totals_arr, setups_arr = np.asarray(totals), np.asarray(setups)
    return (float(np.median(totals_arr)), float(np.median(setups_arr)),
            float(np.median(totals_arr - setups_arr)), result)


def new_figure(figsize=(6.4, 4.2)):
    """A matplotlib (figure, axes) pair on the non-interactive Agg backend.

    Examples
    --------
    >>> from linsolve.benchmarks._common import new_figure
    >>> fig, ax = new_figure()
    >>> type(ax).__name__
    'Axes'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def _finish(ax, xlabel, ylabel, title):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def plot_convergence(curves: dict, path: str, *, xlabel: str = "iteration",
                     ylabel: str = "relative residual  ||b - Ax|| / ||b||", title: str = "",
                     logx: bool = False) -> str:
    """Semilog-y residual curves ``{label: (x, residual)}`` (residual vs iteration or seconds).

    Examples
    --------
    >>> import os, tempfile
    >>> from linsolve.benchmarks._common import plot_convergence
    >>> path = os.path.join(tempfile.mkdtemp(), "res.png")
    >>> plot_convergence({"cg": ([0, 1, 2], [1.0, 1e-3, 1e-7])}, path) == path
    True
    """
    fig, ax = new_figure()
    for label, (xs, ys) in curves.items():
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        keep = np.isfinite(ys) & (ys > 0)
        ax.semilogy(xs[keep], ys[keep], label=label, lw=1.4)
    if logx:
        ax.set_xscale("log")
    _finish(ax, xlabel, ylabel, title)
    return save_figure(fig, path)


def plot_scaling(series: dict, path: str, *, xlabel: str = "unknowns n", ylabel: str = "seconds",
                 title: str = "") -> str:
    """Log-log lines with markers ``{label: (x, y)}`` (time vs grid size).

    Examples
    --------
    >>> import os, tempfile
    >>> from linsolve.benchmarks._common import plot_scaling
    >>> path = os.path.join(tempfile.mkdtemp(), "t.png")
    >>> plot_scaling({"cg": ([1e3, 1e4], [0.01, 0.2])}, path) == path
    True
    """
    fig, ax = new_figure()
    for label, (xs, ys) in series.items():
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        keep = np.isfinite(xs) & np.isfinite(ys) & (ys > 0)
        if keep.any():
            ax.loglog(xs[keep], ys[keep], marker="o", label=label)
    _finish(ax, xlabel, ylabel, title)
    return save_figure(fig, path)


def plot_cumulative(costs: dict, path: str, *, xlabel: str = "instance",
                    ylabel: str = "cumulative seconds", title: str = "", logy: bool = False) -> str:
    """Cumulative cost over a sequence ``{label: per-instance costs}``.

    Examples
    --------
    >>> import os, tempfile
    >>> from linsolve.benchmarks._common import plot_cumulative
    >>> path = os.path.join(tempfile.mkdtemp(), "c.png")
    >>> plot_cumulative({"cg": [3, 4, 5]}, path) == path
    True
    """
    fig, ax = new_figure()
    for label, values in costs.items():
        values = np.asarray(values, float)
        ax.plot(np.arange(1, values.size + 1), np.cumsum(values), label=label)
    if logy:
        ax.set_yscale("log")
    _finish(ax, xlabel, ylabel, title)
    return save_figure(fig, path)
