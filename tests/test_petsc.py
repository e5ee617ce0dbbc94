"""PETSc backend (linsolve.backends.petsc): conversions, KSP CG + SOR with omega set through the options
database, the local-block Python preconditioner, 2-rank runs under mpiexec, and failure behaviour.

In-process tests run PETSc on one rank (petsc4py initialises MPI as a singleton). Distributed tests launch
``mpiexec -n 2 python -m mpi4py tests/petsc_scripts/cases.py`` with a timeout, so a hang fails the test
instead of blocking the suite. Everything is skipped when petsc4py/mpi4py or mpiexec are missing
(``make petsc-install`` installs them).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, eigsh, splu

import linsolve

pytest.importorskip("mpi4py")
pytest.importorskip("petsc4py")

from linsolve.backends import petsc as lp  # noqa: E402
from linsolve.benchmarks.petsc import mpi_environment, mpiexec_command  # noqa: E402

pytestmark = pytest.mark.petsc

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = os.path.join(HERE, "petsc_scripts", "cases.py")
needs_mpiexec = pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec not installed")


def _shifted(shape, shift=0.05):
    A = linsolve.problems.poisson(shape)
    return (A + shift * sp.identity(A.shape[0])).tocsr()


def _cond(A):
    lmax = eigsh(A, k=1, which="LA", return_eigenvectors=False)[0]
    lmin = eigsh(A.tocsc(), k=1, sigma=0.0, return_eigenvectors=False)[0]
    return lmax / lmin


def _ssor_pcg_iterations(A, b, omega, rtol):
    """Single-process SSOR-PCG from linsolve (reference for PETSc on one rank)."""
    try:
        res = linsolve.solve(A, b, method="ssor-cg", omega=omega, rtol=rtol)
    except ValueError:
        from linsolve.krylov.cg import cg_result

        res = cg_result(A, b, rtol=rtol, M=lp._ssor_operator(A, omega))
    return res


def _run_mpi(case, tmp_path, *args, nprocs=2, timeout=150):
    out = tmp_path / f"{case}.json"
    cmd = mpiexec_command(nprocs) + [sys.executable, "-m", "mpi4py", CASES, case, "--out", str(out), *args]
    t0 = time.perf_counter()
    # Own session, so a timeout can end mpiexec and every rank it started (a hang fails, not blocks).
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=mpi_environment(), start_new_session=True)
    try:
        stdout, stderr = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        stdout, stderr = popen.communicate()
        pytest.fail(f"mpiexec {case} did not finish within {timeout} s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    elapsed = time.perf_counter() - t0
    data = json.loads(out.read_text()) if out.exists() else None
    return proc, data, elapsed


# --------------------------------------------------------------------------- in process (one rank)


def test_csr_and_vec_roundtrip():
    A = _shifted((9, 7))
    M = lp.csr_to_petsc(A)
    assert M.getSize() == A.shape
    B = lp.petsc_to_csr(M, gather=True)
    assert abs(B - A).max() == 0.0
    x = np.random.default_rng(1).standard_normal(A.shape[0])
    v = lp.numpy_to_vec(x, M)
    np.testing.assert_array_equal(lp.vec_to_numpy(v), x)
    y = M.createVecLeft()
    M.mult(v, y)
    np.testing.assert_allclose(lp.vec_to_numpy(y), A @ x, rtol=1e-13, atol=1e-13)


def test_distributed_row_block_input():
    A = _shifted((6, 6))
    M = lp.csr_to_petsc(A, distributed=True)  # one rank: the block is the whole matrix
    assert abs(lp.petsc_to_csr(M) - A).max() == 0.0
    with pytest.raises(ValueError, match="square"):
        lp.csr_to_petsc(A[:10], distributed=True)


@pytest.mark.parametrize("omega", [1.0, 1.5])
def test_one_rank_matches_linsolve_ssor_cg(omega):
    """On one rank PETSc's local symmetric SOR is SSOR: same iterations as linsolve, same solution."""
    A = _shifted((30, 30))
    b = np.random.default_rng(2).standard_normal(A.shape[0])
    rtol = 1e-8
    res = lp.petsc_solve(A, b, rtol=rtol, omega=omega)
    ref = _ssor_pcg_iterations(A, b, omega, rtol)
    assert res.converged and res.info == 0 and res.extras["reason"].startswith("CONVERGED")
    assert res.extras["omega"] == omega
    assert np.linalg.norm(b - A @ res.x) <= rtol * np.linalg.norm(b)
    # CG is invariant to scaling M; rounding may shift the crossing of the threshold by an iteration.
    assert abs(res.iterations - ref.iterations) <= 2, (res.iterations, ref.iterations)
    # Both satisfy ||b - Ax|| <= rtol ||b||, hence ||x1 - x2|| / ||x2|| <= 2 rtol cond(A).
    rel = np.linalg.norm(res.x - ref.x) / np.linalg.norm(ref.x)
    assert rel <= 2 * rtol * _cond(A)


