"""PETSc benchmarks (``linsolve bench petsc``), launched under ``mpiexec`` by this module itself.

``--part mg`` (default; issue "distributed pressure solves"): a 64^3
``smoke_sphere`` frame and a 64^3 rising-bubble frame (density ratio 1000) are
solved at 1, 2 and 4 ranks (more ranks than cores is fine for counting
iterations) with :class:`linsolve.backends.petsc.DMDAPressureSolver`:

* ``learned-mg``: KSP CG + PCMG on cell-centred DMDA levels, Galerkin coarse
  operators, per-level SOR omega and coarse-correction scale from the learned
  multigrid model; ``gmg``: its classical twin;
* ``bjacobi-learned``: the learned V-cycle on each rank's box (block Jacobi,
  no coupling between ranks): its iterations grow with the ranks;
* ``gamg`` (set-up + solve), and ``hypre`` (BoomerAMG) when PETSc has it.

Then, on ``--scaling-ranks`` (2) ranks: iterations at 128^3 against 64^3, and
a changing-A rising-bubble sequence (set-up every frame, warm start) timed
against GAMG. Every PCMG solution is compared with the single-process
linsolve ``learned-pcg`` solution: both meet ``||b - A x|| <= rtol ||b||``, so
``||x_p - x_ls|| <= (||r_p|| + ||r_ls||) / lambda_min(A)`` (``lambda_min`` by
LOBPCG), the tolerance checked. Iterations are exact and identical on every
rank; times are wall-clock (noisy on a shared machine; ratios are measured in
one run). Results: ``bench/results/petsc-mg.json`` and ``petsc-mg.png``.

``--part heat`` (issue "tuned SOR in PETSc"): on the heat-equation sequence
(and a 3D smoke sequence) it compares, inside PETSc KSP CG + PC SOR on
``--np`` ranks: fixed omega = 1, every fixed omega of the tuner's arms (the
best one in hindsight is "best fixed"), the online tuned omega
(:class:`linsolve.backends.petsc.PETScSequenceSolver`) and PETSc GAMG as a
reference. At every ``--compare-every``-th step the PETSc solution of the
tuned run is compared with the single-process ``linsolve`` SSOR-CG solution of
the same system, same omega, same starting guess, within ``2 rtol cond(A)``.
Results: ``petsc.json`` / ``petsc.png``.

Without MPI the command re-launches itself under ``mpiexec -n NP python -m
mpi4py`` (an exception on one rank then aborts all ranks instead of hanging).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from .._argtypes import non_negative_int, positive_int
from ._common import benchmark_parser, print_table, results_dir, save_figure, write_results

__all__ = ["main", "run_sequence", "reference_check", "mpiexec_command", "mpi_environment", "scene_frames",
           "MG_METHODS"]

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



# --------------------------------------------------------------------------- PCMG on a DMDA (--part mg)

#: Methods of the PCMG benchmark (``hypre`` runs only when PETSc was built with it).
MG_METHODS = ("learned-mg", "gmg", "bjacobi-learned", "gamg", "hypre")


def scene_frames(scene: str, shape, frames: int, *, seed: int = 0):
    """``frames`` frames of ``fluid_sequence(shape, scene=scene)`` as ``(cell_types, matrix_options, b)``.

    ``matrix_options`` rebuilds the frame's matrix:
    ``pressure_matrix(cell_types, **matrix_options)`` (density for
    ``rising_bubble``, ``phi`` and face fractions for ``dam_break``, graded ``h``...),
    and is what :meth:`DMDAPressureSolver.solve` takes besides the cells.

    Examples
    --------
    >>> from linsolve.benchmarks.petsc import scene_frames
    >>> (cells, options, b), = scene_frames("rising_bubble", (12, 12, 12), 1)
    >>> sorted(options), cells.shape, b.shape
    (['density', 'h'], (12, 12, 12), (1728,))
    """
    import linsolve

    out = []
    for inst in linsolve.problems.fluid_sequence(shape, frames, scene=scene, seed=seed, solver="gmg-pcg"):
        options = dict(inst.extras.get("matrix_options", {}))
        out.append((np.asarray(inst.cell_types, dtype=np.int8), options, np.asarray(inst.b, dtype=np.float64)))
    return out


def _save_problem(path, cells, options, b):
    """One frame in an ``.npz`` (matrix options by key; face fractions and graded widths per axis)."""
    import io

    from .._io import atomic_write_bytes

    arrays = {"cells": cells, "b": b}
    for key, value in options.items():
        if key in ("face_fractions", "h") and np.ndim(value) != 0:
            for axis, item in enumerate(value):
                arrays[f"opt_{key}_{axis}"] = np.asarray(item)
        else:
            arrays[f"opt_{key}"] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def _load_problem(path):
    with np.load(path) as data:
        options, per_axis = {}, {}
        for key in data.files:
            if not key.startswith("opt_"):
                continue
            name = key[4:]
            head, _, tail = name.rpartition("_")
            if head in ("face_fractions", "h") and tail.isdigit():
                per_axis.setdefault(head, {})[int(tail)] = data[key]
            else:
                value = data[key]
                options[name] = value.item() if value.ndim == 0 else value
        for name, items in per_axis.items():
            options[name] = [v.item() if v.ndim == 0 else v for _, v in sorted(items.items())]
        return data["cells"], options, data["b"]


def _mg_solve_twice(shape, method, fields, args, comm):
    """Solve one frame twice with a fresh solver; the second solve (set-up again, same A) is the timed one."""
    from ..backends.petsc import DMDAPressureSolver

    cells, options, b = fields
    solver = DMDAPressureSolver(shape, method=method, rtol=args.rtol, warm_start=False, comm=comm,
                                timeout_s=args.solve_timeout)
    try:
        first = solver.solve(cells, b, **options)
        res = solver.solve(cells, b, **options)
        st = res.extras["sequence"]
        row = {"method": method, "iterations": res.iterations, "converged": res.converged,
               "relative_residual": st["relative_residual"], "reason": res.extras["reason"],
               "first_call_s": first.time_s, "setup_s": st["setup_seconds"],
               "assembly_s": st["assembly_seconds"], "hierarchy_s": st["hierarchy_seconds"],
               "pc_setup_s": st["pc_setup_seconds"], "solve_s": st["solve_seconds"], "total_s": res.time_s,
               "levels": [list(s) for s in solver.levels], "parameters": solver.parameters}
        return row, res.x
    finally:
        solver.close()


def _mg_worker(args) -> int:
    import json

    from ..backends.petsc import DMDAPressureSolver, abort_on_error, get_comm, require_petsc

    PETSc = require_petsc()
    comm = get_comm()
    rank, size = comm.getRank(), comm.getSize()
    with abort_on_error(comm):
        with open(os.path.join(args.work, "problems.json")) as handle:
            problems = json.load(handle)
        methods = [m for m in args.methods.split(",") if m != "hypre" or PETSc.Sys.hasExternalPackage("hypre")]
        out = {"ranks": size, "hypre": bool(PETSc.Sys.hasExternalPackage("hypre")), "single": [],
               "scaling": [], "sequence": {}}
        for prob in problems:
            if prob["role"] == "large" and size != args.scaling_ranks:
                continue
            fields = _load_problem(prob["file"])
            shape = tuple(prob["shape"])
            for method in (methods if prob["role"] == "base" else [m for m in methods if m != "bjacobi-learned"]):
                if rank == 0:
                    print(f"  [{size} ranks] {prob['name']} {shape} {method}", flush=True)
                row, x = _mg_solve_twice(shape, method, fields, args, comm)
                row.update(problem=prob["name"], shape=list(shape), ranks=size)
                out["single" if prob["role"] == "base" else "scaling"].append(row)
                if rank == 0 and prob["role"] == "base" and method in ("learned-mg", "gmg"):
                    np.save(os.path.join(args.work, f"x-{prob['name']}-{method}-np{size}.npy"), x)
        if size == args.scaling_ranks and args.frames > 0:
            shape = (args.size,) * 3
            sequence = [_load_problem(os.path.join(args.work, f"sequence-{f}.npz")) for f in range(args.frames)]
            for method in [m for m in methods if m != "bjacobi-learned"]:
                solver = DMDAPressureSolver(shape, method=method, rtol=args.rtol, warm_start=True, comm=comm,
                                            timeout_s=args.solve_timeout)
                frames = []
                try:
                    for f, (cells, options, b) in enumerate(sequence):
                        res = solver.solve(cells, b, **options)
                        st = res.extras["sequence"]
                        frames.append({"frame": f, "iterations": res.iterations, "converged": res.converged,
                                       "relative_residual": st["relative_residual"], "seconds": res.time_s,
                                       "setup_s": st["setup_seconds"], "solve_s": st["solve_seconds"],
                                       "warm_start": st["warm_start"]})
                finally:
                    solver.close()
                out["sequence"][method] = {"frames": frames,
                                           "total_s": float(sum(fr["seconds"] for fr in frames)),
                                           "total_iterations": int(sum(fr["iterations"] for fr in frames)),
                                           "all_converged": all(fr["converged"] for fr in frames)}
                if rank == 0:
                    print(f"  [{size} ranks] rising bubble sequence {args.frames} frames {method}: "
                          f"{out['sequence'][method]['total_s']:.2f} s, "
                          f"{out['sequence'][method]['total_iterations']} iterations", flush=True)
        if rank == 0:
            from .._io import atomic_write_json
            from ._common import _jsonable

            atomic_write_json(os.path.join(args.work, f"np{size}.json"), _jsonable(out))
    return 0


def _lambda_min(A, cells) -> float:
    """Smallest eigenvalue of an SPD grid matrix: LOBPCG preconditioned by linsolve's geometric multigrid."""
    from scipy.sparse.linalg import lobpcg

    from ..precond.multigrid import geometric_mg

    M = geometric_mg(A, cells)
    X = np.random.default_rng(0).standard_normal((A.shape[0], 1))
    vals = lobpcg(A, X, M=M, largest=False, tol=1e-8, maxiter=200)[0]
    return float(vals[0])


