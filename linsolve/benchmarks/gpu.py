"""GPU benchmark: the torch backend on CUDA against the CPU path, a torch CG baseline and CuPy.

On a CUDA machine ``python bench/gpu.py`` (or ``linsolve bench gpu``), in
under five minutes:

1. runs the GPU tests (``pytest -m gpu tests/test_torch_backend.py``);
2. times 3D Poisson problems with solid obstacles (Dirichlet outer boundary,
   Neumann walls around the obstacles, identity rows inside them) at 128³ and
   256³, to the same ``rtol`` on the true residual: our CG (CSR and
   matrix-free stencil), red-black SSOR-CG, the multigrid-preconditioned CG
   (``learned-pcg`` with a shipped learned model, else the classical
   ``gmg-pcg``, labelled as such), DCDM when a 3D model ships, a textbook
   torch CG (one ``.item()`` per iteration, what users write by hand), CuPy's
   ``cupyx.scipy.sparse.linalg.cg`` when CuPy is installed, and the CPU path
   (NumPy/numba, same methods) at 128³;
3. writes ``bench/results/gpu.json`` with the table (iterations, ms per solve,
   ms per iteration, setup seconds, true relative residual) and the
   acceptance ratios (learned GPU vs learned CPU at 128³; learned GPU vs the
   best CG baseline).

Without CUDA it says so and exits with status 0, unless asked for a CPU run:
``--quick`` runs the whole pipeline on the torch-CPU path at 16³ (seconds;
``make test`` exercises it), ``--cpu`` compares torch-CPU and NumPy CG time
per iteration at ``--sizes`` (default 64³) side by side.

Setup (matrix conversion to the device, hierarchy build) is excluded from
``solve_ms`` and reported as ``setup_s``: on a fixed grid it happens once per
simulation, and each solve reuses it. Times are medians of ``--repeats``
after one warm-up solve; device work is synchronised before the clock stops.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import scipy.sparse as sp

from .._argtypes import positive_int
from ._common import benchmark_parser, print_table, save_figure, time_call, write_results

__all__ = ["main", "obstacle_poisson"]

TIME_BUDGET_S = 270.0  # stop starting new measurements after this (the issue asks < 5 minutes)
DCDM_MAXITER = 200


def obstacle_poisson(n: int, *, seed: int = 0, fraction: float = 0.1):
    """7-point Poisson on ``n³`` cells with spherical solid obstacles; returns ``(A, b, cell_types)``.

    Faces touching a solid cell carry no flux (Neumann walls), the outer
    boundary is Dirichlet, solid cells are identity rows with ``b = 0``; fluid
    pockets the spheres close off are filled in, so A is positive definite.
    Built from diagonals, so 256³ takes seconds.

    Examples
    --------
    >>> from linsolve.benchmarks.gpu import obstacle_poisson
    >>> A, b, types = obstacle_poisson(12)
    >>> A.shape, int(types.sum()) > 0, float(abs(A - A.T).max())
    ((1728, 1728), True, 0.0)
    """
    rng = np.random.default_rng(seed)
    shape = (n, n, n)
    grid = np.indices(shape, dtype=np.float32) / n
    solid = np.zeros(shape, dtype=bool)
    target = fraction * n ** 3
    while solid.sum() < target:
        centre = rng.uniform(0.2, 0.8, 3)
        radius = rng.uniform(0.06, 0.14)
        solid |= ((grid[0] - centre[0]) ** 2 + (grid[1] - centre[1]) ** 2
                  + (grid[2] - centre[2]) ** 2) < radius ** 2
    # Fluid that no path joins to the outer (Dirichlet) boundary would make A singular and a random b inconsistent
    # (at 256^3 the spheres close a 2-cell pocket, and every CG diverged): such pockets are filled in.
    from scipy.ndimage import label

    regions, _ = label(~solid)
    faces = [regions[0], regions[-1], regions[:, 0], regions[:, -1], regions[:, :, 0], regions[:, :, -1]]
    open_regions = np.unique(np.concatenate([f.ravel() for f in faces]))
    solid |= ~np.isin(regions, open_regions[open_regions > 0])
    fluid = (~solid).astype(np.float64)
    N = n ** 3
    strides = (n * n, n, 1)
    diag = np.zeros(shape)
    offsets, diagonals = [0], []
    for axis, stride in enumerate(strides):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, n - 1)
        hi[axis] = slice(1, n)
        w = np.zeros(shape)
        w[tuple(lo)] = fluid[tuple(lo)] * fluid[tuple(hi)]  # face between cell and its +1 neighbour
        diag += w
        diag[tuple(hi)] += w[tuple(lo)]
        edge_lo = [slice(None)] * 3
        edge_hi = [slice(None)] * 3
        edge_lo[axis] = slice(0, 1)
        edge_hi[axis] = slice(n - 1, n)
        diag[tuple(edge_lo)] += fluid[tuple(edge_lo)]  # Dirichlet outer boundary
        diag[tuple(edge_hi)] += fluid[tuple(edge_hi)]
        flat = -w.ravel()[:N - stride]
        offsets += [stride, -stride]
        diagonals += [flat, flat]
    diag = np.where(solid, 1.0, diag)
    A = sp.diags([diag.ravel()] + diagonals, offsets, shape=(N, N), format="csr")
    A.eliminate_zeros()
    A.sort_indices()
    b = rng.standard_normal(N)
    b[solid.ravel()] = 0.0
    cell_types = solid.astype(np.int8)  # FLUID=0, SOLID=1
    return A, b, cell_types


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _torch_cg_baseline(A_t, b, rtol, maxiter):
    """Textbook CG in torch, as written by hand: one host sync per iteration (``.item()``)."""
    import torch

    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = torch.dot(r, r).item()
    tol2 = (rtol * torch.linalg.vector_norm(b).item()) ** 2
    its = 0
    while rr > tol2 and its < maxiter:
        q = torch.mv(A_t, p)
        alpha = rr / torch.dot(p, q).item()
        x.add_(p, alpha=alpha)
        r.sub_(q, alpha=alpha)
        rr_new = torch.dot(r, r).item()
        p.mul_(rr_new / rr).add_(r)
        rr = rr_new
        its += 1
    return x, its


def _true_rel(A_op, b, x) -> float:
    import torch

    bd, xd = b.double(), x.double()
    return float(torch.linalg.vector_norm(bd - A_op(xd)) / torch.linalg.vector_norm(bd))


def _gpu_tests(log) -> dict:
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests",
                         "test_torch_backend.py")
    if not os.path.exists(tests):
        return {"ran": False, "reason": f"{tests} not found"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", tests, "-m", "gpu", "-q", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=240)
    tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-300:]
    log(f"GPU tests: {tail} ({time.perf_counter() - t0:.0f} s)")
    return {"ran": True, "returncode": out.returncode, "summary": tail,
            "output_tail": out.stdout[-3000:] if out.returncode else ""}


def _mg_preconditioner(A, cell_types):
    """The learned V-cycle when a model ships, else the classical one: ``(gmg, name)``."""
    from ..precond import multigrid

    try:
        return multigrid.fast_learned(A, cell_types), "learned-pcg"
    except (ValueError, FileNotFoundError, ImportError) as exc:
        return multigrid.geometric_mg(A, cell_types), f"gmg-pcg (no learned model: {str(exc)[:60]})"


def _dcdm_model():
    try:
        from .. import models

        names = models.find(3, "dcdm")
        return names[0] if names else None
    except Exception:
        return None


def _bench_size(n, device, dtype, args, rows, log, started, cpu_path):
    import torch

    from ..backends import torch_backend as tb
    from ..backends.torch_kernels import CSROperator, StencilOperator, TorchVCycle

    t0 = time.perf_counter()
    A, b_np, cell_types = obstacle_poisson(n)
    log(f"{n}^3: matrix built in {time.perf_counter() - t0:.1f} s (n = {A.shape[0]:,}, nnz = {A.nnz:,})")
    np_dtype = np.float32 if dtype == torch.float32 else np.float64
    shape = (n, n, n)
    repeats = args.repeats or (1 if args.quick else 3)
    rtol = args.rtol
    b = torch.from_numpy(b_np.astype(np_dtype)).to(device)
    maxiter = 20 * n

    def over_budget():
        return time.perf_counter() - started > TIME_BUDGET_S

    def record(solver, fn, setup_s, dev_name, op_for_check, note=""):
        if over_budget():
            log(f"  skipped {solver}: time budget of {TIME_BUDGET_S:.0f} s used")
            rows.append({"size": f"{n}^3", "solver": solver, "skipped": "time budget"})
            return None

        def timed():
            if dev_name != "cpu-numpy":
                _sync(device)
            out = fn()
            if dev_name != "cpu-numpy":
                _sync(device)
            return out

        warm = 0 if (args.quick or dev_name == "cpu-numpy") else 1
        seconds, (x, its, converged) = time_call(timed, repeats=repeats if dev_name != "cpu-numpy" else 1,
                                                 warmup=warm)
        if dev_name == "cpu-numpy":
            xt = torch.from_numpy(np.asarray(x, dtype=np.float64))
            rel = float(np.linalg.norm(b_np - A @ xt.numpy()) / np.linalg.norm(b_np))
        else:
            rel = _true_rel(op_for_check, b, x)
        row = {"size": f"{n}^3", "solver": solver, "device": dev_name, "dtype": str(dtype).replace("torch.", ""),
               "iterations": int(its), "converged": bool(converged and rel <= rtol * 1.0001),
               "rel_residual": rel, "setup_s": float(setup_s), "solve_ms": seconds * 1e3,
               "ms_per_iter": seconds * 1e3 / max(int(its), 1), "note": note}
        rows.append(row)
        log(f"  {solver:<34s} {row['iterations']:5d} its  {row['solve_ms']:9.1f} ms  "
            f"{row['ms_per_iter']:7.3f} ms/it  rel {rel:.1e}  setup {setup_s:.2f} s")
        return row

    dev_name = str(device)
    t = time.perf_counter()
    csr = CSROperator(A, device=device, dtype=dtype)
    _sync(device)
    csr_setup = time.perf_counter() - t
    t = time.perf_counter()
    stencil = StencilOperator(A, shape, device=device, dtype=dtype)
    _sync(device)
    stencil_setup = time.perf_counter() - t
    check_op = CSROperator(A, device=device, dtype=torch.float64)

    def ours(op, method, maxiter=maxiter, **kw):
        def fn():
            res = tb.solve(op, b, method=method, rtol=rtol, maxiter=maxiter, **kw)
            return res.x, res.iterations, res.converged
        return fn

    record("cg (ours, csr)", ours(csr, "cg"), csr_setup, dev_name, check_op)
    record("cg (ours, stencil)", ours(stencil, "cg"), stencil_setup, dev_name, check_op)
    record("ssor-cg red-black (ours)", ours(csr, "ssor-cg", grid_shape=shape), csr_setup, dev_name, check_op)
    t = time.perf_counter()
    gmg, mg_name = _mg_preconditioner(A, cell_types)
    vcycle = TorchVCycle(gmg, device=device, dtype=dtype, fine_operator=csr)
    _sync(device)
    mg_setup = time.perf_counter() - t
    method = "learned-pcg" if mg_name == "learned-pcg" else "gmg-pcg"
    mg_row = record(f"{mg_name.split(' ')[0]} (ours)", ours(csr, method, preconditioner=vcycle), mg_setup,
                    dev_name, check_op, note=mg_name)
    model = _dcdm_model()
    if model is not None:
        from ..precond.learned import resolve_model

        net = resolve_model(model, 3)
        # Capped: a network call per iteration is costly at 256^3 and the budget is five minutes.
        cap = 5 if args.quick else DCDM_MAXITER  # --quick only exercises the path
        record("dcdm (ours)", ours(csr, "dcdm", maxiter=cap, model=net, grid_shape=shape,
                                   cell_types=cell_types), 0.0, dev_name, check_op,
               note=f"{model}, maxiter {cap}")
    else:
        rows.append({"size": f"{n}^3", "solver": "dcdm (ours)", "skipped": "no 3D DCDM model shipped"})

    def baseline():
        x, its = _torch_cg_baseline(csr.matrix, b, rtol, maxiter)
        return x, its, True

    record("torch cg baseline (.item() per it)", baseline, csr_setup, dev_name, check_op)
    if device.type == "cuda":
        try:
            import cupy
            import cupyx.scipy.sparse as csp
            import cupyx.scipy.sparse.linalg as csla

            A_c = csp.csr_matrix(A.astype(np_dtype))
            b_c = cupy.asarray(b_np.astype(np_dtype))

            def cupy_cg():
                count = [0]
                try:
                    x, info = csla.cg(A_c, b_c, rtol=rtol, maxiter=maxiter,
                                      callback=lambda xk: count.__setitem__(0, count[0] + 1))
                except TypeError:  # older CuPy spells it tol
                    x, info = csla.cg(A_c, b_c, tol=rtol, maxiter=maxiter,
                                      callback=lambda xk: count.__setitem__(0, count[0] + 1))
                cupy.cuda.Device().synchronize()
                return torch.as_tensor(x, device=device), count[0], info == 0

            record("cupy cg", cupy_cg, 0.0, dev_name, check_op)
        except ImportError:
            rows.append({"size": f"{n}^3", "solver": "cupy cg", "skipped": "CuPy not installed"})
    cpu_rows = {}
    if cpu_path:
        from ..krylov.cg import cg_result

        A_cpu = A.astype(np_dtype)
        b_cpu = b_np.astype(np_dtype)

        def numpy_cg():
            res = cg_result(A_cpu, b_cpu, rtol=rtol, maxiter=maxiter)
            return res.x, res.iterations, res.converged

        cpu_rows["cg"] = record("cg (ours, CPU NumPy)", numpy_cg, 0.0, "cpu-numpy", None)

        def numpy_mg():
            from ..krylov.cg import cg_result as cgr

            res = cgr(A_cpu, b_cpu, rtol=rtol, maxiter=maxiter, M=gmg)
            return res.x, res.iterations, res.converged

        cpu_rows["mg"] = record(f"{mg_name.split(' ')[0]} (ours, CPU numba)", numpy_mg, gmg.setup_time_s,
                                "cpu-numpy", None, note=mg_name)
    return {"mg": mg_row, "cpu": cpu_rows, "mg_name": mg_name}


def _cpu_compare(sizes, args, log) -> list:
    """torch-CPU vs NumPy CG time per iteration, side by side in one process (honesty check)."""
    import torch

    from ..backends import torch_backend as tb
    from ..backends.torch_kernels import CSROperator, StencilOperator
    from ..krylov.cg import cg_result

    rows = []
    for n in sizes:
        A = __import__("linsolve").problems.poisson((n, n, n))
        b_np = np.random.default_rng(0).standard_normal(A.shape[0])
        b = torch.from_numpy(b_np)
        csr = CSROperator(A, dtype=torch.float64)
        stencil = StencilOperator(A, (n, n, n), dtype=torch.float64)
        entries = {"numpy cg": lambda: cg_result(A, b_np, rtol=1e-6),
                   "torch cg csr (cpu)": lambda: tb.solve(csr, b, method="cg", rtol=1e-6),
                   "torch cg stencil (cpu)": lambda: tb.solve(stencil, b, method="cg", rtol=1e-6)}
        times = {k: [] for k in entries}
        its = {}
        for rep in range(args.repeats or 3):  # interleaved, so load changes hit every entry alike
            for name, fn in entries.items():
                t0 = time.perf_counter()
                res = fn()
                times[name].append(time.perf_counter() - t0)
                its[name] = res.iterations
        ref = np.median(times["numpy cg"]) / its["numpy cg"]
        for name in entries:
            per = float(np.median(times[name])) / its[name]
            rows.append({"size": f"{n}^3", "solver": name, "iterations": its[name], "ms_per_iter": per * 1e3,
                         "ratio_vs_numpy": per / ref, "torch_threads": torch.get_num_threads()})
    print_table(rows, ["size", "solver", "iterations", "ms_per_iter", "ratio_vs_numpy"],
                title="torch-CPU vs NumPy CG (3D Poisson, float64, rtol 1e-6)")
    return rows


def profile_cycle(n: int, device, dtype, log, *, applications: int = 5) -> dict:
    """Where the torch V-cycle's time goes: kernel launches per application and the ops that cost most.

    Times ``applications`` cycles replayed from a CUDA graph and run op by op (on a CPU: op by op only), and
    profiles the op-by-op ones with ``torch.profiler``. ``bench/gpu.py --profile-cycle`` (first GPU numbers: 267 ms
    an application at 128^3, against 0.22 ms a CG iteration).

    Examples
    --------
    >>> import torch
    >>> from linsolve.benchmarks.gpu import profile_cycle
    >>> out = profile_cycle(8, torch.device("cpu"), torch.float64, lambda *a: None, applications=1)
    >>> out["ops_per_application"] > 0 and out["ms_eager"] > 0
    True
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from ..backends.torch_kernels import TorchVCycle

    A, b_np, cell_types = obstacle_poisson(n)
    gmg, name = _mg_preconditioner(A, cell_types)
    cycle = TorchVCycle(gmg, device=device, dtype=dtype)
    r = torch.from_numpy(b_np).to(device=device, dtype=dtype)
    out = {"size": f"{n}^3", "preconditioner": name, "levels": len(gmg.hierarchy.levels)}
    for label, graph in (("graph", True), ("eager", False)):
        if graph and device.type != "cuda":
            continue
        cycle.use_cuda_graph = graph
        for _ in range(2):
            cycle(r)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(applications):
            cycle(r)
        _sync(device)
        out[f"ms_{label}"] = (time.perf_counter() - t0) * 1e3 / applications
    cycle.use_cuda_graph = False
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(applications):
            cycle(r)
        _sync(device)
    events = prof.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:15]
    out["ops_per_application"] = sum(e.count for e in events if e.key.startswith("aten::")) / applications
    out["top_ops"] = [{"op": e.key, "calls_per_application": e.count / applications,
                       "ms_per_application": getattr(e, key, 0.0) / 1e3 / applications} for e in top]
    log(f"V-cycle at {n}^3 ({name}, {out['levels']} levels): " + ", ".join(
        f"{k} {v:.2f} ms" for k, v in out.items() if k.startswith("ms_")) +
        f"; {out['ops_per_application']:.0f} aten ops an application")
    for row in out["top_ops"]:
        log(f"  {row['op']:<40s} {row['calls_per_application']:8.0f} calls  {row['ms_per_application']:9.3f} ms")
    return out


