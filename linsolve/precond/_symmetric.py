"""The LinearOperator base of preconditioners that equal their adjoint (SPD, or definite of one sign)."""
from __future__ import annotations

from scipy.sparse.linalg import LinearOperator

__all__ = ["SymmetricOperator"]


class SymmetricOperator(LinearOperator):
    """A LinearOperator that is its own adjoint: a subclass defines ``_apply(x)`` once for ``M x`` and ``M^H x``."""

    def _apply(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def _matvec(self, x):
        return self._apply(x)

    def _rmatvec(self, x):
        return self._apply(x)

    def _adjoint(self):
        return self
