"""One method registry: register_method reaches solve, the torch backend, SequenceSolver and the CLI."""
import numpy as np
import pytest

import linsolve
from linsolve import _registry
from linsolve.krylov.cg import cg_result


@pytest.fixture
def mine():
    """A method "mine" (Jacobi-preconditioned CG) with a NumPy and a torch driver; removed afterwards."""
    calls = []

    def numpy_driver(A, b, *, x0=None, rtol=1e-5, atol=0.0, maxiter=None, M=None, callback=None, weight=1.0):
        calls.append("numpy")
        res = cg_result(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=_diag_inverse(A.diagonal(), weight),
                        callback=callback)
        res.method = "mine"
        return res

    def torch_driver(system, M, check_every, weight=1.0):
        from linsolve.backends.array_api import torch_ops
        from linsolve.krylov.cg import pcg_loop

        calls.append("torch")
        inv = weight / system.A.diagonal()
        out = pcg_loop(torch_ops(), system.A, lambda r: inv * r, system.b, system.x, tol=system.tol,
                       maxiter=system.maxiter, check_every=check_every)
        return out, "mine", "recurrence", {"weight": weight}, 0.0

    linsolve.register_method("mine", numpy_driver, "Jacobi CG for the test", torch=torch_driver,
                             options=("weight",), param="weight")
    yield calls
    del _registry.METHODS["mine"]


def _diag_inverse(d, weight):
    from scipy.sparse.linalg import LinearOperator

    return LinearOperator((d.size, d.size), matvec=lambda r: weight * r / d, dtype=np.float64)


def test_register_method_reaches_solve_and_the_torch_backend(mine):
    torch = pytest.importorskip("torch")
    A = linsolve.problems.poisson((12, 12))
    b = np.random.default_rng(0).standard_normal(A.shape[0])
    res = linsolve.solve(A, b, method="mine", rtol=1e-8, weight=1.0)
    assert res.converged and res.method == "mine"
    assert np.linalg.norm(b - A @ res.x) <= 1e-8 * np.linalg.norm(b)
    tres = linsolve.solve(A, torch.from_numpy(b), method="mine", rtol=1e-8, device="cpu")
    assert isinstance(tres.x, torch.Tensor) and tres.converged and tres.method == "mine"
    assert np.linalg.norm(b - A @ tres.x.numpy()) <= 1e-8 * np.linalg.norm(b)
    # Jacobi CG: the two backends run the same iteration.
    assert tres.iterations == res.iterations
    assert mine == ["numpy", "torch"]
    assert "mine" in linsolve.available_methods() and "mine" in linsolve.available_methods("torch")
    from linsolve.backends import torch_backend

    assert "mine" in torch_backend.METHODS


def test_registered_options_are_checked_on_every_backend(mine):
    torch = pytest.importorskip("torch")
    A = linsolve.problems.poisson((6, 6))
    with pytest.raises(TypeError, match="unexpected options.*wieght"):
        linsolve.solve(A, np.ones(36), method="mine", wieght=2.0)
    with pytest.raises(TypeError, match="unexpected options.*wieght"):
        linsolve.solve(A, torch.ones(36, dtype=torch.float64), method="mine", wieght=2.0)


def test_sequence_solver_and_cli_read_the_registry(mine, capsys):
    solver = linsolve.SequenceSolver(method="mine", tuner="tsallis", arms=[0.8, 1.0], rtol=1e-8)
    A = linsolve.problems.poisson((8, 8))
    res = solver.solve(A, np.ones(64))
    assert res.converged and solver.stats[-1]["param_name"] == "weight"   # the registered tuned parameter
    from linsolve.cli import main

    assert main(["methods"]) == 0
    assert "Jacobi CG for the test" in capsys.readouterr().out


def test_a_method_without_torch_driver_is_refused_on_torch_with_its_name():
    torch = pytest.importorskip("torch")
    linsolve.register_method("host-only", lambda A, b, **kw: cg_result(A, b, **kw))
    try:
        with pytest.raises(ValueError, match="host-only.*not available on the torch backend"):
            linsolve.solve(linsolve.problems.poisson((4, 4)), torch.ones(16), method="host-only")
    finally:
        del _registry.METHODS["host-only"]


def test_every_builtin_method_records_what_it_can_do():
    for name in ("cg", "sor", "ssor-cg", "dcdm", "learned-pcg", "gmg-pcg"):
        assert "torch" in _registry.method(name).backends
    assert _registry.method("amg-cg").backends == ("numpy",)
    for name in ("amg-cg", "ic-cg", "gmg-pcg", "learned-pcg"):
        assert _registry.method(name).reuse == "preconditioner"
    assert _registry.method("sor").param == _registry.method("ssor-cg").param == "omega"
    assert _registry.method("gmg-pcg").uses_grid() and not _registry.method("cg").uses_grid()


@pytest.mark.parametrize("method,old", [("amg-cg", "hierarchy"), ("ic-cg", "factor")])
def test_preconditioner_keyword_reuses_for_every_method(method, old):
    A = linsolve.problems.poisson((16, 16))
    b = np.ones(A.shape[0])
    first = linsolve.solve(A, b, method=method, rtol=1e-8)
    built = first.extras["preconditioner"]
    again = linsolve.solve(A, 2 * b, method=method, rtol=1e-8, preconditioner=built)
    assert again.extras["preconditioner"] is built and again.setup_time_s == 0.0
    assert again.iterations == first.iterations
    with pytest.warns(DeprecationWarning, match=f"{old}= is deprecated"):
        linsolve.solve(A, b, method=method, rtol=1e-8, **{old: built})


def test_an_option_only_the_torch_driver_takes_is_named_as_such_on_numpy():
    """cg takes omega on torch (a preconditioner given by name, M='ssor'); on NumPy the registry listed it as taken
    and the driver then refused it ("it takes ['omega']" for any other option)."""
    A, b = linsolve.problems.poisson((8, 8)), np.ones(64)
    with pytest.raises(TypeError, match="torch backend only"):
        linsolve.solve(A, b, method="cg", omega=1.5)
    with pytest.raises(TypeError, match=r"got unexpected options: \['tol'\] \(it takes none\)"):
        linsolve.solve(A, b, method="cg", tol=1.0)
