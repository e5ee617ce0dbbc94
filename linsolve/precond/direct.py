"""An exact sparse factor ``A^-1`` (SuperLU in symmetric mode) for a matrix solved again and again.

A 2D pressure or diffusion matrix that stays fixed over a simulation (static
obstacles, a constant time step) is solved hundreds of times with new
right-hand sides. A fill-reducing sparse factorisation costs about 45 of its
own back-solves once (SuperLU with the minimum-degree ordering of ``A + A^T``,
512^2: 1.0 s), and each back-solve then costs about 25-30 SpMVs (24 ms),
against 40-60 SpMV-equivalents for a multigrid PCG solve to 1e-6. In 3D the
fill grows much faster (``n^{4/3}`` against ``n log n``), so the multigrid
stays the better choice there.

The factor is of ``sign * A`` without pivoting (``diag_pivot_thresh = 0``,
symmetric mode): a symmetric definite matrix needs none, and a pivot that is
not positive shows that ``A`` is not definite. Wrapped as a LinearOperator it is
a preconditioner like any other: PCG converges in one iteration and the Krylov
driver still checks the true residual.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from .._validation import as_sparse_matrix, definite_sign
from ._symmetric import SymmetricOperator
from ..structure import check_symmetric

__all__ = ["sparse_factor", "SparseFactorPreconditioner", "MAX_FACTOR_CELLS"]

#: Largest matrix (rows) :func:`sparse_factor` factors unless told otherwise: fill-in of a 2D grid matrix with
#: SuperLU's minimum-degree ordering, L and U kept apart, is 50-75 numbers a row (256^2 to 1024^2), so 300,000
#: rows hold about 20 million (240 MB with their indices).
MAX_FACTOR_CELLS = 300_000


class SparseFactorPreconditioner(SymmetricOperator):
    """``A^-1`` through a sparse LU factor of ``sign * A`` (symmetric mode, no pivoting); definite of A's sign.

    Attributes
    ----------
    sign : int
        ``+1`` for a positive definite A, ``-1`` for a negative definite one.
    fill : int
        Non-zero entries of the factors L and U together.
    setup_time_s : float
        Seconds spent ordering and factoring.
    """

    def __init__(self, lu, sign: int, n: int, setup_time_s: float):
        self._lu = lu
        self.sign = int(sign)
        self.fill = int(lu.L.nnz + lu.U.nnz)
        self.setup_time_s = float(setup_time_s)
        super().__init__(dtype=np.dtype(np.float64), shape=(n, n))

    @property
    def nbytes(self) -> int:
        """Memory held by the factors (values and indices)."""
        return 12 * self.fill

    def _apply(self, x):
        x = np.asarray(x)
        z = self._lu.solve(np.ascontiguousarray(x.ravel(), dtype=np.float64))
        if self.sign < 0:
            z = -z
        # a float32 solve stays float32 (CG allocates from r's dtype)
        return z.astype(x.dtype if x.dtype == np.float32 else np.float64, copy=False).reshape(x.shape)

    def __repr__(self) -> str:
        return f"<SparseFactorPreconditioner n={self.shape[0]} fill={self.fill} sign={self.sign:+d}>"


def sparse_factor(A, *, max_rows=MAX_FACTOR_CELLS) -> SparseFactorPreconditioner:
    """Exact ``A^-1`` of a symmetric definite sparse matrix, as a LinearOperator (factored once).

    Pays when the same matrix is solved many times (see the module notes); the
    factor of a 3D grid matrix fills in far more than the multigrid costs.

    Parameters
    ----------
    A : sparse matrix or ndarray, shape (n, n)
        Real, symmetric, positive or negative definite.
    max_rows : int or None
        Refuse a larger matrix (memory grows faster than ``n``); ``None``: no limit.

    Raises
    ------
    ValueError
        A not square, not symmetric, with NaN/Inf, larger than ``max_rows``, a
        diagonal of mixed sign or zero, or not definite (singular: a closed
        fluid region, a pure-Neumann problem).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond import sparse_factor
    >>> A = linsolve.problems.poisson((64, 64))
    >>> M = sparse_factor(A)
    >>> b = np.ones(A.shape[0])
    >>> bool(np.linalg.norm(b - A @ (M @ b)) < 1e-10 * np.linalg.norm(b))
    True
    >>> x, info = linsolve.cg(A, b, rtol=1e-10, M=M)           # one PCG iteration
    >>> info
    0
    """
    t0 = time.perf_counter()
    mat = as_sparse_matrix(A, "A")  # square, real, finite
    n = mat.shape[0]
    if max_rows is not None and n > int(max_rows):
        raise ValueError(f"A has {n:,} rows, more than max_rows={int(max_rows):,}: its sparse factor would take "
                         f"too much memory; use a multigrid preconditioner (or pass max_rows=None)")
    check_symmetric(mat, "A")
    diag = mat.diagonal().astype(np.float64)
    sign = definite_sign(diag)
    if not sign:
        raise ValueError("A's diagonal is zero or of mixed sign: A is not definite, so it has no symmetric factor")
    signed = sp.csc_matrix(mat, dtype=np.float64, copy=True)
    if sign < 0:
        signed.data = -signed.data
    try:
        lu = sla.splu(signed, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                      options=dict(SymmetricMode=True))
    except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
        raise ValueError(f"A is singular: its sparse factorisation failed ({exc}); a closed fluid region or a "
                         f"pure-Neumann problem needs its null space handled (method='auto' does)") from None
    pivots = lu.U.diagonal()
    # a singular matrix (a closed region) factors with a pivot of rounding size, of either sign
    if np.min(np.abs(pivots)) <= 100 * n * np.finfo(np.float64).eps * np.max(np.abs(pivots)):
        raise ValueError("A is singular or nearly so (a pivot of rounding size): no sparse factor of it is usable; "
                         "a closed fluid region or a pure-Neumann problem needs its null space handled "
                         "(method='auto' does)")
    if not np.all(pivots > 0):
        raise ValueError(f"A is not {'positive' if sign > 0 else 'negative'} definite: a pivot of its symmetric "
                         f"factorisation is {float(pivots.min()):.3e}")
    return SparseFactorPreconditioner(lu, sign, n, time.perf_counter() - t0)
