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


def test_sequence_solver_shares_sequence_solvers_core():
    """The penalty for a failed solve, the warm-start rule and the numbered stats of linsolve.SequenceSolver."""
    from linsolve.sequence import SequenceCore

    costs = []

    class Recorder:
        def suggest(self, context=None):
            return 1.5

        def observe(self, cost):
            costs.append(cost)

    A = _shifted((16, 16))
    b = np.ones(A.shape[0])
    solver = lp.PETScSequenceSolver(tuner=Recorder(), rtol=1e-8)
    assert isinstance(solver, SequenceCore)
    first = solver.solve(A, b)
    solver.maxiter = 2
    failed = solver.solve(A, -50 * b)       # the warm start is worse than zero here: not used; 2 its: not converged
    assert first.converged and not failed.converged
    assert costs == [first.iterations, 2 * first.iterations]      # failing never looks cheap
    assert [s["call"] for s in solver.stats] == [0, 1] and solver.stats[1]["warm_start"] is False
    solver.maxiter = None
    again = solver.solve(A, b)             # the last converged solution (frame 0) is kept and helps now
    assert again.converged and solver.stats[2]["warm_start"] is True and again.iterations < first.iterations
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
    # unknown PETSc type names: a ValueError naming them, not PETSc's error code 86 and C traceback
    with pytest.raises(ValueError, match="unknown pc 'bogus'"):
        lp.petsc_solve(A, b, pc="bogus")
    with pytest.raises(ValueError, match="unknown ksp_type 'bogus'"):
        lp.petsc_solve(A, b, ksp_type="bogus")
    with pytest.raises(ValueError, match="unknown pc 'bogus'"):
        lp.PETScSequenceSolver(tuner=None, pc="bogus")             # at construction, not the first solve
    assert lp.petsc_solve(A, b).converged                           # the backend still works afterwards


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
            or ("Timeout" in proc.stderr and "backends/petsc/" in proc.stderr)), proc.stderr[-2000:]


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

    assert main(["--part", "heat", "--nx", "200", "--T", "500", "--fluid-frames", "0", "--no-plots",
                 "--out", str(tmp_path)]) == 0
    verdict = json.loads((tmp_path / "petsc.json").read_text())["results"]["heat"]["verdict"]
    assert verdict["tuned_beats_omega1"], verdict
    assert verdict["tuned_within_1.15_of_best"], verdict
    assert verdict["solutions_match"], verdict


# --------------------------------------------------------------------------- DMDA pressure systems + PCMG


def _tank(shape, *, sphere=True, air_top=0, seed=0):
    """A tank (solid sides and floor, open top), optionally a solid sphere and an AIR layer on top; random b."""
    cells = np.zeros(shape, dtype=np.int8)
    cells[0] = cells[-1] = linsolve.problems.SOLID
    cells[:, 0] = linsolve.problems.SOLID
    if len(shape) == 3:
        cells[:, :, 0] = cells[:, :, -1] = linsolve.problems.SOLID
    if air_top:
        cells[1:-1, -air_top:] = linsolve.problems.AIR
    if sphere:
        grid = np.indices(shape)
        centre = [s / 2.0 for s in shape]
        r2 = sum((g + 0.5 - c) ** 2 for g, c in zip(grid, centre))
        cells[r2 < (min(shape) / 5.0) ** 2] = linsolve.problems.SOLID
    b = np.random.default_rng(seed).standard_normal(cells.size)
    b[cells.ravel() != linsolve.problems.FLUID] = 0.0
    return cells, b


def _dmda_matrix(dm):
    """The assembled DMDA matrix as CSR in linsolve's C order (columns of A x for unit vectors, one rank)."""
    return lp.petsc_to_csr(dm.mat, gather=True)  # one rank: PETSc order is the natural C order