def test_omega_reaches_petsc_through_options():
    A = _shifted((40, 40), shift=0.0)
    b = np.ones(A.shape[0])
    its = {w: lp.petsc_solve(A, b, rtol=1e-8, omega=w).iterations for w in (1.0, 1.7)}
    # On a 2D Poisson matrix a large omega cuts SSOR-PCG iterations substantially.
    assert its[1.7] < 0.8 * its[1.0], its
    solver = lp.PETScSequenceSolver(tuner=1.7, rtol=1e-8, prefix="omegacheck_")
    solver.solve(A, b)
    assert solver.ksp.getPC().getType() == "sor"
    assert solver.stats[0]["iterations"] == its[1.7]
    # The option is removed after use so it cannot leak into another solver.
    from petsc4py import PETSc

    assert not PETSc.Options().hasName("omegacheck_pc_sor_omega")
    solver.close()


def test_sequence_solver_feeds_iterations_to_tuner():
    class Recorder:
        def __init__(self):
            self.suggested, self.costs = [], []

        def suggest(self, context=None):
            value = [1.2, 1.8][len(self.suggested) % 2]
            self.suggested.append((value, context))
            return value

        def observe(self, cost):
            self.costs.append(cost)

    tuner = Recorder()
    solver = lp.PETScSequenceSolver(tuner=tuner, rtol=1e-8)
    for inst in linsolve.problems.heat_sequence(20, 4):
        res = solver.solve(inst.A, inst.b, context=inst.context)
        assert res.converged
    assert tuner.costs == [s["iterations"] for s in solver.stats]
    assert [s["omega"] for s in solver.stats] == [1.2, 1.8, 1.2, 1.8]
    assert [c for _, c in tuner.suggested] == [s["context"] for s in solver.stats]
    solver.close()


def test_not_converged_is_reported():
    A = _shifted((30, 30), shift=0.0)
    b = np.ones(A.shape[0])
    res = lp.petsc_solve(A, b, rtol=1e-10, maxiter=3)
    assert not res.converged
    assert res.info == 3 and res.iterations == 3
    assert res.extras["reason"] in ("DIVERGED_MAX_IT", "DIVERGED_ITS")  # name depends on the PETSc version
    assert res.true_residual_norm > 1e-10 * np.linalg.norm(b)


def test_indefinite_matrix_is_a_breakdown_not_convergence():
    A = _shifted((12, 12), shift=-2.0)  # shift below the smallest eigenvalue: indefinite
    b = np.ones(A.shape[0])
    res = lp.petsc_solve(A, b, rtol=1e-10, pc="none", maxiter=500)
    assert not res.converged
    assert np.linalg.norm(b - A @ res.x) > 1e-10 * np.linalg.norm(b) or res.info != 0


def test_bad_input_raises_clear_errors():
    A = _shifted((8, 8))
    b = np.ones(A.shape[0])
    with pytest.raises(ValueError, match="omega"):
        lp.petsc_solve(A, b, omega=2.5)
    with pytest.raises(ValueError, match="b has length"):
        lp.petsc_solve(A, b[:-1])
    with pytest.raises(ValueError, match="square"):
        lp.csr_to_petsc(A[:, :-1])
    with pytest.raises(ValueError, match="rtol"):
        lp.PETScSequenceSolver(tuner=1.0, rtol=-1.0)
    with pytest.raises(ValueError, match="NaN"):
        lp.petsc_solve(A, np.full(A.shape[0], np.nan))
    with pytest.raises(TypeError, match="tuner"):
        lp.PETScSequenceSolver(tuner=object())
    with pytest.raises(ValueError, match="local preconditioner"):
        lp.local_preconditioner_factory("nope")
    with pytest.raises(ValueError, match="local_rows"):
        lp.csr_to_petsc(A, local_rows=A.shape[0] - 1)


