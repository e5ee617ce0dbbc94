"""PyAMG hierarchies as SPD preconditioners (one V-cycle per application)."""
from __future__ import annotations

import time

import numpy as np
import pyamg
from scipy.sparse.linalg import LinearOperator

from .._validation import CG_SYMMETRY_RTOL, as_sparse_matrix
from ..structure import require_symmetric

__all__ = ["amg", "build_amg", "AMGPreconditioner"]

_KINDS = {
    "sa": pyamg.smoothed_aggregation_solver,
    "rs": pyamg.ruge_stuben_solver,
}


class AMGPreconditioner(LinearOperator):
    """One V-cycle of a PyAMG multilevel hierarchy; ``hierarchy`` and ``setup_time_s`` exposed.

    With PyAMG's default symmetric smoothers the V-cycle is symmetric positive
    definite, so it can precondition CG. ``nullspace_labels`` marks the closed
    regions of a singular A (rows that all sum to zero: a periodic or
    all-Neumann domain, a sealed pocket; ``-1`` elsewhere, None when A has
    none): the PCG driver (:func:`linsolve.krylov.pcg.pcg_with`) then solves
    the consistent part and keeps the iterates out of the null space, where a
    ``b`` off by rounding would otherwise drive them to overflow.
    """

    zero_rows = None

    def __init__(self, hierarchy, kind: str, setup_time_s: float, cycle: str = "V", nullspace_labels=None):
        self.nullspace_labels = nullspace_labels
        self.hierarchy = hierarchy
        self.kind = kind
        self.setup_time_s = setup_time_s
        self._op = hierarchy.aspreconditioner(cycle=cycle)
        super().__init__(dtype=np.dtype(hierarchy.levels[0].A.dtype), shape=hierarchy.levels[0].A.shape)

    def _matvec(self, x):
        return self._op.matvec(np.ravel(x))

    def _rmatvec(self, x):
        return self._matvec(x)

    def __repr__(self) -> str:
        return f"<AMGPreconditioner kind={self.kind!r} levels={len(self.hierarchy.levels)} n={self.shape[0]}>"


_FIND = object()


def amg(A, kind="sa", *, nullspace_labels=_FIND, **options) -> AMGPreconditioner:
    """Build a PyAMG hierarchy for ``A`` and return it as a V-cycle LinearOperator.

    Parameters
    ----------
    A : sparse matrix, shape (n, n), symmetric positive definite.
    kind : {"sa", "rs"}
        Smoothed aggregation or classical Ruge-Stuben.
    nullspace_labels : int array or None, optional
        The closed regions of A (:func:`linsolve.structure.closed_region_labels`), when the caller has them;
        found here otherwise.
    **options
        Passed to ``pyamg.smoothed_aggregation_solver`` / ``ruge_stuben_solver``
        (e.g. ``strength``, ``max_coarse``); ``cycle`` selects the cycle type.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32, 32))
    >>> M = linsolve.precond.amg(A, kind="sa")
    >>> x, info = linsolve.cg(A, np.ones(A.shape[0]), rtol=1e-8, M=M)
    >>> info
    0
    """
    mat = as_sparse_matrix(A, "A")
    require_symmetric(mat, "A", CG_SYMMETRY_RTOL)
    return build_amg(mat, kind, nullspace_labels=nullspace_labels, **options)


def build_amg(A, kind="sa", *, nullspace_labels=_FIND, **options) -> AMGPreconditioner:
    """:func:`amg` without its symmetry check: for callers that checked A or read a grid off it already
    (``auto_cg`` runs Ruge-Stuben on what its grid path refused, as SciPy's cg would take it)."""
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    mat = as_sparse_matrix(A, "A").astype(np.float64)
    cycle = options.pop("cycle", "V")
    t0 = time.perf_counter()
    try:
        hierarchy = _KINDS[kind](mat, **options)
    except TypeError as exc:
        raise TypeError(f"invalid PyAMG option for kind={kind!r}: {exc}") from None
    from ..structure import closed_region_labels

    labels = closed_region_labels(mat) if nullspace_labels is _FIND else nullspace_labels
    return AMGPreconditioner(hierarchy, kind, time.perf_counter() - t0, cycle=cycle, nullspace_labels=labels)
