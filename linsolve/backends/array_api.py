"""The small array interface the Krylov loops are written against: NumPy and torch.

A Krylov loop needs very little from its arrays: inner products, norms, scaled
additions in place, copies, and a way to bring scalars back to the host. This
module names exactly those operations, once for NumPy (:data:`NUMPY`) and once
for torch (:data:`TORCH`, created on first use so ``import linsolve`` never
imports torch).

Scalars returned by :meth:`dot` and :meth:`norm` are *device scalars*: Python
or NumPy floats for NumPy, 0-d tensors for torch (still on the GPU). Nothing
synchronises with the host except :meth:`to_float` and :meth:`to_host`, which
a loop calls only where it must decide something (the convergence check).
:meth:`to_host` moves a whole list of device scalars in one transfer, which is
what lets the torch loops check convergence every *k* iterations with a single
synchronisation.

The NumPy operations are the very expressions ``scipy.sparse.linalg.cg`` uses
(``x += alpha * p``; ``np.dot``; ``np.linalg.norm``), so a loop written against
:data:`NUMPY` reproduces SciPy's iterates bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["ArrayOps", "NumpyOps", "NumpyComplexOps", "TorchOps", "NUMPY", "NUMPY_COMPLEX", "torch_ops",
           "ops_for"]


class ArrayOps:
    """Interface (documentation only): what a loop may call on its vectors.

    ``dot(x, y)``, ``norm(x)`` → device scalar; ``add_scaled(y, a, x)``:
    ``y += a * x`` in place; ``sub_scaled(y, a, x)``: ``y -= a * x`` in place;
    ``scale_add(p, beta, z)``: ``p = beta * p + z`` in place; ``copy(x)``;
    ``zeros_like(x)``; ``to_float(s)`` → Python float (synchronises);
    ``to_host(list_of_scalars)`` → list of Python floats (one synchronisation);
    ``isfinite(s)`` on a host float; ``any_nonzero(x)`` → bool;
    ``select(cond, a, b)`` on device scalars; ``all_finite(x)`` → device scalar
    that is true/1.0 when every entry is finite; ``true_residual(matvec, b, x)``
    → ``(b - A x, ||b - A x|| as a host float)``, the norm as exact as the
    backend can make it (NumPy: single-precision data in double).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.array_api import NUMPY
    >>> x = np.ones(3); y = np.zeros(3)
    >>> NUMPY.add_scaled(y, 2.0, x); NUMPY.to_float(NUMPY.dot(x, y))
    6.0
    """

    name = "abstract"


class NumpyOps(ArrayOps):
    """NumPy implementation; device scalars are NumPy floats.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.array_api import NUMPY
    >>> NUMPY.to_host([NUMPY.norm(np.array([3.0, 4.0]))])
    [5.0]
    """

    name = "numpy"
    dot = staticmethod(np.dot)
    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def norm(x):
        return np.linalg.norm(x)

    @staticmethod
    def add_scaled(y, a, x):
        y += a * x

    @staticmethod
    def sub_scaled(y, a, x):
        y -= a * x

    @staticmethod
    def scale_add(p, beta, z):
        p *= beta
        p += z

    @staticmethod
    def copy(x):
        return x.copy()

    @staticmethod
    def to_float(s) -> float:
        return float(s)

    @staticmethod
    def to_host(scalars) -> list:
        return [float(s) for s in scalars]

    @staticmethod
    def any_nonzero(x) -> bool:
        return bool(x.any())

    @staticmethod
    def select(cond, a, b):
        return a if cond else b

    @staticmethod
    def all_finite(x):
        return bool(np.isfinite(x).all())

    isfinite = staticmethod(math.isfinite)

    @staticmethod
    def true_residual(matvec, b, x):
        # In single precision the rounding of b - A x itself (about eps * ||A|| ||x||) can hide a residual
        # far above the tolerance, or invent one: the convergence verdict is taken on the residual of the
        # single-precision data evaluated in double, the restart continues in the working precision.
        if x.dtype in (np.float32, np.complex64):
            wide = np.complex128 if x.dtype == np.complex64 else np.float64
            r = b.astype(wide) - np.asarray(matvec(x.astype(wide)))
            return r.astype(x.dtype), float(np.linalg.norm(r))
        r = b - matvec(x)
        return r, float(np.linalg.norm(r))


class NumpyComplexOps(NumpyOps):
    """NumPy on complex vectors: ``dot`` conjugates its first argument (``np.vdot``, as SciPy's ``cg``).

    Device scalars stay complex, so the iteration's arithmetic is SciPy's;
    :meth:`to_float` returns the real part (what a loop compares: for a
    Hermitian ``A`` and ``M``, ``pᴴAp`` and ``rᴴMr`` are real up to rounding).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.array_api import NUMPY_COMPLEX
    >>> v = np.array([1j, 2.0])
    >>> NUMPY_COMPLEX.dot(v, v), NUMPY_COMPLEX.to_float(NUMPY_COMPLEX.dot(v, v))
    (np.complex128(5+0j), 5.0)
    """

    name = "numpy-complex"
    dot = staticmethod(np.vdot)

    @staticmethod
    def to_float(s) -> float:
        return float(np.real(s))

    @staticmethod
    def to_host(scalars) -> list:
        return [float(np.real(s)) for s in scalars]


class TorchOps(ArrayOps):
    """torch implementation; device scalars are 0-d tensors that stay on the device.

    ``add_scaled`` and friends take the scalar as a 0-d tensor and use
    ``addcmul_`` so no value ever has to visit the host.

    Examples
    --------
    >>> import torch
    >>> from linsolve.backends.array_api import torch_ops
    >>> T = torch_ops()
    >>> x = torch.ones(3, dtype=torch.float64); y = torch.zeros(3, dtype=torch.float64)
    >>> T.add_scaled(y, T.dot(x, x), x); T.to_host([T.norm(y)])[0] == 27 ** 0.5
    True
    """

    name = "torch"

    def __init__(self):
        import torch

        self._torch = torch
        self.dot = torch.dot
        self.zeros_like = torch.zeros_like
        self._norm = torch.linalg.vector_norm

    def norm(self, x):
        return self._norm(x)

    @staticmethod
    def add_scaled(y, a, x):
        if isinstance(a, (int, float)):
            y.add_(x, alpha=a)
        else:
            y.addcmul_(x, a)

    @staticmethod
    def sub_scaled(y, a, x):
        if isinstance(a, (int, float)):
            y.sub_(x, alpha=a)
        else:
            y.addcmul_(x, a, value=-1)

    @staticmethod
    def scale_add(p, beta, z):
        p.mul_(beta).add_(z)

    @staticmethod
    def copy(x):
        return x.clone()

    @staticmethod
    def to_float(s) -> float:
        return float(s)

    def to_host(self, scalars) -> list:
        if not scalars:
            return []
        # One device->host transfer for the whole batch.
        return self._torch.stack([s.reshape(()) for s in scalars]).cpu().tolist()

    @staticmethod
    def any_nonzero(x) -> bool:
        return bool(x.any())

    def select(self, cond, a, b):
        return self._torch.where(cond, a, b)

    def all_finite(self, x):
        # A device scalar (1.0 / 0.0) so that it can travel with the batch of scalars.
        return self._torch.isfinite(x).all().to(x.dtype)

    def true_residual(self, matvec, b, x):
        r = b - matvec(x)
        return r, float(self._norm(r))

    isfinite = staticmethod(math.isfinite)


NUMPY = NumpyOps()
NUMPY_COMPLEX = NumpyComplexOps()
_TORCH = None


def torch_ops() -> TorchOps:
    """The shared :class:`TorchOps` instance (imports torch on first call).

    Examples
    --------
    >>> from linsolve.backends.array_api import torch_ops
    >>> torch_ops().name
    'torch'
    """
    global _TORCH
    if _TORCH is None:
        _TORCH = TorchOps()
    return _TORCH


def ops_for(x) -> ArrayOps:
    """:data:`NUMPY` for NumPy arrays, :func:`torch_ops` for tensors.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.array_api import ops_for
    >>> ops_for(np.zeros(2)).name
    'numpy'
    """
    if type(x).__module__.startswith("torch"):
        return torch_ops()
    return NUMPY_COMPLEX if np.iscomplexobj(x) else NUMPY