@pytest.mark.parametrize("shape,h", [((9, 8, 7), (1.0, 0.5, 2.0)), ((11, 9), 0.25)])
def test_dmda_assembly_matches_pressure_matrix(shape, h):
    cells, _ = _tank(shape, air_top=2)
    cells[3, 3] = linsolve.problems.AIR
    dm = lp.PressureDMDA(shape)
    dm.assemble(cells, h=h)
    A = linsolve.problems.pressure_matrix(cells, h)
    assert abs(_dmda_matrix(dm) - A).max() <= 1e-12 * abs(A).max()
    # Re-assembly of another frame goes into the same Mat with the same pattern.
    mat, nnz = dm.mat, dm.mat.getInfo()["nz_used"]
    cells2 = cells.copy()
    cells2[4, 4] = linsolve.problems.SOLID
    dm.assemble(cells2, h=h)
    assert dm.mat is mat and dm.mat.getInfo()["nz_used"] == nnz
    assert abs(_dmda_matrix(dm) - linsolve.problems.pressure_matrix(cells2, h)).max() <= 1e-12 * abs(A).max()
    dm.destroy()


def _all_fields(shape, seed=1):
    """Cells, density (ratio 1000), a level set, cut-cell face fractions and graded widths for one grid."""
    rng = np.random.default_rng(seed)
    cells, _ = _tank(shape, sphere=False)
    cells[2, 2] = linsolve.problems.SOLID
    rho = np.where(rng.random(shape) < 0.3, 1.0, 1000.0)
    phi = np.indices(shape)[1] - 0.7 * shape[1] + 0.3 * rng.random(shape)  # liquid below 70% of the height
    fracs = [np.clip(rng.uniform(-0.2, 1.2, tuple(s + (a == axis) for a, s in enumerate(shape))), 0.0, 1.0)
             for axis in range(len(shape))]
    h = [linsolve.problems.graded_widths(n) for n in shape]
    return cells, {"h": h, "density": rho, "phi": phi, "face_fractions": fracs}


def _identity_for_zero_rows(B):
    d = B.diagonal()
    return (B + sp.diags((d == 0).astype(float))).tocsr()


@pytest.mark.parametrize("shape", [(10, 9, 8), (12, 11)])
def test_dmda_assembly_with_all_fields_matches_pressure_matrix(shape):
    """Density, ghost fluid, cut cells and graded widths: the DMDA rows are pressure_matrix's (zero rows of
    trapped cells become identity rows)."""
    cells, options = _all_fields(shape)
    dm = lp.PressureDMDA(shape)
    dm.assemble(cells, **options)
    B = _identity_for_zero_rows(linsolve.problems.pressure_matrix(cells, **options))
    assert abs(_dmda_matrix(dm) - B).max() <= 1e-12 * abs(B).max()
    assert dm.trapped_cells == np.count_nonzero(linsolve.problems.pressure_matrix(cells, **options).diagonal() == 0)
    dm.destroy()


def test_level_parameters_from_the_shipped_model():
    classical = lp.level_parameters("classical", 4)
    assert classical == [{"omega": 1.0, "correction": 1.0}] * 4
    learned = lp.level_parameters(None, 5)
    assert len(learned) == 5 and learned != classical
    assert all(0.0 < p["omega"] < 2.0 and p["correction"] > 0.0 for p in learned)
    opts = lp.mg_options(learned)
    # PETSc numbers levels coarsest first: our finest level 0 is PETSc level 4.
    assert opts["mg_levels_4_pc_sor_omega"] == repr(learned[0]["omega"])
    assert "mg_levels_0_pc_sor_omega" not in opts and opts["mg_levels_pc_type"] == "sor"
    with pytest.raises(ValueError, match="n_levels"):
        lp.level_parameters(None, 0)


def _lmin(A):
    lo = eigsh(A.tocsc(), k=1, sigma=0.0, return_eigenvectors=False)[0]
    return float(lo)


