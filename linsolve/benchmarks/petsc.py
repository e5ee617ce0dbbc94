"""PETSc benchmark: tuned SOR omega inside distributed PETSc CG (``mpiexec -n 2``).

On the heat-equation sequence (and a 3D smoke sequence) it compares, inside
PETSc KSP CG + PC SOR on ``--np`` ranks: fixed omega = 1, every fixed omega of
the tuner's arms (the best one in hindsight is "best fixed"), the online
tuned omega (:class:`linsolve.backends.petsc.PETScSequenceSolver`) and PETSc
GAMG as a reference. Iterations are exact and identical on every rank;
times are wall-clock of the whole solve (conversion included).

Correctness: at every ``--compare-every``-th step the PETSc solution of the
tuned run is compared with the single-process ``linsolve`` SSOR-CG solution of
the same system, same omega, same starting guess. Both satisfy
``||b - A x|| <= rtol ||b||``, so ``||x_petsc - x_ls|| / ||x_ls|| <= 2 rtol cond(A)``;
that bound (with ``cond(A)`` from ``eigsh``) is the tolerance checked.

Run ``linsolve bench petsc [--quick]``: without MPI it re-launches itself
under ``mpiexec -n NP python -m mpi4py`` (an exception on one rank then
aborts all ranks instead of hanging).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from ._common import benchmark_parser, print_table, results_dir, save_figure, write_results

__all__ = ["main", "run_sequence", "reference_check", "mpiexec_command", "mpi_environment"]

NAME = "petsc"


# --------------------------------------------------------------------------- launching


def mpiexec_command(nprocs: int, mpiexec: str | None = None) -> list:
    """``mpiexec -n NP`` plus the flags Open MPI needs as root and on few cores.

    Examples
    --------
    >>> from linsolve.benchmarks.petsc import mpiexec_command
    >>> mpiexec_command(2)[-2:]
    ['-n', '2']
    """
    exe = mpiexec or shutil.which("mpiexec") or "mpiexec"
    cmd = [exe]
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20).stdout
    except Exception:
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        cmd.append("--oversubscribe")
    return cmd + ["-n", str(int(nprocs))]


def mpi_environment(threads: int = 1) -> dict:
    """Environment for the ranks: one BLAS/numba/torch thread each (ranks share the cores).

    Also disables Open MPI's single-copy (CMA) shared-memory mechanism, which
    containers often forbid (``ptrace`` restrictions), and its busy-waiting
    bias on oversubscribed nodes.

    Examples
    --------
    >>> from linsolve.benchmarks.petsc import mpi_environment
    >>> mpi_environment()["OMP_NUM_THREADS"]
    '1'
    """
    env = dict(os.environ)
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[key] = str(threads)
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    return env


# --------------------------------------------------------------------------- one pass over a sequence


def run_sequence(instances, *, label: str, comm=None, keep_steps=(), use_x_prev: bool = True,
                 **solver_kwargs) -> dict:
    """Solve every instance with a fresh :class:`PETScSequenceSolver`. Collective.

    Parameters
    ----------
    instances : iterable of Instance (identical on every rank)
    label : str
    keep_steps : collection of int
        Steps whose gathered PETSc solution is returned (for comparisons).
    use_x_prev : bool
        Start from ``inst.x_prev`` (the exact previous state for the heat
        sequence), so every configuration starts every step from the same guess.
    **solver_kwargs
        Passed to :class:`~linsolve.backends.petsc.PETScSequenceSolver`.

    Returns
    -------
    dict
        ``label``, ``total_iterations``, ``iterations`` (per step), ``omegas``,
        ``time_s``, ``all_converged``, ``max_relative_residual``, ``reasons``
        (counts), ``kept`` ({step: x}).

    Examples
    --------
    >>> from linsolve.benchmarks.petsc import run_sequence
    >>> import linsolve
    >>> out = run_sequence(linsolve.problems.heat_sequence(16, 3), label="w=1", tuner=1.0)  # doctest: +SKIP
    >>> out["all_converged"]  # doctest: +SKIP
    True
    """
    from ..backends.petsc import PETScSequenceSolver

    solver = PETScSequenceSolver(comm=comm, warm_start=not use_x_prev, **solver_kwargs)
    iterations, omegas, kept, reasons = [], [], {}, {}
    max_rel, all_conv, skipped = 0.0, True, 0
    t0 = time.perf_counter()
    try:
        for step, inst in enumerate(instances):
            if inst.extras.get("nullspace") is not None:
                skipped += 1  # singular frames (closed regions) are not part of this comparison
                continue
            x0 = inst.x_prev if use_x_prev else None
            res = solver.solve(inst.A, inst.b, context=inst.context, x0=x0)
            iterations.append(res.iterations)
            omegas.append(res.extras.get("omega", float("nan")))
            reasons[res.extras["reason"]] = reasons.get(res.extras["reason"], 0) + 1
            all_conv &= bool(res.converged)
            max_rel = max(max_rel, float(res.relative_residual))
            if step in keep_steps:
                kept[step] = (res.x, res.extras.get("omega", float("nan")))
    finally:
        elapsed = time.perf_counter() - t0
        solver.close()
    return {"label": label, "total_iterations": int(sum(iterations)), "iterations": iterations,
            "omegas": omegas, "time_s": elapsed, "all_converged": bool(all_conv),
            "max_relative_residual": max_rel, "reasons": reasons, "skipped_singular": skipped, "kept": kept}


def _ssor_cg_reference(A, b, x0, omega, rtol):
    """Single-process linsolve SSOR-CG (``solve(method="ssor-cg")``; linsolve CG + SSOR operator otherwise)."""
    import linsolve

    try:
        res = linsolve.solve(A, b, method="ssor-cg", omega=omega, x0=x0, rtol=rtol)
        return res.x, res.iterations, res.converged
    except ValueError as exc:
        if "not available" not in str(exc) and "unknown method" not in str(exc):
            raise
    try:
        from ..precond import ssor

        M = ssor(A, omega=omega)
    except ImportError:
        from ..backends.petsc import _ssor_operator

        M = _ssor_operator(A.tocsr(), omega)
    from ..krylov.cg import cg_result

    res = cg_result(A, b, x0, rtol=rtol, M=M)
    return res.x, res.iterations, res.converged


def _condition_number(A) -> float:
    """cond_2(A) of an SPD matrix: largest eigenvalue by Lanczos, smallest by shift-invert."""
    from scipy.sparse.linalg import eigsh

    lmax = float(eigsh(A, k=1, which="LA", return_eigenvectors=False, tol=1e-3)[0])
    lmin = float(eigsh(A.tocsc(), k=1, sigma=0.0, which="LM", return_eigenvectors=False, tol=1e-3)[0])
    return lmax / lmin


def reference_check(make_instances, kept: dict, *, rtol: float, comm=None) -> list:
    """Compare kept PETSc solutions with single-process linsolve SSOR-CG. Collective, work split over ranks.

    Returns, on every rank, one row per kept step: ``step``, ``omega``,
    ``rel_diff`` (``||x_petsc - x_ls|| / ||x_ls||``), ``cond``, ``tolerance``
    (``2 rtol cond``), ``ok``, ``ref_iterations``, and when the instance
    carries an exact solution ``rel_err_exact`` (``||x_petsc - x*|| / ||x*||``).

    Examples
    --------
    >>> from linsolve.benchmarks.petsc import reference_check
    >>> reference_check(lambda: [], {}, rtol=1e-8)  # doctest: +SKIP
    []
    """
    from ..backends.petsc import get_comm

    comm = get_comm(comm)
    rank, size = comm.getRank(), comm.getSize()
    mine = sorted(kept)[rank::size]
    rows = []
    if mine:
        for step, inst in enumerate(make_instances()):
            if step > mine[-1]:
                break
            if step not in mine:
                continue
            x_p, omega = kept[step]
            x_ls, its, conv = _ssor_cg_reference(inst.A, inst.b, inst.x_prev, omega, rtol)
            cond = _condition_number(inst.A)
            rel = float(np.linalg.norm(x_p - x_ls) / np.linalg.norm(x_ls))
            row = {"step": step, "omega": float(omega), "rel_diff": rel, "cond": cond,
                   "tolerance": 2.0 * rtol * cond, "ok": bool(conv and rel <= 2.0 * rtol * cond),
                   "ref_iterations": int(its),
                   "petsc_relative_residual": float(np.linalg.norm(inst.b - inst.A @ x_p) / np.linalg.norm(inst.b))}
            x_ref = inst.extras.get("x_ref")
            if x_ref is not None:
                row["rel_err_exact"] = float(np.linalg.norm(x_p - x_ref) / np.linalg.norm(x_ref))
            rows.append(row)
    gathered = comm.tompi4py().allgather(rows)
    return sorted((r for part in gathered for r in part), key=lambda r: r["step"])


# --------------------------------------------------------------------------- the benchmark


def _strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "kept"}


def _heat(args, comm, arms):
    import linsolve

    rank = comm.getRank()
    make = lambda: linsolve.problems.heat_sequence(args.nx, args.T, dt=args.dt)  # noqa: E731
    context_range = make().context_range
    compare_steps = set(range(0, args.T, max(1, args.compare_every))) | {args.T - 1}
    runs = []
    for omega in arms:
        runs.append(run_sequence(make(), label=f"fixed {omega:.3f}", comm=comm, tuner=float(omega), rtol=args.rtol))
        if rank == 0:
            print(f"  heat fixed omega {omega:.3f}: {runs[-1]['total_iterations']} iterations, "
                  f"{runs[-1]['time_s']:.1f} s", flush=True)
    tuned = run_sequence(make(), label=f"tuned ({args.tuner})", comm=comm, tuner=args.tuner, arms=list(arms),
                         context_range=context_range, seed=args.seed, rtol=args.rtol, keep_steps=compare_steps)
    gamg = run_sequence(make(), label="gamg", comm=comm, tuner=None, pc="gamg", rtol=args.rtol)
    checks = reference_check(make, tuned["kept"], rtol=args.rtol, comm=comm)
    return runs, tuned, gamg, checks


def _fluid(args, comm, arms):
    import linsolve

    shape = tuple(int(s) for s in args.fluid_shape.split(","))
    # Generate the frames once on rank 0 (the simulation runs its own solves) and share them.
    frames = None
    if comm.getRank() == 0:
        frames = list(linsolve.problems.fluid_sequence(shape, args.fluid_frames, scene=args.fluid_scene,
                                                        seed=args.seed))
        for inst in frames:  # keep only what the solves need
            inst.extras = {k: inst.extras.get(k) for k in ("nullspace",)}
    frames = comm.tompi4py().bcast(frames, root=0)
    runs = [run_sequence(frames, label=f"fixed {w:.3f}", comm=comm, tuner=float(w), rtol=args.fluid_rtol)
            for w in arms]
    tuned = run_sequence(frames, label=f"tuned ({args.tuner})", comm=comm, tuner=args.tuner, arms=list(arms),
                         context_range=(0.0, 1.0), seed=args.seed, rtol=args.fluid_rtol)
    gamg = run_sequence(frames, label="gamg", comm=comm, tuner=None, pc="gamg", rtol=args.fluid_rtol)
    return runs, tuned, gamg


def _summary(runs, tuned, gamg):
    base = next(r for r in runs if abs(float(r["label"].split()[1]) - 1.0) < 1e-12)
    best = min(runs, key=lambda r: r["total_iterations"])
    rows = [
        {"config": "omega = 1", "total_iterations": base["total_iterations"], "time_s": base["time_s"],
         "converged": base["all_converged"]},
        {"config": f"best fixed ({best['label'].split()[1]})", "total_iterations": best["total_iterations"],
         "time_s": best["time_s"], "converged": best["all_converged"]},
        {"config": tuned["label"], "total_iterations": tuned["total_iterations"], "time_s": tuned["time_s"],
         "converged": tuned["all_converged"]},
        {"config": "PETSc GAMG", "total_iterations": gamg["total_iterations"], "time_s": gamg["time_s"],
         "converged": gamg["all_converged"]},
    ]
    verdict = {
        "omega1_total": base["total_iterations"],
        "best_fixed_omega": float(best["label"].split()[1]),
        "best_fixed_total": best["total_iterations"],
        "tuned_total": tuned["total_iterations"],
        "tuned_over_best": tuned["total_iterations"] / max(1, best["total_iterations"]),
        "tuned_beats_omega1": tuned["total_iterations"] < base["total_iterations"],
        "tuned_within_1.15_of_best": tuned["total_iterations"] <= 1.15 * best["total_iterations"],
    }
    return rows, verdict


def _worker(args) -> int:
    from ..backends.petsc import abort_on_error, get_comm, require_petsc

    require_petsc()
    comm = get_comm()
    rank = comm.getRank()
    with abort_on_error(comm):
        from ..tuning import default_omega_arms

        arms = np.asarray(default_omega_arms() if args.arms is None else np.linspace(1.0, 1.95, args.arms))
        out = {"ranks": comm.getSize(), "rtol": args.rtol}
        if not args.no_heat:
            _heat_part(args, comm, arms, out)
        if args.fluid_frames > 0:
            _fluid_part(args, comm, arms, out)
        if rank == 0:
            path = write_results(NAME if not args.no_heat else f"{NAME}-fluid", out, args)
            print(f"results: {path}")
            if not args.no_plots and not args.no_heat:
                _plot(out, args)
    return 0


def _heat_part(args, comm, arms, out):
    rank = comm.getRank()
    if rank == 0:
        print(f"heat sequence nx={args.nx}, T={args.T}, dt={args.dt:g}: {len(arms)} fixed omegas + tuned + GAMG "
              f"on {comm.getSize()} ranks", flush=True)
    runs, tuned, gamg, checks = _heat(args, comm, arms)
    rows, verdict = _summary(runs, tuned, gamg)
    verdict["solutions_match"] = bool(checks) and all(c["ok"] for c in checks)
    out["heat"] = {"nx": args.nx, "T": args.T, "dt": args.dt, "table": rows, "verdict": verdict,
                   "reference_checks": checks, "fixed": [_strip(r) for r in runs], "tuned": _strip(tuned),
                   "gamg": _strip(gamg)}
    if rank == 0:
        print_table(rows, ["config", "total_iterations", "time_s", "converged"],
                    title=f"heat nx={args.nx} T={args.T} dt={args.dt:g} on {comm.getSize()} ranks (PETSc CG + SOR)")
        worst = max((c["rel_diff"] / c["tolerance"] for c in checks), default=float("nan"))
        print(f"tuned/best = {verdict['tuned_over_best']:.3f}; solutions vs single-process linsolve: "
              f"{len(checks)} steps, max rel diff / tolerance = {worst:.3g}, all ok = {verdict['solutions_match']}",
              flush=True)


def _fluid_part(args, comm, arms, out):
    fluid_arms = arms[::max(1, len(arms) // args.fluid_arms)]
    if not np.any(np.isclose(fluid_arms, 1.0)):
        fluid_arms = np.concatenate([[1.0], fluid_arms])
    runs, tuned, gamg = _fluid(args, comm, fluid_arms)
    rows, verdict = _summary(runs, tuned, gamg)
    out["fluid"] = {"shape": args.fluid_shape, "frames": args.fluid_frames, "scene": args.fluid_scene,
                    "rtol": args.fluid_rtol, "table": rows, "verdict": verdict, "fixed": [_strip(r) for r in runs],
                    "tuned": _strip(tuned), "gamg": _strip(gamg)}
    if comm.getRank() == 0:
        print_table(rows, ["config", "total_iterations", "time_s", "converged"],
                    title=f"fluid {args.fluid_scene} {args.fluid_shape} x {args.fluid_frames} frames, "
                          f"rtol {args.fluid_rtol:g}")


def _plot(out, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heat = out["heat"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    omegas = [float(r["label"].split()[1]) for r in heat["fixed"]]
    ax1.plot(omegas, [r["total_iterations"] for r in heat["fixed"]], "o-", label="fixed omega")
    ax1.axhline(heat["tuned"]["total_iterations"], color="C1", label=heat["tuned"]["label"])
    ax1.axhline(heat["gamg"]["total_iterations"], color="C2", ls="--", label="PETSc GAMG")
    ax1.set_xlabel("omega")
    ax1.set_ylabel("total CG iterations")
    ax1.set_title(f"heat nx={heat['nx']} T={heat['T']}, {out['ranks']} ranks")
    ax1.legend()
    ax2.plot(heat["tuned"]["omegas"], ".", ms=3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("omega chosen by the tuner")
    save_figure(fig, os.path.join(results_dir(args), f"{NAME}.png"))


def main(argv=None) -> int:
    """``linsolve bench petsc``: see the module docstring.

    Examples
    --------
    >>> from linsolve.benchmarks.petsc import main
    >>> main(["--quick", "--np", "2"])  # doctest: +SKIP
    0
    """
    parser = benchmark_parser(NAME, "Tuned SOR omega inside distributed PETSc CG (mpiexec), vs fixed omega "
                                    "and PETSc GAMG, on the heat and smoke sequences")
    parser.add_argument("--np", type=int, default=2, help="MPI ranks (default 2)")
    parser.add_argument("--nx", type=int, default=None, help="heat grid intervals (default 200; quick 40)")
    parser.add_argument("--T", type=int, default=None, help="heat time steps (default 500; quick 60)")
    parser.add_argument("--dt", type=float, default=1e-3, help="heat time step (default 1e-3)")
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--tuner", default="chebcb", help="linsolve.tuning name (default chebcb)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", type=int, default=None,
                        help="number of omega arms in [1, 1.95] (default: linsolve.tuning.default_omega_arms)")
    parser.add_argument("--compare-every", type=int, default=None,
                        help="compare with single-process linsolve every k steps (default T/10)")
    parser.add_argument("--fluid-shape", default=None, help="3D smoke grid (default 32,32,32; quick 16,16,16)")
    parser.add_argument("--fluid-frames", type=int, default=None, help="smoke frames (default 20; quick 4; 0 skips)")
    parser.add_argument("--fluid-scene", default="moving_sphere")
    parser.add_argument("--no-heat", action="store_true", help="only the smoke sequence (results petsc-fluid.json)")
    parser.add_argument("--fluid-arms", type=int, default=7, help="fixed omegas tried on the smoke sequence")
    parser.add_argument("--fluid-rtol", type=float, default=1e-6)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the mpiexec run is killed")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.nx is None:
        args.nx = 40 if args.quick else 200
    if args.T is None:
        args.T = 60 if args.quick else 500
    if args.compare_every is None:
        args.compare_every = max(1, args.T // 10)
    if args.fluid_shape is None:
        args.fluid_shape = "16,16,16" if args.quick else "32,32,32"
    if args.fluid_frames is None:
        args.fluid_frames = 4 if args.quick else 20
    if args.quick and args.arms is None:
        args.arms = 8
    if args.np < 1:
        parser.error("--np must be >= 1")
    if args.worker:
        return _worker(args)
    from ..backends.petsc import INSTALL_HINT, available

    if not available():
        print(f"linsolve bench petsc: petsc4py/mpi4py not installed; {INSTALL_HINT}", file=sys.stderr)
        return 2
    if shutil.which("mpiexec") is None:
        print("linsolve bench petsc: mpiexec not found (apt-get install openmpi-bin)", file=sys.stderr)
        return 2
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.quick and "--quick" not in argv:
        argv.append("--quick")
    cmd = mpiexec_command(args.np) + [sys.executable, "-m", "mpi4py", "-m", "linsolve.benchmarks.petsc",
                                      *argv, "--worker"]
    try:
        proc = subprocess.run(cmd, env=mpi_environment(), timeout=args.timeout)
    except subprocess.TimeoutExpired:
        print(f"linsolve bench petsc: mpiexec did not finish within {args.timeout:g} s", file=sys.stderr)
        return 3
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())