def _reference_checks(problems, work, rtol, ranks) -> list:
    """Single-process linsolve solve of every base problem vs the PETSc solutions of every rank count.

    Both solutions satisfy their residual bound, so ``A (x_p - x_ls) = r_ls - r_p`` gives
    ``||x_p - x_ls|| <= (||r_p|| + ||r_ls||) / lambda_min(A)``: that bound is the stated tolerance.
    """
    import linsolve

    rows = []
    for prob in problems:
        if prob["role"] != "base":
            continue
        cells, options, b = _load_problem(prob["file"])
        A = linsolve.problems.pressure_matrix(cells, **options)
        ref = linsolve.solve(A, b, method="learned-pcg", rtol=rtol, cell_types=cells)
        r_ls = float(np.linalg.norm(b - A @ ref.x))
        lmin = _lambda_min(A, cells)
        for method in ("learned-mg", "gmg"):
            for np_ in ranks:
                path = os.path.join(work, f"x-{prob['name']}-{method}-np{np_}.npy")
                if not os.path.exists(path):
                    continue
                x = np.load(path)
                r_p = float(np.linalg.norm(b - A @ x))
                diff = float(np.linalg.norm(x - ref.x))
                bound = (r_p + r_ls) / lmin
                rows.append({"problem": prob["name"], "method": method, "ranks": np_,
                             "rel_diff": diff / float(np.linalg.norm(ref.x)),
                             "rel_bound": bound / float(np.linalg.norm(ref.x)),
                             "petsc_relative_residual": r_p / float(np.linalg.norm(b)),
                             "linsolve_iterations": ref.iterations, "linsolve_method": ref.method,
                             "lambda_min": lmin, "ok": bool(diff <= bound and r_p <= rtol * np.linalg.norm(b))})
    return rows


