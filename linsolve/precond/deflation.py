"""Deflation by piecewise-constant aggregates of a grid: a coarse space for conjugate-direction methods.

Let ``Z`` be the ``n x m`` matrix whose column ``j`` is 1 on the fluid cells of
block ``j`` (``block`` cells per axis) and 0 elsewhere, and ``E = Zᵀ A Z`` the
Galerkin coarse matrix (SPD when A is). Deflation (Nicolaides 1987; Saad, Yeung,
Erhel, Guyomarc'h 2000) then

* starts from ``x0 + Z E⁻¹ Zᵀ r0``, so the residual is orthogonal to ``range(Z)``;
* makes every search direction A-orthogonal to ``range(Z)``:
  ``q ← q − Z E⁻¹ (A Z)ᵀ q``. The residual then stays orthogonal to ``range(Z)``
  (``Zᵀ A q = 0``), and each step minimises the A-norm error over the direction
  *and* the whole coarse space.

What this buys a learned direction generator (DCDM): the network's receptive
field is a fixed number of cells, so it cannot represent the global, smooth
error modes of large domains with Neumann walls; the aggregates capture those
exactly, at the cost of one sparse product with ``(AZ)ᵀ`` and one sparse
triangular solve with the factor of ``E`` per iteration. With a fixed block
size (in cells) the two together cover all scales at every grid size.

The coarse matrix is factorised once with SuperLU. Large coarse grids are
ordered by geometric nested dissection first (the aggregates form a grid, so
separators are planes): at 32³ aggregates that factorises 3× faster than
SuperLU's minimum-degree ordering, with the same fill. The ``"auto"`` block
size keeps ``m`` at most :data:`AUTO_MAX_COARSE` (factor about 1 s and 200 MB).
"""
from __future__ import annotations

import numbers
import time

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .._validation import as_sparse_matrix, check_grid_shape

__all__ = ["AggregationDeflation", "DeviceDeflation", "aggregation_deflation", "AUTO_BLOCK", "AUTO_MAX_COARSE"]

#: Block size (cells per axis) of ``block="auto"``, doubled until the coarse space is small enough.
AUTO_BLOCK = 4
#: Largest coarse dimension ``block="auto"`` accepts (3D: SuperLU factor ~1 s, ~200 MB at 32³ aggregates).
AUTO_MAX_COARSE = 40000
#: Coarse dimension from which the nested-dissection ordering is used (below, minimum degree is as fast).
_ND_MIN_COARSE = 2000
_ND_LEAF = 4  # boxes of at most _ND_LEAF cells per axis are ordered naturally


