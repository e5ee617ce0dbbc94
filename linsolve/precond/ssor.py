"""The SSOR preconditioner as a symmetric ``LinearOperator`` usable in CG."""
from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._validation import as_sparse_matrix, check_omega, check_positive_diagonal
from ..structure import require_symmetric

__all__ = ["ssor", "SSORPreconditioner"]


class SSORPreconditioner(LinearOperator):
    """``z = M^{-1} r`` with the SSOR matrix ``M = (D + w L) D^{-1} (D + w U) / (w (2 - w))``.

    Built by :func:`ssor`; holds the CSR matrix (``matrix``), the diagonal
    positions and ``omega``, so applying it converts nothing.
    """

    def __init__(self, matrix, omega: float, dpos: np.ndarray):
        self.matrix = matrix
        self.omega = float(omega)
        self._dpos = dpos
        super().__init__(dtype=np.dtype(matrix.dtype), shape=matrix.shape)

    def _matvec(self, r):
        from ..kernels.sor import ssor_apply

        r = np.ravel(r)
        if r.dtype != self.dtype:
            r = r.astype(np.result_type(r.dtype, self.dtype), copy=False)
        z = np.empty(r.shape[0], dtype=r.dtype)
        m = self.matrix
        ssor_apply(m.indptr, m.indices, m.data, self._dpos, self.omega, r, z)
        return z

    def matvec(self, x):
        # Fast path for the 1-D vectors CG passes (skips LinearOperator's
        # generic shape handling, which costs as much as an n = 100 solve step).
        if isinstance(x, np.ndarray) and x.ndim == 1 and x.shape[0] == self.shape[0]:
            return self._matvec(x)
        return super().matvec(x)

    def _rmatvec(self, r):
        return self._matvec(r)

    def _matmat(self, R):
        return np.column_stack([self._matvec(R[:, k]) for k in range(R.shape[1])])

    def _adjoint(self):
        return self

    def __repr__(self) -> str:
        return f"<SSORPreconditioner omega={self.omega} n={self.shape[0]}>"


def ssor(A, omega=1.0) -> SSORPreconditioner:
    """SSOR preconditioner of a symmetric matrix with a positive diagonal.

    Applies ``M^{-1} = (2 - w)/w * (D/w + U)^{-1} D (D/w + L)^{-1}``, the
    inverse of the classical SSOR matrix
    ``M = (D + w L) D^{-1} (D + w U) / (w (2 - w))`` (``A = L + D + U``,
    ``w = omega``); ``M^{-1} r`` equals one symmetric SOR sweep (forward then
    backward) started from zero. It is symmetric, and positive definite for
    every ``omega`` in (0, 2) when ``A`` is SPD, so CG can use it. One
    application costs one pass over the nonzeros (a forward triangular solve
    on the lower part, a backward one on the upper part), in numba.

    Parameters
    ----------
    A : sparse matrix or ndarray, shape (n, n)
        Symmetric with a positive diagonal; converted to CSR once, here.
    omega : float
        In (0, 2); 1 gives symmetric Gauss-Seidel.

    Returns
    -------
    SSORPreconditioner
        A ``scipy.sparse.linalg.LinearOperator``.

    Raises
    ------
    ValueError
        ``omega`` outside (0, 2), a zero or negative diagonal entry (naming
        the first bad row), or a non-symmetric ``A``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> M = linsolve.precond.ssor(A, omega=1.6)
    >>> b = np.ones(A.shape[0])
    >>> x, info = linsolve.cg(A, b, rtol=1e-8, M=M)
    >>> info, bool(np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b))
    (0, True)
    """
    from ..kernels.sor import diagonal_positions

    omega = check_omega(omega)
    mat = as_sparse_matrix(A, "A")
    check_positive_diagonal(mat)
    require_symmetric(mat)
    dpos = diagonal_positions(mat.indptr, mat.indices)
    return SSORPreconditioner(mat, omega, dpos)