@pytest.mark.parametrize("method", ["learned-mg", "gmg"])
def test_dmda_pcmg_solves_and_matches_linsolve(method):
    shape = (24, 24, 24)
    cells, b = _tank(shape, air_top=3)
    rtol = 1e-6
    with lp.DMDAPressureSolver(shape, method=method, rtol=rtol) as solver:
        res = solver.solve(cells, b)
        assert res.converged and res.info == 0
        A = linsolve.problems.pressure_matrix(cells)
        r_p = np.linalg.norm(b - A @ res.x)
        assert r_p <= rtol * np.linalg.norm(b)
        assert res.iterations <= 15
        assert solver.levels == [(24, 24, 24), (12, 12, 12), (6, 6, 6)]
        # Same system, single-process linsolve; both meet the stopping rule, so the difference is at most
        # (||r_p|| + ||r_ls||) / lambda_min(A).
        ref = linsolve.solve(A, b, method="gmg-pcg", rtol=rtol, cell_types=cells)
        bound = (r_p + np.linalg.norm(b - A @ ref.x)) / _lmin(A)
        assert np.linalg.norm(res.x - ref.x) <= bound
        assert res.x[cells.ravel() != linsolve.problems.FLUID] == pytest.approx(0.0, abs=1e-12)


def test_pcmg_correction_scale_and_petsc_galerkin():
    """Our PtAP levels with correction 1 are PETSc's own -pc_mg_galerkin; a scale c multiplies interpolation."""
    shape = (16, 16, 16)
    cells, b = _tank(shape)
    with lp.DMDAPressureSolver(shape, method="gmg", rtol=1e-8) as ours:
        res = ours.solve(cells, b)
        H = ours.hierarchy
        from petsc4py import PETSc

        ksp = PETSc.KSP().create()
        ksp.setOptionsPrefix("galerkincheck_")  # before the levels exist, so they inherit it
        ksp.setType("cg")
        ksp.setNormType(PETSc.KSP.NormType.NORM_UNPRECONDITIONED)
        ksp.setOperators(ours.dm.mat)
        pc = ksp.getPC()
        pc.setType("mg")
        pc.setMGLevels(len(H.levels))
        for k in range(len(H.levels) - 1):
            pc.setMGInterpolation(len(H.levels) - 1 - k, H.P[k])
        opts = PETSc.Options()
        keys = {**lp.mg_options(ours.parameters), "pc_mg_galerkin": "both"}
        for key, val in keys.items():
            opts[f"galerkincheck_{key}"] = val
        ksp.setFromOptions()
        ksp.setTolerances(rtol=1e-8, atol=0.0)
        ksp.setUp()
        for key in keys:
            del opts[f"galerkincheck_{key}"]
        bv, xv = ours.dm.vec_from_array(b), ours.dm.create_vec()
        ksp.solve(bv, xv)
        assert ksp.getIterationNumber() == res.iterations
        assert pc.getMGSmoother(1).getType() == "richardson" and ours.ksp.getPC().getMGSmoother(1).getType() == \
            "richardson"
        ksp.destroy()
    with lp.DMDAPressureSolver(shape, method="learned-mg",
                               model={"weights": np.zeros((1, 6)), "bias": [0.0],
                                      "log_correction": [np.log(1.5)]}) as scaled:
        scaled.solve(cells, b)
        H = scaled.hierarchy
        pc = scaled.ksp.getPC()
        n = len(H.levels)
        for k in range(n - 1):
            P, Pc = lp.petsc_to_csr(H.P[k], gather=True), lp.petsc_to_csr(pc.getMGInterpolation(n - 1 - k),
                                                                         gather=True)
            assert abs(Pc - 1.5 * P).max() <= 1e-14
            assert abs(lp.petsc_to_csr(pc.getMGRestriction(n - 1 - k), gather=True) - P).max() == 0.0