class AggregationDeflation:
    """The coarse space of piecewise-constant aggregates, with ``E = ZᵀAZ`` factorised.

    Build it with :func:`aggregation_deflation`.

    Attributes
    ----------
    block : int
        Cells per axis of an aggregate.
    n_coarse : int
        Number of aggregates ``m`` (blocks containing at least one fluid cell).
    labels : int ndarray, shape (n,)
        Aggregate of each cell, ``-1`` for cells outside the coarse space.
    setup_time_s : float
    """

    def __init__(self, A, grid_shape, block: int, mask=None):
        t0 = time.perf_counter()
        A = as_sparse_matrix(A)
        shape = check_grid_shape(grid_shape, A.shape[0])
        n = A.shape[0]
        inside = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool).ravel()
        if inside.size != n:
            raise ValueError(f"deflation mask has {inside.size} cells but A has {n} rows")
        idx = np.indices(shape).reshape(len(shape), -1)
        coarse_shape = tuple(-(-s // block) for s in shape)
        block_id = np.ravel_multi_index(tuple(i // block for i in idx), coarse_shape)
        labels = np.full(n, -1, dtype=np.int64)
        used, labels[inside] = np.unique(block_id[inside], return_inverse=True)
        rows = np.flatnonzero(inside)
        self.block = int(block)
        self.grid_shape = shape
        self.n = n
        self.n_coarse = int(used.size)
        self.labels = labels
        self.Z = sp.csr_matrix((np.ones(rows.size), (rows, labels[rows])), shape=(n, self.n_coarse))
        AZ = (A @ self.Z).tocsr()
        self.AZt = AZ.T.tocsr()
        self.E = (self.Z.T @ AZ).tocsc()
        diag = self.E.diagonal()
        if self.n_coarse and not np.all(diag > 0):
            raise ValueError("the coarse matrix ZᵀAZ has a non-positive diagonal entry: A is not positive "
                             "definite on the aggregates (deflation needs an SPD A)")
        try:
            self._perm = None
            if self.n_coarse >= _ND_MIN_COARSE:
                # Nested dissection of the coarse grid, restricted to the aggregates in use.
                order = nested_dissection_order(coarse_shape)
                position = np.full(int(np.prod(coarse_shape)), -1, dtype=np.int64)
                position[used] = np.arange(self.n_coarse)
                perm = position[order]
                self._perm = perm[perm >= 0]
                E_perm = self.E[self._perm][:, self._perm].tocsc()
                self._lu = spla.splu(E_perm, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                                     options={"SymmetricMode": True})
            elif self.n_coarse:
                self._lu = spla.splu(self.E, permc_spec="MMD_AT_PLUS_A")
            else:
                self._lu = None
        except RuntimeError as exc:  # SuperLU: "Factor is exactly singular"
            raise ValueError(f"the coarse matrix ZᵀAZ is singular ({exc}); A is singular on the aggregates "
                             "(e.g. a pure-Neumann domain): deflation needs an SPD A") from None
        self.setup_time_s = time.perf_counter() - t0

    def coarse_solve(self, w: np.ndarray) -> np.ndarray:
        """``E⁻¹ w`` for a coarse vector ``w`` (length ``n_coarse``)."""
        if self._lu is None:
            return np.zeros(0)
        w = np.asarray(w, dtype=np.float64)
        if self._perm is None:
            return self._lu.solve(w)
        y = np.empty_like(w)
        y[self._perm] = self._lu.solve(w[self._perm])
        return y

    def correction(self, r: np.ndarray) -> np.ndarray:
        """``Z E⁻¹ Zᵀ r``: the best update from the coarse space for residual ``r`` (A-norm)."""
        return self.Z @ self.coarse_solve(self.Z.T @ r)

    def project(self, q: np.ndarray) -> np.ndarray:
        """``q − Z E⁻¹ (AZ)ᵀ q``, A-orthogonal to the coarse space (a new array)."""
        return q - self.Z @ self.coarse_solve(self.AZt @ q)

    def on_device(self, device, dtype) -> "DeviceDeflation":
        """This coarse space applied to torch vectors on ``device`` (see :class:`DeviceDeflation`)."""
        return DeviceDeflation(self, device, dtype)

    def __repr__(self) -> str:
        return (f"AggregationDeflation(grid={self.grid_shape}, block={self.block}, n_coarse={self.n_coarse}, "
                f"setup={self.setup_time_s:.3f}s)")


class DeviceDeflation:
    """An :class:`AggregationDeflation` applied to torch vectors: ``correction`` and ``project`` on a device.

    The products with ``Zᵀ`` and ``(AZ)ᵀ`` run on the device; the coarse solve
    runs on the host with the same SuperLU factor (one transfer of
    ``n_coarse`` values each way per call, which also synchronises a GPU solve).
    """

    def __init__(self, coarse: AggregationDeflation, device, dtype):
        import torch

        from ..backends.torch_kernels import CSROperator

        self.torch = torch
        self.coarse = coarse
        self.block, self.n_coarse = coarse.block, coarse.n_coarse
        self.device, self.dtype = device, dtype
        labels = torch.from_numpy(coarse.labels).to(device)
        self.inside = labels >= 0
        self.index = labels.clamp(min=0)
        self.Zt = CSROperator(coarse.Z.T.tocsr(), device=device, dtype=dtype)
        self.AZt = CSROperator(coarse.AZt, device=device, dtype=dtype)

    def _expand_solve(self, w):
        """``Z E⁻¹ w`` for a coarse vector ``w`` on the device."""
        torch = self.torch
        if self.n_coarse == 0:  # every cell decoupled (a diagonal matrix): nothing to deflate
            return torch.zeros(self.inside.shape[0], dtype=self.dtype, device=self.device)
        y = self.coarse.coarse_solve(w.to("cpu", torch.float64).numpy())
        y = torch.from_numpy(y).to(self.device, self.dtype)
        return torch.where(self.inside, y[self.index], torch.zeros((), dtype=self.dtype, device=self.device))

    def correction(self, r):
        """``Z E⁻¹ Zᵀ r``."""
        return self._expand_solve(self.Zt(r))

    def project(self, q):
        """``q − Z E⁻¹ (AZ)ᵀ q``."""
        return q - self._expand_solve(self.AZt(q))


def nested_dissection_order(shape, leaf: int = _ND_LEAF) -> np.ndarray:
    """C-order indices of a ``shape`` grid in geometric nested-dissection order.

    The box is split at the middle plane of its longest axis; both halves are
    ordered recursively, then the plane (the separator). Boxes with at most
    ``leaf`` cells per axis keep their natural order.

    Examples
    --------
    >>> from linsolve.precond.deflation import nested_dissection_order
    >>> nested_dissection_order((5,), leaf=1).tolist()   # halves [0, 1] and [3, 4] first, separator 2 last
    [0, 1, 3, 4, 2]
    """
    index = np.arange(int(np.prod(shape))).reshape(shape)
    pieces = []

    def order(box):
        if max(box.shape) <= max(leaf, 2):
            pieces.append(box.ravel())
            return
        axis = int(np.argmax(box.shape))
        mid = box.shape[axis] // 2
        order(np.take(box, np.arange(mid), axis=axis))
        order(np.take(box, np.arange(mid + 1, box.shape[axis]), axis=axis))
        pieces.append(np.take(box, [mid], axis=axis).ravel())

    order(index)
    return np.concatenate(pieces)


def resolve_block(block, grid_shape) -> int:
    """The aggregate size for ``block`` (``"auto"`` or an integer >= 2) on ``grid_shape``."""
    if isinstance(block, str):
        if block != "auto":
            raise ValueError(f"deflation must be 'auto', None/False (off) or an integer block size >= 2, "
                             f"got {block!r}")
        size = AUTO_BLOCK
        while int(np.prod([-(-s // size) for s in grid_shape])) > AUTO_MAX_COARSE:
            size *= 2
        return size
    if isinstance(block, bool) or not isinstance(block, numbers.Integral) or block < 2:
        raise ValueError(f"deflation must be 'auto', None/False (off) or an integer block size >= 2, got {block!r}")
    return int(block)


def aggregation_deflation(A, grid_shape, *, block="auto", mask=None) -> AggregationDeflation:
    """Deflation space of ``block``-cell aggregates of a grid, for conjugate-direction methods.

    Parameters
    ----------
    A : sparse matrix, shape (n, n)
        SPD, unknowns in C order over ``grid_shape``.
    grid_shape : tuple
        ``(nx, ny)`` or ``(nx, ny, nz)``.
    block : "auto" or int
        Cells per axis of an aggregate. ``"auto"``: :data:`AUTO_BLOCK` (4),
        doubled while the coarse space would exceed :data:`AUTO_MAX_COARSE`
        aggregates (so 4 up to 136³ in 3D, 8 beyond).
    mask : bool array, optional
        Cells that belong to the coarse space (the fluid cells); others (solid
        or air cells, identity rows of A) are left out. Default: all cells.

    Returns
    -------
    AggregationDeflation

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.precond.deflation import aggregation_deflation
    >>> A = linsolve.problems.poisson((16, 16))
    >>> D = aggregation_deflation(A, (16, 16), block=4)
    >>> D.n_coarse
    16
    >>> b = np.ones(256); x = D.correction(b)
    >>> bool(np.abs(D.Z.T @ (b - A @ x)).max() < 1e-10)   # the residual is orthogonal to the aggregates
    True
    """
    A = as_sparse_matrix(A)
    shape = check_grid_shape(grid_shape, A.shape[0])
    return AggregationDeflation(A, shape, resolve_block(block, shape), mask=mask)