def _mg_summary(parts, args) -> dict:
    single = [row for part in parts for row in part["single"]]
    scaling = [row for part in parts for row in part["scaling"]]
    ranks = sorted(part["ranks"] for part in parts)
    table = []
    for prob in dict.fromkeys(r["problem"] for r in single):
        for method in dict.fromkeys(r["method"] for r in single):
            its = {r["ranks"]: r for r in single if r["problem"] == prob and r["method"] == method}
            if not its:
                continue
            row = {"problem": prob, "method": method}
            for np_ in ranks:
                if np_ in its:
                    row[f"its_{np_}"] = its[np_]["iterations"]
                    row[f"setup_s_{np_}"] = its[np_]["setup_s"]
                    row[f"solve_s_{np_}"] = its[np_]["solve_s"]
            row["all_converged"] = all(r["converged"] for r in its.values())
            table.append(row)
    verdict = {}
    base = ranks[0]
    for row in table:
        if row["method"] in ("learned-mg", "gmg"):
            spread = max(abs(row[f"its_{np_}"] - row[f"its_{base}"]) for np_ in ranks if f"its_{np_}" in row)
            verdict[f"{row['problem']}/{row['method']}: max |its(p) - its({base})|"] = spread
    verdict["pcmg_within_1_across_ranks"] = all(v <= 1 for k, v in verdict.items() if k.endswith(f"its({base})|"))
    growth = {}
    for prob in dict.fromkeys(r["problem"] for r in scaling):
        for method in dict.fromkeys(r["method"] for r in scaling):
            big = [r for r in scaling if r["problem"] == prob and r["method"] == method]
            small = [r for r in single if r["problem"] == prob and r["method"] == method
                     and r["ranks"] == args.scaling_ranks]
            if big and small:
                growth[f"{prob}/{method}"] = {"its_small": small[0]["iterations"], "its_large": big[0]["iterations"],
                                              "growth": big[0]["iterations"] / max(1, small[0]["iterations"]),
                                              "setup_s_large": big[0]["setup_s"], "solve_s_large": big[0]["solve_s"]}
    verdict["growth_within_1.2"] = {k: v["growth"] <= 1.2 for k, v in growth.items()
                                    if k.split("/")[1] in ("learned-mg", "gmg")}
    seq = next((part["sequence"] for part in parts if part["sequence"]), {})
    if "gamg" in seq:
        for method in ("learned-mg", "gmg"):
            if method in seq:
                verdict[f"sequence_time_ratio_{method}_over_gamg"] = seq[method]["total_s"] / seq["gamg"]["total_s"]
    return {"ranks": ranks, "table": table, "growth": growth, "sequence": seq, "verdict": verdict,
            "single": single, "scaling": scaling, "hypre_available": any(part["hypre"] for part in parts)}