def test_trapped_cells_and_walls_do_not_break_pcmg():
    shape = (20, 18, 16)
    cells, b = _tank(shape)
    # Single fluid cells sealed by solid (zero rows), a sealed pocket's walls, air cells next to solids.
    for c in [(3, 3, 3), (15, 12, 10)]:
        cells[c[0] - 1:c[0] + 2, c[1] - 1:c[1] + 2, c[2] - 1:c[2] + 2] = linsolve.problems.SOLID
        cells[c] = linsolve.problems.FLUID
        b[np.ravel_multi_index(c, shape)] = 0.0
    cells[5:9, -2:, 5:9] = linsolve.problems.AIR
    b[cells.ravel() != linsolve.problems.FLUID] = 0.0
    A = linsolve.problems.pressure_matrix(cells)
    assert np.count_nonzero(A.diagonal() == 0) == 2
    for method in ("learned-mg", "gmg"):
        with lp.DMDAPressureSolver(shape, method=method, rtol=1e-6) as solver:
            res = solver.solve(cells, b)
            assert res.converged and res.extras["trapped_cells"] == 2
            assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)
            assert res.iterations <= 20
            # Coarse operators stay nonsingular with a positive diagonal (no zero rows).
            for op in solver.hierarchy.ops[1:]:
                assert lp.vec_to_numpy(op.getDiagonal()).min() > 0


def test_dmda_sequence_reuses_mat_and_warm_starts():
    shape = (16, 16, 16)
    frames = []
    for t in range(3):
        cells, b = _tank(shape, sphere=False, seed=t)
        cells[4 + t:8 + t, 5:9, 5:9] = linsolve.problems.SOLID  # a block moving one cell per frame
        b[cells.ravel() != linsolve.problems.FLUID] = 0.0
        frames.append((cells, 0.9 * frames[-1][1] + 0.1 * b if frames else b))
        frames[-1][1][cells.ravel() != linsolve.problems.FLUID] = 0.0
    with lp.DMDAPressureSolver(shape, method="learned-mg", rtol=1e-8) as solver:
        mats, ops = [], []
        for cells, b in frames:
            res = solver.solve(cells, b)
            assert res.converged
            A = linsolve.problems.pressure_matrix(cells)
            assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
            mats.append(solver.dm.mat)
            ops.append(tuple(solver.hierarchy.ops))
        assert all(m is mats[0] for m in mats) and all(o == ops[0] for o in ops)
        assert [s["warm_start"] for s in solver.stats] == [False, True, True]
        cold = lp.DMDAPressureSolver(shape, method="learned-mg", rtol=1e-8, warm_start=False)
        assert solver.stats[-1]["iterations"] <= cold.solve(*frames[-1]).iterations
        cold.close()


def test_dmda_gamg_and_block_jacobi_methods():
    shape = (16, 16, 16)
    cells, b = _tank(shape)
    A = linsolve.problems.pressure_matrix(cells)
    for method in ("gamg", "bjacobi-learned"):
        with lp.DMDAPressureSolver(shape, method=method, rtol=1e-6) as solver:
            res = solver.solve(cells, b)
            assert res.converged and res.method == f"petsc-dmda-{method}"
            assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)


def test_dmda_bad_input():
    with pytest.raises(ValueError, match="method"):
        lp.DMDAPressureSolver((8, 8, 8), method="nope")
    with pytest.raises(ValueError, match="grid_shape"):
        lp.PressureDMDA((8,))
    with lp.DMDAPressureSolver((8, 8, 8), method="gmg") as solver:
        cells = np.zeros((8, 8, 8), dtype=np.int8)
        with pytest.raises(ValueError, match="cell_types must have"):
            solver.solve(cells[:4], np.ones(512))
        with pytest.raises(ValueError, match="b must have"):
            solver.solve(cells, np.ones(511))
        with pytest.raises(ValueError, match="unknown cell codes"):
            solver.solve(cells + 5, np.ones(512))
        with pytest.raises(ValueError, match="density"):
            solver.solve(cells, np.ones(512), density=-np.ones((8, 8, 8)))
        with pytest.raises(ValueError, match="NaN"):
            solver.solve(cells, np.full(512, np.nan))


