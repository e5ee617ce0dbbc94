"""Real clients through linsolve: PhiFlow's smoke plume and FiPy's diffusion, against their SciPy runs.

``make test`` installs the ``[clients]`` extra (phiflow, fipy); without them these tests skip.
Grids are the smallest on which ``auto_cg`` takes its multigrid path (2D >= 3,000 cells,
3D >= 12,000), with few steps.
"""
import importlib.util
import os
import warnings

import numpy as np
import pytest

import linsolve
from linsolve import shim

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- PhiFlow

@pytest.fixture(scope="module")
def smoke():
    pytest.importorskip("phi")
    return _example("phiflow_smoke")


def test_phiflow_2d_plain_swap_and_patch_scipy_match_scipy(smoke):
    shim.clear_cache()
    ref = smoke.run(2, 56, 3, solver="scipy")
    plain = smoke.run(2, 56, 3, solver="cg")
    auto = smoke.run(2, 56, 3, solver="auto")
    assert plain["iterations"][0] == ref["iterations"][0]            # the same iterates
    assert _rel(plain["velocity"], ref["velocity"]) < 1e-5
    # auto_cg meets the same tolerance by another path (grid found, sign flipped, obstacle rows decoupled)
    assert _rel(auto["velocity"], ref["velocity"]) < 1e-3
    assert max(auto["iterations"]) < min(ref["iterations"]) / 5
    info = shim.cache_info()
    assert info["fast"] == 3 and info["builds"] == 1 and info["reuses"] == 2   # A is the same every step


def test_phiflow_float32_at_256_squared_runs_through_patch_scipy(smoke):
    # PhiFlow's float32 default (rtol = atol = 1e-5) is beyond float32 at 256^2: the exact pressure rounded to
    # float32 misses it. auto_cg returns the float64 x that meets it instead of info > 0 (NotConverged).
    shim.clear_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shim.PrecisionWarning)
        auto = smoke.run(2, 256, 2, solver="auto")
    ref = smoke.run(2, 256, 2, solver="auto", precision=64)
    assert np.all(np.isfinite(auto["velocity"]))
    assert _rel(auto["velocity"], ref["velocity"]) < 1e-3
    assert shim.cache_info()["fast"] == 4 and max(auto["iterations"]) < 30


def test_phiflow_closed_box_bordered_system(smoke):
    shim.clear_cache()
    ref = smoke.run(2, 56, 2, closed=True, solver="scipy", precision=64)
    auto = smoke.run(2, 56, 2, closed=True, solver="auto", precision=64)
    assert _rel(auto["velocity"], ref["velocity"]) < 1e-3
    assert shim.cache_info()["fast"] == 2 and max(auto["iterations"]) < 20


def test_phiflow_3d_patch_scipy_matches_scipy(smoke):
    shim.clear_cache()
    ref = smoke.run(3, 24, 2, solver="scipy")
    auto = smoke.run(3, 24, 2, solver="auto")
    assert _rel(auto["velocity"], ref["velocity"]) < 1e-3
    assert shim.cache_info()["fast"] == 2 and max(auto["iterations"]) < min(ref["iterations"]) / 5


# ----------------------------------------------------------------------------- FiPy

@pytest.fixture(scope="module")
def fipy():
    os.environ.setdefault("FIPY_SOLVERS", "scipy")
    module = pytest.importorskip("fipy")
    from fipy.solvers import solver_suite

    if solver_suite != "scipy":
        pytest.skip(f"FiPy picked the {solver_suite} solver suite")
    return module


def _steady_diffusion(fipy, nx, ny):
    """FiPy's examples/diffusion/mesh20x20 steady state: fixed values on two sides, D = 1."""
    from fipy.solvers.scipy import LinearPCGSolver

    mesh = fipy.Grid2D(nx=nx, ny=ny, dx=1.0, dy=1.0)
    phi = fipy.CellVariable(mesh=mesh, value=0.0)
    phi.constrain(0.0, mesh.facesLeft)
    phi.constrain(1.0, mesh.facesRight | mesh.facesTop)
    fipy.DiffusionTerm(coeff=1.0).solve(var=phi, solver=LinearPCGSolver(tolerance=1e-10, iterations=5000))
    return np.array(phi.value)


def _transient_1d(fipy, steps=5):
    """FiPy's examples/diffusion/mesh1D, implicit steps."""
    from fipy.solvers.scipy import LinearPCGSolver

    mesh = fipy.Grid1D(nx=50, dx=1.0)
    phi = fipy.CellVariable(mesh=mesh, value=0.0)
    phi.constrain(0.0, mesh.facesRight)
    phi.constrain(1.0, mesh.facesLeft)
    eq = fipy.TransientTerm() == fipy.DiffusionTerm(coeff=1.0)
    for _ in range(steps):
        eq.solve(var=phi, dt=9.0, solver=LinearPCGSolver(tolerance=1e-10, iterations=1000))
    return np.array(phi.value)


def _with_plain_linsolve_cg(call):
    from fipy.solvers.scipy.linearCGSolver import LinearCGSolver

    original = LinearCGSolver.__dict__["solveFnc"]
    LinearCGSolver.solveFnc = staticmethod(linsolve.cg)        # FiPy binds cg at class definition
    try:
        return call()
    finally:
        LinearCGSolver.solveFnc = original


@pytest.mark.parametrize("problem", ["steady-2d-60x50", "transient-1d"])
def test_fipy_diffusion_through_linsolve(fipy, problem):
    run = {"steady-2d-60x50": lambda: _steady_diffusion(fipy, 60, 50),
           "transient-1d": lambda: _transient_1d(fipy)}[problem]
    shim.clear_cache()
    ref = run()
    plain = _with_plain_linsolve_cg(run)
    with linsolve.patch_scipy():
        auto = run()
    assert _rel(plain, ref) < 1e-9              # SciPy's iterates on FiPy's negative definite matrix
    assert _rel(auto, ref) < 1e-7
    if problem.startswith("steady"):
        assert shim.cache_info()["fast"] == 1    # 3,000 cells: the multigrid path
        assert np.all(np.diff(ref.reshape(50, 60), axis=1) >= -1e-9)   # monotone in x, as the BCs say
        assert 0.0 < ref.min() and ref.max() < 1.0


def test_fipy_1d_steady_diffusion_takes_the_banded_factor(fipy):
    """FiPy's Grid1D: plain CG needs about as many iterations as cells; the banded factor one."""
    from fipy.solvers.scipy import LinearPCGSolver

    nx = 4000
    mesh = fipy.Grid1D(nx=nx, dx=1.0 / nx)
    phi = fipy.CellVariable(mesh=mesh, value=0.0)
    phi.constrain(1.0, mesh.facesLeft)
    phi.constrain(0.0, mesh.facesRight)
    shim.clear_cache()
    with linsolve.patch_scipy():
        fipy.DiffusionTerm(coeff=1.0).solve(var=phi, solver=LinearPCGSolver(tolerance=1e-10, iterations=10 * nx))
    x = np.asarray(mesh.cellCenters[0].value)
    assert np.max(np.abs(np.asarray(phi.value) - (1.0 - x))) < 1e-8      # the exact linear profile
    assert shim.cache_info()["fast"] == 1 and shim.cache_info()["builds"] == 1
