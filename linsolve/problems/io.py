"""Reading user matrices from disk (Matrix Market, SciPy ``.npz``)."""
from __future__ import annotations

import os

import scipy.io
import scipy.sparse as sp

from .._io import MissingFileError
from .._validation import as_sparse_matrix

__all__ = ["load_matrix"]


def load_matrix(path) -> sp.csr_matrix:
    """Load a square real matrix from ``.mtx``, ``.mtx.gz`` or ``.npz`` as CSR float64.

    ``.npz`` files are read with ``scipy.sparse.load_npz`` (never with pickle).

    Examples
    --------
    >>> import linsolve, scipy.io, tempfile, os
    >>> A = linsolve.problems.poisson((4, 4))
    >>> path = os.path.join(tempfile.mkdtemp(), "A.mtx")
    >>> scipy.io.mmwrite(path, A)
    >>> (linsolve.problems.load_matrix(path) != A).nnz
    0
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingFileError(f"matrix file not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"matrix path is a directory, not a file: {path}")
    lower = path.lower()
    try:
        if lower.endswith((".mtx", ".mtx.gz", ".mm")):
            M = scipy.io.mmread(path)
        elif lower.endswith(".npz"):
            M = sp.load_npz(path)
        else:
            raise ValueError(f"unsupported matrix file type for {path!r}: use .mtx, .mtx.gz or .npz")
    except ValueError as exc:
        if "unsupported matrix file" in str(exc):
            raise
        raise ValueError(f"cannot read matrix from {path!r}: {exc}") from None
    except Exception as exc:
        raise ValueError(f"cannot read matrix from {path!r}: {exc}") from None
    try:
        return as_sparse_matrix(M, f"matrix in {os.path.basename(path)}").astype("float64")
    except MemoryError:
        # a header may declare any size: a CSR row pointer of 10^11 rows alone needs 745 GiB
        raise ValueError(f"cannot read matrix from {path!r}: its declared shape {tuple(M.shape)} does not fit "
                         f"in memory") from None
