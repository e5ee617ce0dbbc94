"""Kernel benchmark: our numba SOR / SSOR / SpMV / stencil kernels against PyAMG and SciPy.

Side by side in one process (interleaved repeats, medians), on the Dirichlet
Poisson matrices of :func:`linsolve.problems.poisson`:

* forward SOR sweep: ``linsolve.kernels.sor_forward`` vs
  ``pyamg.relaxation.relaxation.sor(..., sweep='forward')``;
* symmetric sweep: ours vs PyAMG's forward + backward ``sor`` (PyAMG's own
  ``'symmetric'`` ignores omega);
* one SOR solver iteration with its true residual: our fused sweep vs PyAMG's
  sweep plus SciPy's ``b - A @ x``;
* SSOR preconditioner application vs PyAMG's symmetric sweep from zero;
* SpMV: ``linsolve.kernels.csr_matvec`` (parallel above a size threshold) and
  the serial kernel vs SciPy's ``A @ x``;
* matrix-free 5/7-point stencil apply and red-black SOR sweep (all threads and
  one thread), as effective bandwidth beside a NumPy stream-style copy
  (``numpy.copyto`` of 128 MiB, bytes read + written), a numba-parallel copy
  and a copy of one grid vector (same cache level), measured in the same run.

Effective bandwidth counts the bytes a kernel must move at least once
(matrix arrays, vectors read and written), divided by the median time; a
red-black sweep is counted as 24 bytes per cell (x read and written, b read)
although each colour pass reads x again. Multi-threaded rows need idle cores:
on a machine whose cores are busy with other processes every parallel region
waits for the scheduler and can be orders of magnitude slower than the
one-thread rows, which is why both are reported.
"""
from __future__ import annotations

import time

import numpy as np

from ._common import benchmark_parser, print_table, results_dir, save_figure, write_results

__all__ = ["main"]

_FULL = [(64, 64, 64), (96, 96, 96), (1024, 1024)]
_QUICK = [(32, 32, 32), (48, 48, 48), (256, 256)]
_OMEGA = 1.5