def test_pcshell_exact_local_block_on_one_rank():
    """With one rank the local block is A itself: an exact local solve makes CG converge in one step."""
    A = _shifted((20, 20))
    b = np.random.default_rng(3).standard_normal(A.shape[0])

    def exact(A_local):
        lu = splu(A_local.tocsc())
        return LinearOperator(A_local.shape, matvec=lu.solve, dtype=float)

    res = lp.petsc_solve(A, b, rtol=1e-8, pc="python", local_preconditioner=exact)
    assert res.converged and res.iterations == 1
    res_amg = lp.petsc_solve(A, b, rtol=1e-8, pc="python", local_preconditioner="amg")
    res_none = lp.petsc_solve(A, b, rtol=1e-8, pc="none")
    assert res_amg.converged and res_amg.iterations < res_none.iterations / 3


def test_pcshell_with_the_dcdm_network_needs_a_flexible_krylov_method():
    """The DCDM network as each rank's local preconditioner: FCG converges; CG refuses it by name."""
    pytest.importorskip("torch")
    A = linsolve.problems.poisson((32, 32))
    b = np.random.default_rng(5).standard_normal(A.shape[0])
    make = lp.local_preconditioner_factory("learned", grid_shape=(32, 32))
    res = lp.petsc_solve(A, b, rtol=1e-6, pc="python", ksp_type="fcg", local_preconditioner=make)
    res_none = lp.petsc_solve(A, b, rtol=1e-6, pc="none")
    assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)
    assert res.iterations < res_none.iterations / 2
    with pytest.raises(Exception, match="not symmetric"):
        lp.petsc_solve(A, b, rtol=1e-6, pc="python", ksp_type="cg", local_preconditioner=make)


def test_pcshell_rejects_wrong_shape_operator():
    A = _shifted((6, 6))
    bad = lambda A_local: LinearOperator((3, 3), matvec=lambda x: x, dtype=float)  # noqa: E731
    with pytest.raises(Exception, match="shape"):
        lp.petsc_solve(A, np.ones(A.shape[0]), pc="python", local_preconditioner=bad)


# --------------------------------------------------------------------------- two ranks under mpiexec


@needs_mpiexec
def test_two_ranks_heat_sequence_matches_single_process(tmp_path):
    proc, data, _ = _run_mpi("sequence", tmp_path, "--nx", "32", "--T", "24", "--dt", "0.05")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert data["ranks"] == 2 and data["ranks_agree"]
    for key, run in data["fixed"].items():
        assert run["all_converged"], key
        assert run["max_relative_residual"] <= 1e-8
    # Over-relaxation helps inside PETSc too (block-Jacobi SSOR is still SSOR within each rank).
    assert data["fixed"]["1.6"]["total_iterations"] < data["fixed"]["1.0"]["total_iterations"]
    assert data["tuned"]["all_converged"]
    assert set(data["tuned"]["omegas"]) <= {1.0, 1.3, 1.6, 1.9}
    checks = data["checks"] + data["checks_fixed"]
    assert len(checks) >= 8
    for row in checks:
        assert row["ok"], row
        assert row["rel_diff"] <= row["tolerance"]
        assert row["petsc_relative_residual"] <= 1e-8
        assert row["rel_err_exact"] <= 1e-8 * row["cond"]