@needs_mpiexec
def test_two_ranks_dmda_pcmg(tmp_path):
    """Two ranks: each assembles its own rows (from global or from its own ghosted fields); PCMG iterations
    are those of one rank within +-1, block Jacobi's are not better than one rank's."""
    proc, data, _ = _run_mpi("dmda", tmp_path, "--rtol", "1e-6")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert data["ranks"] == 2
    for key, row in data.items():
        if key == "ranks":
            continue
        shape = tuple(int(s) for s in key.split("x"))
        for label in ("global", "local", "fields_global", "fields_local"):
            assert row[f"assembly_{label}_err"] <= 1e-13, (key, label)
        assert len({tuple(map(tuple, o)) for o in row["owned"]}) == 2  # really split
        cells, b = _tank_like_cases(shape)
        for method in ("learned-mg", "gmg", "bjacobi-learned"):
            r = row[method]
            assert r["converged"] and r["relative_residual"] <= 1e-6, (key, method)
            assert len(set(r["iterations_all_ranks"])) == 1
            with lp.DMDAPressureSolver(shape, method=method, rtol=1e-6) as one:
                its1 = one.solve(cells, b).iterations
                if method != "bjacobi-learned":
                    assert [list(s) for s in one.levels] == r["levels"]
            if method == "bjacobi-learned":
                assert r["iterations"] >= its1, (key, r["iterations"], its1)
            else:
                assert abs(r["iterations"] - its1) <= 1, (key, method, r["iterations"], its1)


def _tank_like_cases(shape):
    sys.path.insert(0, os.path.join(HERE, "petsc_scripts"))
    try:
        import cases
    finally:
        sys.path.pop(0)
    return cases._tank(shape)


def test_dmda_pcmg_in_2d_with_odd_sizes_and_grading():
    shape = (45, 37)
    cells, b = _tank(shape, air_top=2)
    h = (1.0, 0.25)  # anisotropic spacing: the 5-point stencil is 16x stronger along axis 1
    A = linsolve.problems.pressure_matrix(cells, h)
    with lp.DMDAPressureSolver(shape, method="gmg", rtol=1e-6) as solver:
        res = solver.solve(cells, b, h=h)
        assert res.converged and np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)
        assert solver.levels[1] == (23, 19)
        # Point smoothing with full coarsening degrades with anisotropy, but PCG keeps it bounded.
        assert res.iterations <= 30


@pytest.mark.slow
@needs_mpiexec
def test_acceptance_pcmg_benchmark_quick(tmp_path):
    """Issue #19 acceptance at a small size (bench/petsc.py --quick, about a minute): PCMG iterations within
    +-1 across 1 and 2 ranks, <= 1.2x growth from 24^3 to 48^3, solutions match single-process linsolve,
    block Jacobi grows with the ranks. The full run is `python bench/petsc.py` (64^3/128^3, 1/2/4 ranks)."""
    from linsolve.benchmarks.petsc import main

    assert main(["--quick", "--no-plots", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "petsc-mg.json").read_text())["results"]
    verdict = results["verdict"]
    assert verdict["pcmg_within_1_across_ranks"] and verdict["solutions_match"], verdict
    assert all(verdict["growth_within_1.2"].values()), verdict
    bj = [row for row in results["table"] if row["method"] == "bjacobi-learned"]
    assert bj and all(row["its_2"] > row["its_1"] for row in bj)
    assert all(row["all_converged"] for row in results["table"])


def test_porous_medium_with_trapped_cells_and_sealed_pockets():
    """The generators' porous medium: zero rows and closed pockets (singular A) with a consistent b."""
    shape = (20, 20, 20)
    cells = linsolve.problems.porous_cells(shape, 0.25, seed=0)
    A = linsolve.problems.pressure_matrix(cells)
    N = linsolve.problems.pressure_nullspace(cells)
    trapped = int(np.count_nonzero(A.diagonal() == 0))
    assert trapped >= 1 and N.shape[1] > trapped  # at least one pocket larger than a cell
    b = np.random.default_rng(0).standard_normal(cells.size)
    b[cells.ravel() != linsolve.problems.FLUID] = 0.0
    b -= N @ (N.T @ b)  # consistent right-hand side
    for method in ("gmg", "learned-mg"):
        with lp.DMDAPressureSolver(shape, method=method, rtol=1e-6, maxiter=100) as solver:
            res = solver.solve(cells, b)
            assert res.converged and res.extras["trapped_cells"] == trapped
            assert np.linalg.norm(b - A @ res.x) <= 1e-6 * np.linalg.norm(b)
            assert res.iterations <= 15
