"""Bad input to the foundation's entry points: a clear error naming the argument, never a crash."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

import linsolve

A_GOOD = linsolve.problems.poisson((6, 6))
N = A_GOOD.shape[0]
B_GOOD = np.ones(N)


def _entry_points():
    yield "cg", lambda A, b, **kw: linsolve.cg(A, b, **kw)
    yield "solve-cg", lambda A, b, **kw: linsolve.solve(A, b, method="cg", **kw)
    yield "solve-amg", lambda A, b, **kw: linsolve.solve(A, b, method="amg-cg", **kw)


ENTRY = dict(_entry_points())

BAD_CASES = [
    # (id, A, b, kwargs, exception type, words that must appear in the message)
    ("non-square", sp.random(5, 4, density=0.5, format="csr"), np.ones(5), {}, ValueError, ["A", "square"]),
    ("b-wrong-length", A_GOOD, np.ones(N + 1), {}, ValueError, ["b", "length"]),
    ("b-2d-wrong", A_GOOD, np.ones((N, 2)), {}, ValueError, ["b", "shape"]),
    ("nan-in-A", sp.csr_matrix(np.diag([1.0, np.nan, 2.0])), np.ones(3), {}, ValueError, ["A", "NaN"]),
    ("inf-in-b", A_GOOD, np.r_[np.ones(N - 1), np.inf], {}, ValueError, ["b", "NaN or Inf"]),
    ("complex-A", A_GOOD.astype(complex), B_GOOD, {}, TypeError, ["A", "complex"]),
    ("complex-b", A_GOOD, B_GOOD.astype(complex), {}, TypeError, ["b", "complex"]),
    ("empty", sp.csr_matrix((0, 0)), np.ones(0), {}, ValueError, ["A", "empty"]),
    ("rtol-negative", A_GOOD, B_GOOD, {"rtol": -1.0}, ValueError, ["rtol"]),
    ("atol-nan", A_GOOD, B_GOOD, {"atol": float("nan")}, ValueError, ["atol"]),
    ("atol-string", A_GOOD, B_GOOD, {"atol": "0"}, TypeError, ["atol"]),
    ("maxiter-zero", A_GOOD, B_GOOD, {"maxiter": 0}, ValueError, ["maxiter"]),
    ("maxiter-negative", A_GOOD, B_GOOD, {"maxiter": -3}, ValueError, ["maxiter"]),
    ("maxiter-float", A_GOOD, B_GOOD, {"maxiter": 2.5}, TypeError, ["maxiter"]),
    ("x0-wrong-length", A_GOOD, B_GOOD, {"x0": np.ones(3)}, ValueError, ["x0"]),
    ("callback-not-callable", A_GOOD, B_GOOD, {"callback": 3}, TypeError, ["callback"]),
    ("object-b", A_GOOD, np.array([object()] * N), {}, TypeError, ["b"]),
    ("A-3d-array", np.ones((2, 2, 2)), np.ones(2), {}, ValueError, ["A", "2-D"]),
]


# CG takes complex Hermitian systems (as SciPy's cg does); the other methods refuse them.
ONLY_FOR = {"complex-A": {"solve-amg"}, "complex-b": {"solve-amg"}}
PAIRS = [(entry, case) for case in BAD_CASES for entry in sorted(ENTRY) if entry in ONLY_FOR.get(case[0], {entry})]


@pytest.mark.parametrize("entry,case", PAIRS, ids=[f"{c[0]}-{e}" for e, c in PAIRS])
def test_bad_input_raises_clear_error(entry, case):
    name, A, b, kwargs, exc, words = case
    with pytest.raises(exc) as err:
        ENTRY[entry](A, b, **kwargs)
    message = str(err.value)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


M_CASES = [
    ("M-wrong-shape", sla.aslinearoperator(sp.identity(N + 1)), ValueError, ["M", "shape"]),
    ("M-plain-callable", lambda r: r, TypeError, ["M", "LinearOperator"]),
    ("M-string", "jacobi", TypeError, ["M"]),
]


@pytest.mark.parametrize("case", M_CASES, ids=[c[0] for c in M_CASES])
def test_bad_preconditioner(case):
    _, M, exc, words = case
    for call in (lambda: linsolve.cg(A_GOOD, B_GOOD, M=M), lambda: linsolve.solve(A_GOOD, B_GOOD, method="cg", M=M)):
        with pytest.raises(exc) as err:
            call()
        for word in words:
            assert word in str(err.value)


def test_column_vector_b_accepted_like_scipy():
    b = np.arange(N, dtype=float).reshape(N, 1)
    x, info = linsolve.cg(A_GOOD, b, rtol=1e-10)
    x_ref, _ = sla.cg(A_GOOD, b, rtol=1e-10)
    assert info == 0 and x.shape == (N,)
    np.testing.assert_allclose(x, x_ref, rtol=1e-8)


def test_integer_arrays_converted_not_rejected():
    A_int = (A_GOOD * 1).astype(np.int64)
    b_int = np.arange(N, dtype=np.int32)
    x, info = linsolve.cg(A_int, b_int, rtol=1e-10)
    assert info == 0 and x.dtype == np.float64
    assert np.linalg.norm(b_int - A_GOOD @ x) <= 1e-10 * np.linalg.norm(b_int)


def test_dense_and_linear_operator_inputs_work():
    dense = A_GOOD.toarray()
    x1, _ = linsolve.cg(dense, B_GOOD, rtol=1e-10)
    x2, _ = linsolve.cg(sla.aslinearoperator(A_GOOD), B_GOOD, rtol=1e-10)
    np.testing.assert_allclose(x1, x2, rtol=1e-9)


def test_unknown_method_and_bad_method_type():
    with pytest.raises(ValueError, match="unknown method"):
        linsolve.solve(A_GOOD, B_GOOD, method="nope")
    with pytest.raises(TypeError, match="method"):
        linsolve.solve(A_GOOD, B_GOOD, method=3)


def test_amg_rejects_user_preconditioner_and_bad_kind():
    with pytest.raises(ValueError, match="do not pass M"):
        linsolve.solve(A_GOOD, B_GOOD, method="amg-cg", M=sla.aslinearoperator(sp.identity(N)))
    with pytest.raises(ValueError, match="kind"):
        linsolve.precond.amg(A_GOOD, kind="xyz")


def test_symmetry_screen_finds_small_asymmetries_anywhere_and_passes_rounding():
    """require_symmetric's one-pass probe (no transpose) stands in for the exact check: it must see an
    asymmetry at the CG tolerance wherever it sits, and must not refuse float32 rounding of an assembly."""
    from linsolve._validation import CG_SYMMETRY_RTOL
    from linsolve.structure import require_symmetric

    rng = np.random.default_rng(3)
    base = linsolve.problems.poisson((12, 12, 12)).tocsr()
    base.data *= rng.lognormal(0.0, 2.0, base.nnz)
    base = ((base + base.T) * 0.5).tocsr()
    base.sort_indices()
    scale = np.abs(base.data).max()
    require_symmetric(base, "A", CG_SYMMETRY_RTOL)
    rounded = base.copy()
    rounded.data = (rounded.data.astype(np.float32) * (1 + 1e-7 * rng.standard_normal(rounded.nnz))).astype(
        np.float64)  # each a_ij and a_ji rounded on its own
    require_symmetric(rounded, "A", CG_SYMMETRY_RTOL)
    for _ in range(200):
        k = int(rng.integers(base.nnz))
        skewed = base.copy()
        skewed.data[k] += 3 * CG_SYMMETRY_RTOL * scale * rng.choice([-1.0, 1.0])
        row = int(np.searchsorted(skewed.indptr, k, side="right") - 1)
        if skewed.indices[k] == row:
            continue  # the diagonal cannot be asymmetric
        with pytest.raises(ValueError, match="not symmetric"):
            require_symmetric(skewed, "A", CG_SYMMETRY_RTOL)