def main(argv=None) -> int:
    parser = benchmark_parser("gpu", __doc__.splitlines()[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=None,
                        help="grid sides n (n^3 cells); default 128 256 on CUDA, 16 with --quick, 64 with --cpu")
    parser.add_argument("--rtol", type=float, default=1e-6, help="relative true-residual tolerance (default 1e-6)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--cpu", action="store_true", help="torch-CPU vs NumPy CG time per iteration (no GPU needed)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests first")
    parser.add_argument("--profile-cycle", action="store_true",
                        help="profile the torch V-cycle (kernel launches, costliest ops) at the first size and stop")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch CPU threads (torch.set_num_threads); on an oversubscribed CPU 1 is "
                             "much faster than the default")
    args = parser.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("bench gpu: PyTorch is not installed; nothing to run.")
        return 0
    if args.threads is not None:
        if args.threads < 1:
            print("bench gpu: --threads must be >= 1")
            return 2
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    log = print
    if args.cpu:
        import contextlib

        limit = contextlib.nullcontext()
        if args.threads is not None:
            try:  # the same thread count for NumPy's BLAS (dot, norm) as for torch
                from threadpoolctl import threadpool_limits

                limit = threadpool_limits(args.threads)
            except ImportError:  # pragma: no cover
                pass
        with limit:
            rows = _cpu_compare(args.sizes or [64], args, log)
        path = write_results("gpu_cpu_compare", {"rows": rows}, args)
        log(f"wrote {path}")
        return 0
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("bench gpu: CUDA is not available on this machine (torch "
              f"{torch.__version__}); nothing to benchmark. Run it on a CUDA machine, or use --quick to "
              "exercise the torch-CPU path, or --cpu to compare torch-CPU and NumPy CG.")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    sizes = args.sizes or ([16] if args.quick else [128, 256])
    data = {"device": str(device), "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "dtype": args.dtype, "rtol": args.rtol, "sizes": sizes,
            "check_every": __import__("linsolve.backends.torch_backend", fromlist=["x"]).CHECK_EVERY}
    if args.profile_cycle:
        profiled = profile_cycle(sizes[0], device, dtype, log)
        path = write_results("gpu_profile", {**data, "profile": profiled}, args)
        log(f"wrote {path}")
        return 0
    if cuda and not args.skip_tests:
        data["gpu_tests"] = _gpu_tests(log)
    rows = []
    summaries = {}
    for i, n in enumerate(sizes):
        if time.perf_counter() - started > TIME_BUDGET_S:
            log(f"{n}^3 skipped: time budget used")
            continue
        summaries[n] = _bench_size(n, device, dtype, args, rows, log, started, cpu_path=(i == 0))
    data["rows"] = rows
    first = sizes[0]
    acceptance = {}
    if first in summaries:
        s = summaries[first]
        mg = s["mg"]
        cpu_mg = s["cpu"].get("mg")
        if mg and cpu_mg:
            acceptance["learned_gpu_vs_cpu_speedup"] = cpu_mg["solve_ms"] / mg["solve_ms"]
            acceptance["at_least_10x_faster_than_cpu"] = bool(acceptance["learned_gpu_vs_cpu_speedup"] >= 10)
        baselines = [r for r in rows if r.get("size") == f"{first}^3" and r.get("solver") in
                     ("torch cg baseline (.item() per it)", "cupy cg") and "solve_ms" in r]
        if mg and baselines:
            best = min(baselines, key=lambda r: r["solve_ms"])
            acceptance["learned_vs_best_cg_baseline"] = best["solve_ms"] / mg["solve_ms"]
            acceptance["best_cg_baseline"] = best["solver"]
            acceptance["not_slower_than_cg_baseline"] = bool(acceptance["learned_vs_best_cg_baseline"] >= 1.0)
            acceptance["same_rtol_met"] = bool(mg["converged"] and best.get("converged", False))
        # every timed row, not only the two compared above (a DCDM row that stops at 1e-2 must show here)
        missed = [f"{r['size']} {r['solver']}" for r in rows if "solve_ms" in r and not r.get("converged", False)]
        acceptance["every_timed_row_converged"] = not missed
        acceptance["rows_not_converged"] = missed
        acceptance["mg_method"] = s["mg_name"]
        acceptance["size"] = f"{first}^3"
    data["acceptance"] = acceptance
    data["elapsed_s"] = time.perf_counter() - started
    print_table([r for r in rows if "solve_ms" in r],
                ["size", "solver", "device", "iterations", "solve_ms", "ms_per_iter", "setup_s", "rel_residual"],
                title=f"Poisson with obstacles, {args.dtype}, rtol {args.rtol:g}, device {data['device_name']}")
    for r in rows:
        if "skipped" in r:
            log(f"  {r['size']} {r['solver']}: skipped ({r['skipped']})")
    if acceptance:
        log("acceptance: " + json.dumps({k: (round(v, 2) if isinstance(v, float) else v)
                                         for k, v in acceptance.items()}))
    if not args.no_plots and rows:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            timed = [r for r in rows if "solve_ms" in r]
            fig, ax = plt.subplots(figsize=(8, 0.35 * len(timed) + 1))
            ax.barh([f"{r['size']} {r['solver']}" for r in timed], [r["solve_ms"] for r in timed])
            ax.set_xscale("log")
            ax.set_xlabel("ms per solve")
            from ._common import results_dir

            save_figure(fig, os.path.join(results_dir(args), "gpu.png"))
        except Exception as exc:  # pragma: no cover - plotting is optional
            log(f"plot skipped: {exc}")
    path = write_results("gpu", data, args)
    log(f"wrote {path} in {data['elapsed_s']:.0f} s")
    tests = data.get("gpu_tests")
    return 1 if tests and tests.get("ran") and tests.get("returncode") not in (0, 5) else 0