def _paired(fns: dict, repeats: int) -> dict:
    """Median (and min) seconds of each callable, repeats interleaved so load drifts hit all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    out = {k: float(np.median(v)) for k, v in times.items()}
    out.update({k + "_min": float(np.min(v)) for k, v in times.items()})
    return out


def _stream(n_bytes: int, repeats: int) -> dict:
    from numba import njit, prange

    @njit(parallel=True, cache=False)
    def parallel_copy(dst, src):
        for i in prange(src.shape[0]):
            dst[i] = src[i]

    n = n_bytes // 8
    src = np.random.default_rng(0).standard_normal(n)
    dst = np.empty_like(src)
    t = _paired({"numpy_copy": lambda: np.copyto(dst, src),
                 "numba_parallel_copy": lambda: parallel_copy(dst, src)}, repeats)
    moved = 2 * 8 * n
    return {"array_bytes": 8 * n, "numpy_copy_s": t["numpy_copy"],
            "numba_parallel_copy_s": t["numba_parallel_copy"],
            "numpy_copy_GBs": moved / t["numpy_copy"] / 1e9,
            "numba_parallel_copy_GBs": moved / t["numba_parallel_copy"] / 1e9}


def _bench_problem(shape, repeats: int, stream: dict) -> dict:
    from pyamg.relaxation.relaxation import sor as pyamg_sor

    from ..kernels import (csr_matvec, csr_matvec_serial, diagonal_positions, rb_sor_sweep, sor_forward,
                           sor_forward_residual, sor_symmetric, stencil_apply)
    from ..precond import ssor
    from ..problems import poisson

    A = poisson(shape)
    n, nnz = A.shape[0], A.nnz
    rng = np.random.default_rng(1)
    b = rng.standard_normal(n)
    x = rng.standard_normal(n)
    y = x.copy()
    out = np.empty(n)
    xprev = np.empty(n)
    ip, ix, data = A.indptr, A.indices, A.data
    dpos = diagonal_positions(ip, ix)
    M = ssor(A, _OMEGA)
    zero = np.zeros(n)

    csr_bytes = nnz * (data.itemsize + ix.itemsize) + (n + 1) * ip.itemsize
    sweep_bytes = csr_bytes + n * (8 + 8 + 8 + 8)   # + dpos, b, x read and written
    spmv_bytes = csr_bytes + 2 * 8 * n

    def pyamg_symmetric():
        pyamg_sor(A, y, b, _OMEGA, iterations=1, sweep="forward")
        pyamg_sor(A, y, b, _OMEGA, iterations=1, sweep="backward")

    def pyamg_sweep_residual():
        pyamg_sor(A, y, b, _OMEGA, iterations=1, sweep="forward")
        return np.linalg.norm(b - A @ y)

    def pyamg_ssor_apply():
        z = zero.copy()
        pyamg_sor(A, z, b, _OMEGA, iterations=1, sweep="forward")
        pyamg_sor(A, z, b, _OMEGA, iterations=1, sweep="backward")
        return z

    rows = []
    pairs = {
        "sor_forward_sweep": ({"ours": lambda: sor_forward(ip, ix, data, dpos, x, b, _OMEGA),
                               "ref": lambda: pyamg_sor(A, y, b, _OMEGA, iterations=1, sweep="forward")},
                              "pyamg sor forward", sweep_bytes),
        "ssor_symmetric_sweep": ({"ours": lambda: sor_symmetric(ip, ix, data, dpos, x, b, _OMEGA),
                                  "ref": pyamg_symmetric}, "pyamg sor forward+backward", 2 * sweep_bytes),
        "sor_iteration_with_true_residual": (
            {"ours": lambda: sor_forward_residual(ip, ix, data, dpos, x, xprev, b, _OMEGA),
             "ref": pyamg_sweep_residual}, "pyamg sweep + scipy b - A@x", sweep_bytes + 8 * n),
        "ssor_preconditioner_apply": ({"ours": lambda: M.matvec(b), "ref": pyamg_ssor_apply},
                                      "pyamg symmetric sweep from 0", csr_bytes + 4 * 8 * n),
        "spmv": ({"ours": lambda: csr_matvec(ip, ix, data, x), "ref": lambda: A @ x}, "scipy A @ x",
                 spmv_bytes),
        "spmv_serial": ({"ours": lambda: csr_matvec_serial(ip, ix, data, x, out), "ref": lambda: A @ x},
                        "scipy A @ x", spmv_bytes),
    }
    for name, (fns, ref_name, nbytes) in pairs.items():
        t = _paired(fns, repeats)
        rows.append({"problem": "x".join(map(str, shape)), "kernel": name, "reference": ref_name,
                     "ours_ms": 1e3 * t["ours"], "ref_ms": 1e3 * t["ref"], "ratio": t["ours"] / t["ref"],
                     "ours_GBs": nbytes / t["ours"] / 1e9, "ours_min_ms": 1e3 * t["ours_min"],
                     "ref_min_ms": 1e3 * t["ref_min"], "ratio_of_mins": t["ours_min"] / t["ref_min"]})
        # Keep the iterates bounded: the sweeps above run many times on x, y.
        x[:] = rng.standard_normal(n)
        y[:] = x

    import numba

    xg = x.reshape(shape)
    bg = b.reshape(shape).copy()
    og = np.empty_like(xg)
    grid_fns = {"stencil_apply": lambda: stencil_apply(xg, og),
                "red_black_sor_sweep": lambda: rb_sor_sweep(xg, bg, _OMEGA),
                "copy": lambda: np.copyto(og, xg)}
    t_par = _paired(grid_fns, repeats)
    # The same kernels on one thread: comparable with the single-threaded NumPy
    # copy, and far less sensitive to other processes on a loaded machine.
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        t_one = _paired({k: v for k, v in grid_fns.items() if k != "copy"}, repeats)
    finally:
        numba.set_num_threads(threads)
    # A copy of one grid vector sits in the same cache level as the stencil's data.
    copy_same_size = 2 * 8 * n / t_par["copy"] / 1e9
    for label, t, nthreads in (("", t_par, threads), ("_1thread", t_one, 1)):
        for kernel, nbytes in (("stencil_apply", 2 * 8 * n), ("red_black_sor_sweep", 3 * 8 * n)):
            secs = t[kernel]
            gbs = nbytes / secs / 1e9
            rows.append({"problem": "x".join(map(str, shape)), "kernel": kernel + label,
                         "reference": "numpy copy bandwidth", "threads": nthreads,
                         "ours_ms": 1e3 * secs, "ref_ms": float("nan"), "ratio": float("nan"),
                         "ours_GBs": gbs,
                         "ours_min_ms": 1e3 * t[kernel + "_min"],
                         "fraction_of_numpy_copy": gbs / stream["numpy_copy_GBs"],
                         "fraction_of_parallel_copy": gbs / stream["numba_parallel_copy_GBs"],
                         "numpy_copy_same_size_GBs": copy_same_size,
                         "fraction_of_same_size_copy": gbs / copy_same_size})
    return {"shape": list(shape), "n": n, "nnz": nnz, "rows": rows}


def _figure(problems, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kernels = [r["kernel"] for r in problems[0]["rows"] if np.isfinite(r["ratio"])]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(problems)
    for k, prob in enumerate(problems):
        ratios = [next(r["ratio"] for r in prob["rows"] if r["kernel"] == name) for name in kernels]
        ax.bar(np.arange(len(kernels)) + k * width, ratios, width, label="x".join(map(str, prob["shape"])))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(kernels)) + 0.4 - width / 2)
    ax.set_xticklabels(kernels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("time ours / reference (lower is better)")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv=None) -> int:
    parser = benchmark_parser("kernels", __doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 25)
    shapes = _QUICK if args.quick else _FULL
    t_start = time.perf_counter()
    # Compile (or load from cache) every kernel before timing anything.
    _bench_problem((6, 5, 4), 1, {"numpy_copy_GBs": 1.0, "numba_parallel_copy_GBs": 1.0})
    _bench_problem((6, 5), 1, {"numpy_copy_GBs": 1.0, "numba_parallel_copy_GBs": 1.0})
    stream = _stream((32 if args.quick else 128) * 2 ** 20, repeats)
    print(f"stream copy: numpy {stream['numpy_copy_GBs']:.2f} GB/s, "
          f"numba parallel {stream['numba_parallel_copy_GBs']:.2f} GB/s")
    problems = []
    for shape in shapes:
        problems.append(_bench_problem(shape, repeats, stream))
        print_table(problems[-1]["rows"], ["problem", "kernel", "reference", "ours_ms", "ref_ms", "ratio",
                                           "ratio_of_mins", "ours_GBs", "fraction_of_numpy_copy",
                                           "fraction_of_same_size_copy"], floatfmt=".3g")
    targets = {
        "sor_sweep_ratio_max": max(r["ratio"] for p in problems for r in p["rows"]
                                   if r["kernel"] in ("sor_forward_sweep", "ssor_symmetric_sweep")),
        "spmv_ratio_max": max(r["ratio"] for p in problems for r in p["rows"] if r["kernel"] == "spmv"),
        "spmv_serial_ratio_max": max(r["ratio"] for p in problems for r in p["rows"]
                                     if r["kernel"] == "spmv_serial"),
        # Ratios of the fastest repeats: less sensitive to other processes.
        "sor_sweep_ratio_of_mins_max": max(r["ratio_of_mins"] for p in problems for r in p["rows"]
                                           if r["kernel"] in ("sor_forward_sweep", "ssor_symmetric_sweep")),
        "spmv_serial_ratio_of_mins_max": max(r["ratio_of_mins"] for p in problems for r in p["rows"]
                                             if r["kernel"] == "spmv_serial"),
        "stencil_fraction_of_numpy_copy_min": min(r["fraction_of_numpy_copy"] for p in problems
                                                  for r in p["rows"] if "fraction_of_numpy_copy" in r),
        "stencil_fraction_of_numpy_copy_best_threads_min": min(
            max(r["fraction_of_numpy_copy"] for r in p["rows"] if r["kernel"].startswith(k))
            for p in problems for k in ("stencil_apply", "red_black_sor_sweep")),
        "stencil_fraction_of_same_size_copy_min": min(
            r["fraction_of_same_size_copy"] for p in problems for r in p["rows"]
            if "fraction_of_same_size_copy" in r),
        "goals": {"sor_sweep_ratio": "<= 1.0", "spmv_ratio": "<= 1.0",
                  "stencil_fraction_of_stream": ">= 0.7"},
    }
    print("targets:", {k: (round(v, 3) if isinstance(v, float) else v) for k, v in targets.items()})
    data = {"omega": _OMEGA, "repeats": repeats, "stream": stream, "problems": problems, "targets": targets,
            "wall_s": time.perf_counter() - t_start}
    path = write_results("kernels", data, args)
    print(f"wrote {path}")
    if not args.no_plots:
        import os

        print("figure:", _figure(problems, os.path.join(results_dir(args), "kernels.png")))
    return 0