@needs_mpiexec
def test_two_ranks_local_block_preconditioner(tmp_path):
    proc, data, _ = _run_mpi("pcshell", tmp_path, "--nx", "24")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    exact = data["exact_local"]
    # Slab partition: 12 grid rows per rank, each local block is the Poisson matrix of its slab.
    assert exact["local_rows"] == [288, 288]
    assert exact["local_shapes"] == [[288, 288], [288, 288]]
    assert all(exact["local_is_slab_poisson"])
    assert exact["converged"] and exact["relative_residual"] <= 1e-8 and exact["rel_err"] <= 1e-5
    # Block Jacobi with exact blocks is no longer exact on 2 ranks, but far better than no preconditioner.
    assert 1 < exact["iterations"] < data["no_pc"]["iterations"] / 2
    assert data["amg_local"]["converged"] and data["amg_local"]["relative_residual"] <= 1e-8
    assert data["amg_local"]["iterations"] < data["no_pc"]["iterations"] / 2
    learned = data["fast_learned"]
    if learned is not None:  # linsolve.precond.multigrid present: SPD learned V-cycle per rank inside PETSc CG
        assert learned["local_shape"] == [8, 8, 8]
        assert learned["converged"] and learned["relative_residual"] <= 1e-8
        assert learned["iterations"] < learned["no_pc_iterations"] / 2


@needs_mpiexec
def test_killed_rank_fails_fast_with_error(tmp_path):
    proc, data, elapsed = _run_mpi("kill", tmp_path, "--nx", "40", "--T", "50", "--fail-at", "3", timeout=120)
    assert data is None  # the sequence did not complete
    assert proc.returncode != 0
    assert "step 2:" in proc.stdout  # it ran until the kill
    text = (proc.stdout + proc.stderr).lower()
    assert "signal 9" in text or "killed" in text or "terminated" in text, text[-2000:]


@needs_mpiexec
def test_stopped_rank_triggers_watchdog(tmp_path):
    proc, data, elapsed = _run_mpi("stop", tmp_path, "--nx", "40", "--T", "50", "--fail-at", "3",
                                   "--timeout-s", "4", timeout=120)
    assert data is None and proc.returncode != 0
    assert elapsed < 60
    # KSPSolve holds the GIL while MPI waits, so the faulthandler backstop (C thread) is what fires:
    # "Timeout" plus the Python stack showing the ksp.solve call of the PETSc backend.
    assert ("did not finish within timeout_s=4" in proc.stderr
            or ("Timeout" in proc.stderr and "backends/petsc.py" in proc.stderr)), proc.stderr[-2000:]


@needs_mpiexec
def test_exception_on_one_rank_aborts_all(tmp_path):
    proc, data, elapsed = _run_mpi("raise", tmp_path, "--nx", "20", "--T", "10", "--fail-at", "2", timeout=120)
    assert data is None and proc.returncode != 0
    assert "deliberate failure on rank 1" in proc.stderr
    assert "rank 1 failed; aborting all ranks" in proc.stderr


def test_sequence_solver_with_gamg_and_python_pc():
    seq = list(linsolve.problems.heat_sequence(24, 3, dt=0.05))
    for pc, extra in (("gamg", {}), ("python", {"local_preconditioner": "amg"})):
        solver = lp.PETScSequenceSolver(pc=pc, rtol=1e-8, **extra)
        assert solver.tuner is None  # omega is only tuned for PC SOR
        for inst in seq:
            res = solver.solve(inst.A, inst.b)
            assert res.converged and res.method == f"petsc-cg-{pc}"
            assert np.linalg.norm(inst.b - inst.A @ res.x) <= 1e-8 * np.linalg.norm(inst.b)
        # warm start from the previous solution: the later (similar) systems need no more iterations
        # than a cold start would
        cold = lp.petsc_solve(seq[-1].A, seq[-1].b, rtol=1e-8, pc=pc, **extra)
        assert solver.stats[-1]["iterations"] <= cold.iterations
        solver.close()


@pytest.mark.slow
@needs_mpiexec
def test_acceptance_heat_nx200_T500(tmp_path):
    """Issue #10 acceptance (about 20 min on 2 cores): tuned omega beats omega = 1 and is within 1.15x of the
    best fixed omega inside 2-rank PETSc CG; solutions agree with single-process linsolve."""
    from linsolve.benchmarks.petsc import main

    assert main(["--nx", "200", "--T", "500", "--fluid-frames", "0", "--no-plots", "--out", str(tmp_path)]) == 0
    verdict = json.loads((tmp_path / "petsc.json").read_text())["results"]["heat"]["verdict"]
    assert verdict["tuned_beats_omega1"], verdict
    assert verdict["tuned_within_1.15_of_best"], verdict
    assert verdict["solutions_match"], verdict