def _mg_plot(summary, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ranks = summary["ranks"]
    styles = {"smoke_sphere": "-", "rising_bubble": "--"}
    for row in summary["table"]:
        its = [row.get(f"its_{p}") for p in ranks]
        color = f"C{list(MG_METHODS).index(row['method'])}"
        ax1.plot(ranks, its, styles.get(row["problem"], ":"), marker="o", color=color,
                 label=f"{row['method']} ({row['problem']})")
    ax1.set_xlabel("MPI ranks")
    ax1.set_ylabel("CG iterations to rtol %g" % args.rtol)
    ax1.set_xticks(ranks)
    ax1.set_title(f"{args.size}^3 frames: iterations vs ranks")
    ax1.legend(fontsize=7)
    for method, seq in summary["sequence"].items():
        t = np.cumsum([fr["seconds"] for fr in seq["frames"]])
        ax2.plot(np.arange(1, len(t) + 1), t, marker=".", color=f"C{list(MG_METHODS).index(method)}", label=method)
    ax2.set_xlabel("frame")
    ax2.set_ylabel("cumulative seconds (setup + solve)")
    ax2.set_title(f"rising bubble {args.size}^3, A changes every frame, {args.scaling_ranks} ranks")
    ax2.legend(fontsize=8)
    save_figure(fig, os.path.join(results_dir(args), "petsc-mg.png"))


def _mg_main(args) -> int:
    """Parent process of the PCMG benchmark: problems, one mpiexec per rank count, reference checks, results."""
    import json
    import tempfile

    base, large = (args.size,) * 3, (args.large,) * 3
    ranks = [int(r) for r in args.ranks.split(",")]
    with tempfile.TemporaryDirectory(prefix="linsolve-petsc-mg-") as work:
        problems = []
        print(f"PCMG benchmark: problems {base} (ranks {ranks}) and {large} ({args.scaling_ranks} ranks)", flush=True)
        for role, shape in (("base", base), ("large", large)):
            if role == "large" and args.large <= 0:
                continue
            for name in ("smoke_sphere", "rising_bubble"):
                t0 = time.perf_counter()
                count = args.frame + 1
                if role == "base" and name == "rising_bubble":
                    count = max(count, args.frames)  # the changing-A sequence uses the same frames
                frames = scene_frames(name, shape, count, seed=args.seed)
                path = os.path.join(work, f"{name}-{shape[0]}.npz")
                _save_problem(path, *frames[args.frame])
                if role == "base" and name == "rising_bubble":
                    for f in range(args.frames):
                        _save_problem(os.path.join(work, f"sequence-{f}.npz"), *frames[f])
                problems.append({"name": name, "shape": list(shape), "role": role, "file": path})
                print(f"  {name} {shape}: {count} frames, {time.perf_counter() - t0:.1f} s to simulate", flush=True)
        with open(os.path.join(work, "problems.json"), "w") as handle:
            json.dump(problems, handle)
        parts = []
        for np_ in ranks:
            argv = ["--part", "mg", "--worker", "--work", work, "--rtol", repr(args.rtol), "--size", str(args.size),
                    "--frames", str(args.frames), "--scaling-ranks", str(args.scaling_ranks), "--methods",
                    args.methods, "--seed", str(args.seed), "--solve-timeout", repr(args.solve_timeout)]
            cmd = mpiexec_command(np_) + [sys.executable, "-m", "mpi4py", "-m", "linsolve.benchmarks.petsc", *argv]
            print(f"running {' '.join(cmd[:4])} ... on {np_} ranks", flush=True)
            try:
                proc = subprocess.run(cmd, env=mpi_environment(), timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"linsolve bench petsc: mpiexec -n {np_} did not finish within {args.timeout:g} s",
                      file=sys.stderr)
                return 3
            if proc.returncode != 0:
                return proc.returncode
            with open(os.path.join(work, f"np{np_}.json")) as handle:
                parts.append(json.load(handle))
        summary = _mg_summary(parts, args)
        print("single-process linsolve reference solves ...", flush=True)
        checks = _reference_checks(problems, work, args.rtol, ranks)
    summary["reference_checks"] = checks
    summary["verdict"]["solutions_match"] = bool(checks) and all(c["ok"] for c in checks)
    cols = ["problem", "method"] + [f"its_{p}" for p in ranks] + [f"setup_s_{p}" for p in ranks] + \
        [f"solve_s_{p}" for p in ranks] + ["all_converged"]
    print_table(summary["table"], cols, title=f"{args.size}^3 frames, rtol {args.rtol:g} (true residual)")
    if summary["growth"]:
        print_table([{"case": k, **v} for k, v in summary["growth"].items()],
                    ["case", "its_small", "its_large", "growth", "setup_s_large", "solve_s_large"],
                    title=f"iterations {args.size}^3 -> {args.large}^3 on {args.scaling_ranks} ranks")
    if summary["sequence"]:
        print_table([{"method": m, "total_s": v["total_s"], "total_iterations": v["total_iterations"],
                      "all_converged": v["all_converged"]} for m, v in summary["sequence"].items()],
                    ["method", "total_s", "total_iterations", "all_converged"],
                    title=f"rising bubble, {args.frames} frames (A changes every frame), {args.scaling_ranks} ranks")
    print_table(checks, ["problem", "method", "ranks", "rel_diff", "rel_bound", "petsc_relative_residual", "ok"],
                title="PETSc vs single-process linsolve (bound: (||r_p|| + ||r_ls||) / lambda_min / ||x_ls||)")
    for key, value in summary["verdict"].items():
        print(f"  {key}: {value}")
    path = write_results(f"{NAME}-mg", summary, args)
    print(f"results: {path}")
    if not args.no_plots:
        _mg_plot(summary, args)
    return 0


def main(argv=None) -> int:
    """``linsolve bench petsc``: see the module docstring.

    ``--part mg`` (default): PCMG on a DMDA (learned and classical), block
    Jacobi, GAMG (and BoomerAMG when built) at 1, 2, 4 ranks, 64^3 -> 128^3,
    and a changing-A sequence; results ``petsc-mg.json`` / ``petsc-mg.png``.
    ``--part heat``: the tuned-omega SOR benchmark (``petsc.json``).

    Examples
    --------
    >>> from linsolve.benchmarks.petsc import main
    >>> main(["--quick"])  # doctest: +SKIP
    0
    """
    parser = benchmark_parser(NAME, "Distributed PETSc solves (mpiexec): PCMG with learned per-level smoothers on a "
                                    "DMDA vs block Jacobi, GAMG (and hypre); or tuned SOR omega inside PETSc CG")
    parser.add_argument("--part", choices=("mg", "heat"), default="mg",
                        help="mg: PCMG on DMDA pressure systems (default); heat: tuned SOR omega")
    parser.add_argument("--np", type=positive_int, default=2, help="MPI ranks of the heat part (default 2)")
    mg = parser.add_argument_group("--part mg")
    mg.add_argument("--size", type=positive_int, default=None,
                    help="cells per axis of the frames (default 64; quick 24)")
    mg.add_argument("--large", type=non_negative_int, default=None,
                    help="cells per axis of the growth check (default 128; quick 48; 0 skips)")
    mg.add_argument("--ranks", default=None, help="rank counts, comma-separated (default 1,2,4; quick 1,2)")
    mg.add_argument("--scaling-ranks", type=positive_int, default=2,
                    help="ranks of the growth and sequence runs (default 2)")
    mg.add_argument("--frames", type=positive_int, default=None, help="frames of the changing-A rising-bubble sequence "
                                                             "(default 10; quick 3; 0 skips)")
    mg.add_argument("--frame", type=positive_int, default=5, help="which simulation frame the single-frame runs use")
    mg.add_argument("--methods", default=",".join(MG_METHODS), help="comma-separated DMDAPressureSolver methods")
    mg.add_argument("--solve-timeout", type=float, default=600.0, help="per-solve watchdog on every rank (s)")
    mg.add_argument("--work", default=None, help=argparse.SUPPRESS)
    heat = parser.add_argument_group("--part heat")
    heat.add_argument("--nx", type=positive_int, default=None, help="heat grid intervals (default 200; quick 40)")
    heat.add_argument("--T", type=positive_int, default=None, help="heat time steps (default 500; quick 60)")
    heat.add_argument("--dt", type=float, default=1e-3, help="heat time step (default 1e-3)")
    parser.add_argument("--rtol", type=float, default=None, help="relative tolerance (default: mg 1e-6, heat 1e-8)")
    heat.add_argument("--tuner", default="chebcb", help="linsolve.tuning name (default chebcb)")
    parser.add_argument("--seed", type=int, default=0)
    heat.add_argument("--arms", type=positive_int, default=None,
                      help="number of omega arms in [1, 1.95] (default: linsolve.tuning.default_omega_arms)")
    heat.add_argument("--compare-every", type=positive_int, default=None,
                      help="compare with single-process linsolve every k steps (default T/10)")
    heat.add_argument("--fluid-shape", default=None, help="3D smoke grid (default 32,32,32; quick 16,16,16)")
    heat.add_argument("--fluid-frames", type=non_negative_int, default=None,
                      help="smoke frames (default 20; quick 4; 0 skips)")
    heat.add_argument("--fluid-scene", default="moving_sphere")
    heat.add_argument("--no-heat", action="store_true", help="only the smoke sequence (results petsc-fluid.json)")
    heat.add_argument("--fluid-arms", type=positive_int, default=7, help="fixed omegas tried on the smoke sequence")
    heat.add_argument("--fluid-rtol", type=float, default=1e-6)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before an mpiexec run is killed")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rtol is None:
        args.rtol = 1e-6 if args.part == "mg" else 1e-8
    if args.part == "mg":
        if args.size is None:
            args.size = 24 if args.quick else 64
        if args.large is None:
            args.large = 48 if args.quick else 128
        if args.ranks is None:
            args.ranks = "1,2" if args.quick else "1,2,4"
        if args.frames is None:
            args.frames = 3 if args.quick else 10
        unknown = set(args.methods.split(",")) - set(MG_METHODS)
        if unknown:
            parser.error(f"unknown --methods {sorted(unknown)}; choose from {', '.join(MG_METHODS)}")
        if args.worker:
            return _mg_worker(args)
    else:
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
    if args.part == "mg":
        return _mg_main(args)
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
