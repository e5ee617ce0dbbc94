"""MPI programs for tests/test_petsc.py, run as ``mpiexec -n 2 python -m mpi4py cases.py CASE --out FILE``.

Every rank runs the same code (collective calls everywhere); rank 0 writes a
JSON summary that the test reads. The test, not this script, asserts.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, splu

import linsolve
from linsolve._io import atomic_write_json
from linsolve.backends import petsc as lp
from linsolve.benchmarks.petsc import reference_check, run_sequence


def sequence_case(args, comm):
    """Fixed omegas, tuned omega and the single-process comparison on a small heat sequence."""
    make = lambda: linsolve.problems.heat_sequence(args.nx, args.T, dt=args.dt)  # noqa: E731
    keep = set(range(0, args.T, 7)) | {args.T - 1}
    fixed = {}
    for omega in (1.0, 1.3, 1.6, 1.9):
        fixed[omega] = run_sequence(make(), label=f"fixed {omega}", comm=comm, tuner=omega, rtol=args.rtol,
                                    keep_steps=keep)
    tuned = run_sequence(make(), label="tuned", comm=comm, tuner="tsallis", arms=[1.0, 1.3, 1.6, 1.9], seed=0,
                         rtol=args.rtol, keep_steps=keep)
    checks = reference_check(make, tuned["kept"], rtol=args.rtol, comm=comm)
    checks_fixed = reference_check(make, fixed[1.6]["kept"], rtol=args.rtol, comm=comm)
    # Iteration counts must be identical on every rank (they come from one collective KSP).
    per_rank = comm.tompi4py().allgather(tuned["iterations"])
    return {"fixed": {str(k): {kk: v[kk] for kk in ("total_iterations", "all_converged", "max_relative_residual",
                                                      "reasons", "iterations")} for k, v in fixed.items()},
            "tuned": {k: tuned[k] for k in ("total_iterations", "all_converged", "max_relative_residual",
                                            "iterations", "omegas")},
            "checks": checks, "checks_fixed": checks_fixed, "ranks_agree": all(p == per_rank[0] for p in per_rank)}


def pcshell_case(args, comm):
    """LocalBlockPreconditioner on slab blocks: exact local solves (block Jacobi) and AMG."""
    shape = (args.nx, args.nx)
    A = linsolve.problems.poisson(shape)
    n = A.shape[0]
    b = np.random.default_rng(0).standard_normal(n)
    local_rows, local_shape = lp.slab_partition(shape, comm)
    seen = {}

    def exact(A_local):
        seen["shape"] = A_local.shape
        # The local block of a slab partition is the Poisson matrix of the slab grid (Dirichlet cut).
        seen["is_slab_poisson"] = bool(abs(A_local - linsolve.problems.poisson(local_shape)).max() < 1e-12)
        lu = splu(A_local.tocsc())
        return LinearOperator(A_local.shape, matvec=lu.solve, dtype=float)

    out = {}
    res = lp.petsc_solve(A, b, rtol=args.rtol, pc="python", local_preconditioner=exact, local_rows=local_rows,
                         comm=comm)
    x_exact = sp.linalg.spsolve(A.tocsc(), b)
    out["exact_local"] = {"iterations": res.iterations, "converged": res.converged, "reason": res.extras["reason"],
                          "relative_residual": float(np.linalg.norm(b - A @ res.x) / np.linalg.norm(b)),
                          "rel_err": float(np.linalg.norm(res.x - x_exact) / np.linalg.norm(x_exact)),
                          "local_shapes": comm.tompi4py().allgather(list(seen["shape"])),
                          "local_is_slab_poisson": comm.tompi4py().allgather(seen["is_slab_poisson"]),
                          "local_rows": comm.tompi4py().allgather(local_rows)}
    res_amg = lp.petsc_solve(A, b, rtol=args.rtol, pc="python", local_preconditioner="amg", comm=comm)
    res_none = lp.petsc_solve(A, b, rtol=args.rtol, pc="none", comm=comm)
    out["amg_local"] = {"iterations": res_amg.iterations, "converged": res_amg.converged,
                        "relative_residual": float(np.linalg.norm(b - A @ res_amg.x) / np.linalg.norm(b))}
    out["no_pc"] = {"iterations": res_none.iterations, "converged": res_none.converged}
    # The SPD learned multigrid preconditioner on 3D slab blocks (identity-parameter model: no weights needed).
    try:
        from linsolve.precond.multigrid import fast_learned  # noqa: F401
    except ImportError:
        out["fast_learned"] = None
        return out
    shape3 = (16, 8, 8)
    A3 = linsolve.problems.poisson(shape3)
    b3 = np.random.default_rng(1).standard_normal(A3.shape[0])
    rows3, local3 = lp.slab_partition(shape3, comm)
    ident = {"weights": np.zeros((1, 6)), "bias": [0.0], "log_correction": [0.0]}
    res3 = lp.petsc_solve(A3, b3, rtol=args.rtol, pc="python", local_rows=rows3, comm=comm,
                          local_preconditioner=lp.local_preconditioner_factory("fast_learned", grid_shape=local3,
                                                                               model=ident))
    res3_none = lp.petsc_solve(A3, b3, rtol=args.rtol, pc="none", comm=comm)
    out["fast_learned"] = {"iterations": res3.iterations, "converged": res3.converged,
                           "relative_residual": float(np.linalg.norm(b3 - A3 @ res3.x) / np.linalg.norm(b3)),
                           "no_pc_iterations": res3_none.iterations, "local_shape": list(local3)}
    return out


def _tank(shape, seed=0):
    """Tank with solid sides and floor, a solid sphere, an AIR layer on top; random b on fluid cells."""
    cells = np.zeros(shape, dtype=np.int8)
    cells[0] = cells[-1] = linsolve.problems.SOLID
    cells[:, 0] = linsolve.problems.SOLID
    cells[:, :, 0] = cells[:, :, -1] = linsolve.problems.SOLID
    cells[1:-1, -3:] = linsolve.problems.AIR
    grid = np.indices(shape)
    r2 = sum((g + 0.5 - s / 2.0) ** 2 for g, s in zip(grid, shape))
    cells[r2 < (min(shape) / 5.0) ** 2] = linsolve.problems.SOLID
    b = np.random.default_rng(seed).standard_normal(cells.size)
    b[cells.ravel() != linsolve.problems.FLUID] = 0.0
    return cells, b


def dmda_case(args, comm):
    """DMDA assembly from global and from local (ghosted) fields, PCMG and block-Jacobi solves."""
    mpi = comm.tompi4py()
    out = {}
    for shape in ((24, 24, 24), (21, 19, 17)):
        cells, b = _tank(shape)
        A = linsolve.problems.pressure_matrix(cells)
        rng = np.random.default_rng(2)
        opts = {"density": np.where(np.indices(shape)[1] > shape[1] // 2, 1.0, 1000.0),
                "phi": np.indices(shape)[1] - 0.7 * shape[1] + 0.3 * rng.random(shape),
                "face_fractions": [np.clip(rng.uniform(-0.2, 1.2, tuple(s + (a == axis) for a, s in enumerate(shape))),
                                           0.0, 1.0) for axis in range(3)],
                "h": [linsolve.problems.graded_widths(n) for n in shape]}
        A_opts = linsolve.problems.pressure_matrix(cells, **opts)
        A_opts = A_opts + sp.diags((A_opts.diagonal() == 0).astype(float))  # trapped cells: identity rows
        x = np.random.default_rng(1).standard_normal(cells.size)
        key = "x".join(map(str, shape))
        row = {}
        dm = lp.PressureDMDA(shape, comm)
        g = dm.ghosted
        local_opts = {"density": opts["density"][g], "phi": opts["phi"][g], "h": opts["h"],
                      "face_fractions": [f[tuple(slice(s.start, s.stop + (a == axis)) for a, s in enumerate(g))]
                                         for axis, f in enumerate(opts["face_fractions"])]}
        for label, fields, ref in (("global", dict(cell_types=cells), A),
                                   ("local", dict(cell_types=cells[g]), A),
                                   ("fields_global", dict(cell_types=cells, **opts), A_opts),
                                   ("fields_local", dict(cell_types=cells[g], **local_opts), A_opts)):
            mat = dm.assemble(**fields)
            xv, yv = dm.vec_from_array(x), dm.create_vec()
            mat.mult(xv, yv)
            y = dm.gather(yv)
            row[f"assembly_{label}_err"] = float(np.abs(y - ref @ x).max() / np.abs(ref @ x).max())
        row["owned"] = mpi.allgather([[s.start, s.stop] for s in dm.owned])
        dm.destroy()
        for method in ("learned-mg", "gmg", "bjacobi-learned"):
            solver = lp.DMDAPressureSolver(shape, method=method, rtol=args.rtol, comm=comm)
            # Every rank passes only its own boxes of the fields and of b.
            res = solver.solve(cells[solver.dm.ghosted], b.reshape(shape)[solver.dm.owned])
            row[method] = {"iterations": res.iterations, "converged": res.converged,
                           "relative_residual": float(np.linalg.norm(b - A @ res.x) / np.linalg.norm(b)),
                           "levels": [list(s) for s in solver.levels],
                           "iterations_all_ranks": mpi.allgather(res.iterations)}
            solver.close()
        out[key] = row
    return out


def failure_case(args, comm):
    """A sequence during which one rank is killed, stopped, or raises."""
    rank = comm.getRank()
    solver = lp.PETScSequenceSolver(tuner=1.5, rtol=1e-8, comm=comm, timeout_s=args.timeout_s)
    for step, inst in enumerate(linsolve.problems.heat_sequence(args.nx, args.T)):
        if rank == args.fail_rank and step == args.fail_at:
            sys.stdout.flush()
            if args.case == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif args.case == "stop":
                os.kill(os.getpid(), signal.SIGSTOP)
            else:
                raise ValueError(f"deliberate failure on rank {rank} at step {step}")
        res = solver.solve(inst.A, inst.b, context=inst.context)
        if rank == 0:
            print(f"step {step}: {res.iterations} iterations", flush=True)
    return {"finished": True, "steps": args.T}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("case", choices=["sequence", "pcshell", "dmda", "kill", "stop", "raise"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--nx", type=int, default=24)
    parser.add_argument("--T", type=int, default=30)
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--dt", type=float, default=1e-3)
    parser.add_argument("--fail-rank", type=int, default=1)
    parser.add_argument("--fail-at", type=int, default=3)
    parser.add_argument("--timeout-s", type=float, default=None)
    args = parser.parse_args()
    lp.require_petsc()
    comm = lp.get_comm()
    with lp.abort_on_error(comm):
        if args.case == "sequence":
            out = sequence_case(args, comm)
        elif args.case == "pcshell":
            out = pcshell_case(args, comm)
        elif args.case == "dmda":
            out = dmda_case(args, comm)
        else:
            out = failure_case(args, comm)
        out["ranks"] = comm.getSize()
        if comm.getRank() == 0:
            atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
