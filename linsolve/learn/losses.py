"""Unsupervised losses: the network output is only ever used as a search direction.

For a right-hand side ``b`` and network output ``q``, the best multiple of
``q`` in the A-norm is ``x̂ = q (qᵀb)/(qᵀAq)``; the DCDM loss is the squared
residual of that one-step solution, ``‖b − A x̂‖²``, averaged over the batch.
It needs no solutions of ``A x = b`` (no labels).
"""
from __future__ import annotations

import numpy as np

from .._optional import require_torch

torch = require_torch("training losses (linsolve.learn.losses)")

__all__ = ["sparse_to_torch", "dcdm_loss", "apply_matrix"]


def sparse_to_torch(A, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """A SciPy sparse matrix as a torch sparse CSR tensor (for ``A @ Q`` in the loss).

    Examples
    --------
    >>> import linsolve, torch
    >>> from linsolve.learn.losses import sparse_to_torch
    >>> T = sparse_to_torch(linsolve.problems.poisson((4, 4)))
    >>> T.layout == torch.sparse_csr, tuple(T.shape)
    (True, (16, 16))
    """
    import scipy.sparse as sp

    csr = sp.csr_matrix(A)
    csr.sort_indices()
    # Our CSR is canonical (sorted, no duplicates), so torch's invariant checks are safely skipped;
    # say so explicitly instead of letting torch warn about it on every matrix.
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(torch.from_numpy(csr.indptr.astype(np.int64)),
                                       torch.from_numpy(csr.indices.astype(np.int64)),
                                       torch.from_numpy(csr.data).to(dtype), size=csr.shape, device=device,
                                       check_invariants=False)


def apply_matrix(A_t: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``A q`` for each row ``q`` of ``Q`` (shape ``(batch, n)``)."""
    return (A_t @ Q.T).T


def dcdm_loss(q: torch.Tensor, b: torch.Tensor, A_t: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Mean over the batch of ``‖b − A x̂‖²`` with ``x̂ = q (qᵀb)/(qᵀAq)``.

    Parameters
    ----------
    q, b : tensor, shape (batch, n) or (batch, 1, *grid)
        Network outputs and the right-hand sides that were fed to it.
    A_t : torch sparse tensor, shape (n, n)

    Examples
    --------
    >>> import torch, linsolve
    >>> from linsolve.learn.losses import dcdm_loss, sparse_to_torch
    >>> A = linsolve.problems.poisson((4, 4)); At = sparse_to_torch(A)
    >>> b = torch.randn(2, 16)
    >>> x = torch.linalg.solve(torch.tensor(A.toarray(), dtype=torch.float32), b.T).T
    >>> float(dcdm_loss(x, b, At)) < 1e-8   # the exact solution's direction is perfect
    True
    """
    batch = q.shape[0]
    q = q.reshape(batch, -1)
    b = b.reshape(batch, -1)
    Aq = apply_matrix(A_t, q)
    qAq = (q * Aq).sum(dim=1, keepdim=True)
    qb = (q * b).sum(dim=1, keepdim=True)
    # A q ≠ 0 for q ≠ 0 (A SPD); eps only guards an all-zero output at initialisation.
    alpha = qb / (qAq + eps)
    r = b - alpha * Aq
    return (r * r).sum(dim=1).mean()
