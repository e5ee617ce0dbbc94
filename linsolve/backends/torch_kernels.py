"""torch kernels for the torch backend: CSR SpMV, matrix-free 5/7-point stencils, red-black SOR/SSOR.

Everything here works on 1-D tensors in the grid's C order (the ordering of
:mod:`linsolve.problems`) and runs on whatever device its tensors are on.

* :class:`CSROperator`: ``A @ x`` with a ``torch.sparse_csr_tensor`` (cuSPARSE
  on a GPU, MKL or torch's own kernel on a CPU).
* :class:`StencilOperator`: the same product for a matrix whose nonzeros lie
  on the diagonals ``0, ±stride_axis`` of a 2D/3D grid (5- or 7-point
  stencils, variable coefficients, identity rows for solid cells): no index
  arrays, one coefficient array per neighbour; this is also the structure
  check red-black ordering needs.
* :class:`RedBlack`: red-black SOR sweeps and the red-black SSOR
  preconditioner. The colours of a 5/7-point grid decouple, so each half
  sweep is one whole-vector update ``x += w_colour * (b - A x)`` with
  ``w_colour = omega * [colour] / diag``, which equals the sequential SOR
  update of every cell of that colour. The class only uses ``matvec``,
  ``-`` and :meth:`~linsolve.backends.array_api.ArrayOps.add_scaled`, so the
  same code runs on NumPy arrays (the CPU reference in the tests).

This module imports torch at import time; :mod:`linsolve` never imports it eagerly.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

from .array_api import NUMPY, ops_for

__all__ = ["CSROperator", "StencilOperator", "RedBlack", "TorchVCycle", "red_mask", "stencil_offsets",
           "infer_grid_shape", "is_grid_stencil", "to_torch_dtype", "normalize_device"]


def normalize_device(device) -> torch.device:
    """``torch.device`` with an explicit index for CUDA (``"cuda"`` -> ``cuda:<current>``).

    Tensors always report an indexed device, so comparisons need this.

    Examples
    --------
    >>> from linsolve.backends.torch_kernels import normalize_device
    >>> normalize_device("cpu")
    device(type='cpu')
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def to_torch_dtype(dtype) -> torch.dtype:
    """``torch.float32`` for float32 (NumPy or torch), else ``torch.float64``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.torch_kernels import to_torch_dtype
    >>> to_torch_dtype(np.float32), to_torch_dtype(np.float64)
    (torch.float32, torch.float64)
    """
    if dtype in (torch.float32, np.float32) or (isinstance(dtype, np.dtype) and dtype == np.float32):
        return torch.float32
    return torch.float64


class CSROperator:
    """``A @ x`` with a torch sparse CSR tensor on the operator's device.

    Parameters
    ----------
    A : scipy.sparse matrix (canonical CSR preferred) or torch sparse/dense tensor
    device, dtype : torch device and floating dtype

    Examples
    --------
    >>> import numpy as np, torch, linsolve
    >>> from linsolve.backends.torch_kernels import CSROperator
    >>> A = linsolve.problems.poisson((6, 6))
    >>> op = CSROperator(A, device="cpu", dtype=torch.float64)
    >>> x = torch.arange(36, dtype=torch.float64)
    >>> bool(np.allclose(op(x).numpy(), A @ x.numpy()))
    True
    """

    kind = "csr"

    def __init__(self, A, device="cpu", dtype=torch.float64):
        device = normalize_device(device)
        self.grid_checked = set()  # grid shapes already validated against this matrix
        with warnings.catch_warnings():
            # "Sparse CSR tensor support is in beta": the products we use are stable.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
            self._build(A, device, dtype)

    def _build(self, A, device, dtype):
        self.source = None  # the host matrix it came from (kept by reference for grid checks)
        if isinstance(A, torch.Tensor):
            T = A.detach().to(device=device, dtype=dtype)
            T = T.to_sparse_csr() if T.layout != torch.sparse_csr else T
        else:
            A = sp.csr_matrix(A)
            self.source = A
            # int32 indices halve the index traffic; both cuSPARSE and the CPU kernel take them.
            index_dtype = torch.int32 if A.nnz < 2**31 - 1 else torch.int64
            T = torch.sparse_csr_tensor(
                torch.from_numpy(A.indptr.astype(np.int64 if index_dtype == torch.int64 else np.int32)),
                torch.from_numpy(A.indices.astype(np.int64 if index_dtype == torch.int64 else np.int32)),
                torch.from_numpy(np.ascontiguousarray(A.data)).to(dtype),
                size=A.shape, check_invariants=False).to(device)
        self.matrix = T
        self._addmv = device.type == "cuda"
        self.shape = tuple(T.shape)
        self.device = device
        self.dtype = dtype

    def __call__(self, x):
        return torch.mv(self.matrix, x)

    matvec = __call__

    def residual(self, b, x):
        """``b - A x``: one cuSPARSE call (``addmv``) on a GPU; on a CPU torch's ``addmv`` is
        slower than ``mv`` plus a subtraction (measured 2x at 64^3), so it is not used there."""
        if self._addmv:
            try:
                return torch.addmv(b, self.matrix, x, alpha=-1)
            except (RuntimeError, NotImplementedError):  # pragma: no cover - older torch builds
                self._addmv = False
        return b - torch.mv(self.matrix, x)

    def diagonal(self) -> torch.Tensor:
        """The diagonal as a dense tensor (zeros where absent)."""
        crow = self.matrix.crow_indices().long()
        col = self.matrix.col_indices().long()
        val = self.matrix.values()
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), crow[1:] - crow[:-1])
        diag = torch.zeros(self.shape[0], dtype=val.dtype, device=self.device)
        on = rows == col
        diag.index_add_(0, rows[on], val[on])
        return diag


def stencil_offsets(shape) -> list:
    """Flat index offsets of the ``+1`` neighbour along each axis (the C-order strides).

    Examples
    --------
    >>> from linsolve.backends.torch_kernels import stencil_offsets
    >>> stencil_offsets((4, 5, 6))
    [30, 6, 1]
    """
    shape = tuple(int(s) for s in shape)
    return [int(np.prod(shape[a + 1:])) for a in range(len(shape))]


def _edge_mask(shape, axis) -> np.ndarray:
    """True for cells that have a ``+1`` neighbour along ``axis`` (flat, C order)."""
    idx = np.indices(shape)[axis].ravel()
    return idx < shape[axis] - 1


def is_grid_stencil(A: sp.csr_matrix, shape) -> bool:
    """True when every nonzero of ``A`` couples a cell with itself or a face neighbour on ``shape``.

    That is exactly the structure red-black ordering needs (same-colour cells
    never couple), and what :class:`StencilOperator` can represent.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.backends.torch_kernels import is_grid_stencil
    >>> A = linsolve.problems.poisson((5, 6))
    >>> is_grid_stencil(A, (5, 6)), is_grid_stencil(A, (6, 5))
    (True, False)
    """
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape))
    if A.shape != (n, n):
        return False
    coo = sp.coo_matrix(A)
    keep = coo.data != 0
    rows, cols = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64)
    ok = rows == cols
    for axis, stride in enumerate(stencil_offsets(shape)):
        has_next = _edge_mask(shape, axis)
        up = (cols - rows == stride) & has_next[rows]
        down = (rows - cols == stride) & has_next[cols]
        ok |= up | down
    return bool(ok.all())


def infer_grid_shape(A: sp.csr_matrix):
    """Guess a square/cubic grid for ``A`` (``None`` when no 5/7-point grid fits).

    Only equal-sided grids are guessed; pass ``grid_shape`` for anything else.

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.backends.torch_kernels import infer_grid_shape
    >>> infer_grid_shape(linsolve.problems.poisson((6, 6, 6)))
    (6, 6, 6)
    """
    n = A.shape[0]
    for dims in (3, 2):
        side = int(round(n ** (1.0 / dims)))
        for s in (side - 1, side, side + 1):
            if s > 1 and s ** dims == n and is_grid_stencil(A, (s,) * dims):
                return (s,) * dims
    return None


class StencilOperator:
    """Matrix-free product with a 5-point (2D) or 7-point (3D) variable-coefficient stencil.

    Stores the diagonal and, per axis, the coupling of each cell with its
    ``+1`` neighbour (``upper``) and of that neighbour with it (``lower``;
    the same tensor when ``A`` is symmetric). ``A @ x`` is then ``diag * x``
    plus two shifted multiply-adds per axis, with no index arrays.

    Parameters
    ----------
    A : scipy.sparse matrix
        Its nonzeros must be a grid stencil on ``shape`` (:func:`is_grid_stencil`).
    shape : tuple of 2 or 3 ints
    device, dtype

    Examples
    --------
    >>> import numpy as np, torch, linsolve
    >>> from linsolve.backends.torch_kernels import StencilOperator
    >>> A = linsolve.problems.poisson((4, 5, 6))
    >>> op = StencilOperator(A, (4, 5, 6), dtype=torch.float64)
    >>> x = torch.randn(120, dtype=torch.float64)
    >>> bool(np.allclose(op(x).numpy(), A @ x.numpy()))
    True
    """

    kind = "stencil"

    def __init__(self, A, shape, device="cpu", dtype=torch.float64):
        shape = tuple(int(s) for s in shape)
        A = sp.csr_matrix(A)
        if not is_grid_stencil(A, shape):
            raise ValueError(f"A is not a 5/7-point stencil on the grid {shape}: it has nonzeros "
                             f"outside the diagonal and the face neighbours")
        device = normalize_device(device)
        self.source = A
        self.grid_checked = {shape}
        self.shape = (A.shape[0], A.shape[1])
        self.grid_shape = shape
        self.device, self.dtype = device, dtype
        self.strides = stencil_offsets(shape)

        def put(arr):
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)).to(device=device, dtype=dtype)

        self.diag = put(A.diagonal())
        self.upper, self.lower = [], []
        for axis, s in enumerate(self.strides):
            mask = _edge_mask(shape, axis)[: A.shape[0] - s]
            up = np.where(mask, A.diagonal(s), 0.0)
            lo = np.where(mask, A.diagonal(-s), 0.0)
            up_t = put(up)
            self.upper.append(up_t)
            self.lower.append(up_t if np.array_equal(up, lo) else put(lo))

    @classmethod
    def from_weights(cls, diag, weights, device="cpu", dtype=torch.float64):
        """The operator ``diag_c x_c - sum_axis w x_neighbour`` of :mod:`linsolve.kernels.multigrid` arrays.

        ``diag`` and each ``weights[axis]`` have the grid's shape; ``w[..., i, ...]``
        couples cell ``i`` with ``i + 1`` along that axis (zero on the last plane).

        Examples
        --------
        >>> import numpy as np, torch
        >>> from linsolve.backends.torch_kernels import StencilOperator
        >>> d = np.full((3, 3, 1), 4.0); w = np.ones((3, 3, 1)); w[2] = 0; w1 = np.ones((3, 3, 1)); w1[:, 2] = 0
        >>> op = StencilOperator.from_weights(d, [w, w1, np.zeros((3, 3, 1))])
        >>> op(torch.ones(9, dtype=torch.float64)).reshape(3, 3).tolist()[1]
        [1.0, 0.0, 1.0]
        """
        self = cls.__new__(cls)
        shape = tuple(int(s) for s in np.shape(diag))
        self.source = None
        self.grid_shape = shape
        self.grid_checked = {shape}
        n = int(np.prod(shape))
        self.shape = (n, n)
        self.device, self.dtype = normalize_device(device), dtype
        self.strides, self.upper, self.lower = [], [], []
        self.diag = torch.from_numpy(np.ascontiguousarray(diag, dtype=np.float64).ravel()).to(self.device, dtype)
        for s, w in zip(stencil_offsets(shape), weights):
            w = np.asarray(w, dtype=np.float64).ravel()
            if s >= n or not np.any(w):
                continue
            up = torch.from_numpy(np.ascontiguousarray(-w[: n - s])).to(self.device, dtype)
            self.strides.append(s)
            self.upper.append(up)
            self.lower.append(up)
        return self

    def __call__(self, x):
        y = self.diag * x
        for s, up, lo in zip(self.strides, self.upper, self.lower):
            y[:-s].addcmul_(up, x[s:])
            y[s:].addcmul_(lo, x[:-s])
        return y

    matvec = __call__

    def residual(self, b, x):
        """``b - A x`` without a separate subtraction pass."""
        y = torch.addcmul(b, self.diag, x, value=-1)
        for s, up, lo in zip(self.strides, self.upper, self.lower):
            y[:-s].addcmul_(up, x[s:], value=-1)
            y[s:].addcmul_(lo, x[:-s], value=-1)
        return y

    def diagonal(self) -> torch.Tensor:
        return self.diag


def red_mask(shape) -> np.ndarray:
    """Boolean C-order mask of the red cells (even index sum) of a grid.

    The same colouring as :func:`linsolve.kernels.sor.red_black_rows`.

    Examples
    --------
    >>> from linsolve.backends.torch_kernels import red_mask
    >>> red_mask((2, 3)).tolist()
    [True, False, True, False, True, False]
    """
    shape = tuple(int(s) for s in shape)
    return (np.indices(shape).sum(axis=0).ravel() % 2) == 0


class RedBlack:
    """Red-black SOR sweeps and the red-black SSOR preconditioner for a grid stencil.

    Parameters
    ----------
    matvec : callable
        ``A @ v`` (NumPy or torch, matching ``diag``).
    diag : array or tensor
        Diagonal of ``A``, all positive.
    red : array or tensor of bool
        Red cells (:func:`red_mask`); the remaining cells are black. Red cells
        must couple only to black ones (checked by the callers with
        :func:`is_grid_stencil`).
    omega : float in (0, 2)

    Notes
    -----
    A half sweep over one colour is ``x += w_c * (b - A x)`` with
    ``w_c = omega * [c] / diag``: for a cell ``i`` of colour ``c`` this is
    ``(1 - omega) x_i + omega (b_i - sum_{j != i} a_ij x_j) / a_ii``, the
    SOR update, and because cells of one colour do not couple it is the same
    as updating them one after another. A forward sweep is red then black; the
    symmetric (SSOR) sweep adds black then red. SSOR from ``x = 0`` applied to
    ``r`` is ``M^{-1} r`` with the symmetric positive definite
    ``M = (D/ω + L) (D/ω)^{-1} (D/ω + U) · ω/(2-ω)`` of the red-black
    ordering, usable in CG. This costs one product with ``A`` per half sweep
    (the first red half sweep from zero needs none).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.torch_kernels import RedBlack, red_mask
    >>> A = linsolve.problems.poisson((8, 8)); b = np.ones(64)
    >>> rb = RedBlack(A.dot, A.diagonal(), red_mask((8, 8)), omega=1.5)
    >>> x = np.zeros(64)
    >>> for _ in range(60):
    ...     rb.sweep(x, b)
    >>> bool(np.linalg.norm(b - A @ x) < 1e-6)
    True
    """

    def __init__(self, matvec, diag, red, omega: float = 1.0):
        self.matvec = matvec
        fused = getattr(matvec, "residual", None)
        self.residual = fused if fused is not None else (lambda b, x: b - matvec(x))
        self.omega = float(omega)
        self.ops = ops_for(diag)
        if self.ops is NUMPY:
            red = np.asarray(red, dtype=bool)
            scaled = self.omega / np.asarray(diag)
            self.w_red = np.where(red, scaled, 0.0).astype(diag.dtype)
            self.w_black = np.where(red, 0.0, scaled).astype(diag.dtype)
        else:
            red = torch.as_tensor(red, device=diag.device)
            scaled = self.omega / diag
            zero = torch.zeros((), dtype=diag.dtype, device=diag.device)
            self.w_red = torch.where(red, scaled, zero)
            self.w_black = torch.where(red, zero, scaled)

    def half_sweep(self, x, b, weights, residual=None):
        """Update one colour of ``x`` in place; ``residual`` may pass ``b - A x`` already computed."""
        res = self.residual(b, x) if residual is None else residual
        self.ops.add_scaled(x, weights, res)

    def sweep(self, x, b, symmetric: bool = False, residual=None):
        """One SOR sweep (red, black) or SSOR sweep (red, black, black, red), in place."""
        self.half_sweep(x, b, self.w_red, residual)
        self.half_sweep(x, b, self.w_black)
        if symmetric:
            self.half_sweep(x, b, self.w_black)
            self.half_sweep(x, b, self.w_red)

    def ssor_apply(self, r):
        """``M^{-1} r`` for the red-black SSOR preconditioner (one SSOR sweep from zero)."""
        z = self.w_red * r
        self.half_sweep(z, r, self.w_black)
        self.half_sweep(z, r, self.w_black)
        self.half_sweep(z, r, self.w_red)
        return z

    __call__ = ssor_apply


def _transfer_1d(n_fine: int, n_coarse: int):
    """1-D cell-centred interpolation matrix (n_fine x n_coarse) of :mod:`linsolve.kernels.multigrid`."""
    from ..kernels.multigrid import _axis_weights

    rows, cols, vals = [], [], []
    for i in range(n_fine):
        a, p, b, q = _axis_weights(i, n_coarse, n_fine != n_coarse)
        rows.append(i); cols.append(a); vals.append(p)
        if b >= 0:
            rows.append(i); cols.append(b); vals.append(q)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_fine, n_coarse))


def _stencil_matrix(diag, w0, w1, w2) -> sp.csr_matrix:
    """CSR of the 7-point operator ``(diag, w0, w1, w2)`` (3-D arrays of kernels.multigrid)."""
    shape = diag.shape
    n = diag.size
    strides = (shape[1] * shape[2], shape[2], 1)
    offsets, data = [0], [diag.ravel()]
    for w, stride in zip((w0, w1, w2), strides):
        if stride < n and np.any(w):
            offsets += [stride, -stride]
            data += [-w.ravel()[:n - stride], -w.ravel()[:n - stride]]
    return sp.diags(data, offsets, shape=(n, n), format="csr")


#: Levels with at most this many cells use CSR transfer matrices (one cuSPARSE call each way);
#: finer levels apply the separable interpolation axis by axis (no 8-nonzeros-per-cell matrix).
TRANSFER_CSR_MAX_CELLS = 1 << 22


class _AxisTransfer:
    """A 1-D operator with at most ``K`` entries per row applied along one axis by padded gathers.

    Gathers (not scatters): deterministic on a GPU, and no index arrays of the
    size of the 3-D grid.
    """

    def __init__(self, M: sp.csr_matrix, axis: int, ndim: int, device, dtype):
        M = sp.csr_matrix(M)
        counts = np.diff(M.indptr)
        K = max(int(counts.max()), 1)
        idx = np.zeros((M.shape[0], K), dtype=np.int64)
        val = np.zeros((M.shape[0], K))
        for k in range(K):
            has = counts > k
            pos = M.indptr[:-1][has] + k
            idx[has, k] = M.indices[pos]
            val[has, k] = M.data[pos]
        view = [1] * ndim
        view[axis] = -1
        self.axis = axis
        self.idx = [torch.from_numpy(idx[:, k].copy()).to(device) for k in range(K)]
        self.val = [torch.from_numpy(val[:, k].copy()).to(device, dtype).view(view) for k in range(K)]

    def __call__(self, x):
        out = self.val[0] * x.index_select(self.axis, self.idx[0])
        for idx, val in zip(self.idx[1:], self.val[1:]):
            out.addcmul_(val, x.index_select(self.axis, idx))
        return out


class TorchVCycle:
    """The V-cycle of a :class:`~linsolve.precond.multigrid.GeometricMG` (classical or learned) in torch.

    The hierarchy (stencils, per-cell relaxation, transfer scales, coarsest
    factorisation) is built on the host by :mod:`linsolve.precond.multigrid`
    and copied to the device once; each application then runs entirely on the
    device: red-black half sweeps ``x += relax_c (b - A x)``, restriction
    ``active_c · P^T (scale · r)``, prolongation ``x += pscale · P (active_c · e)``
    (``P`` the Kronecker product of the 1-D cell-centred interpolations,
    applied one axis at a time with deterministic gathers, so no 3-D
    transfer matrix is ever formed), matrix-free stencil products on every
    level, and a dense Cholesky solve on the coarsest grid. Same operator as the host
    V-cycle (to rounding), so it is symmetric positive definite and usable in CG.

    Examples
    --------
    >>> import numpy as np, torch, linsolve
    >>> from linsolve.precond.multigrid import geometric_mg
    >>> from linsolve.backends.torch_kernels import TorchVCycle
    >>> A = linsolve.problems.poisson((8, 8, 8)); r = np.random.default_rng(0).standard_normal(512)
    >>> M = geometric_mg(A, grid_shape=(8, 8, 8), coarse_size=8)
    >>> z = TorchVCycle(M)(torch.from_numpy(r))
    >>> bool(np.allclose(z.numpy(), M.matvec(r)))
    True
    """

    symmetric = True

    def __init__(self, gmg, device="cpu", dtype=torch.float64, fine_operator=None):
        self.device = normalize_device(device)
        self.dtype = dtype
        self.smoothing_steps = int(gmg.smoothing_steps)
        self.shape = tuple(gmg.shape)

        def put(arr):
            return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64).ravel()).to(
                device=self.device, dtype=dtype)

        self.levels = []
        levels = gmg.levels
        for lev, L in enumerate(levels):
            red = red_mask(L.shape)
            if lev == 0 and fine_operator is not None:
                op = fine_operator  # the level-0 stencil is A itself: reuse the caller's device copy
            elif self.device.type == "cuda":
                # one cuSPARSE call per product: the cycle is launch-bound on the coarse levels
                op = CSROperator(_stencil_matrix(L.diag, L.w0, L.w1, L.w2), self.device, dtype)
            else:
                # torch's CPU CSR product is several times slower than the shifted stencil updates
                op = StencilOperator.from_weights(L.diag, [L.w0, L.w1, L.w2], self.device, dtype)
            entry = {"A": op, "shape": tuple(L.shape),
                     "w_red": put(np.where(red, L.relax.ravel(), 0.0)),
                     "w_black": put(np.where(red, 0.0, L.relax.ravel()))}
            if lev + 1 < len(levels):
                nxt = levels[lev + 1]
                # P = P0 (x) P1 (x) P2; axes that are not coarsened are skipped.
                factors = [(axis, _transfer_1d(L.shape[axis], nxt.shape[axis])) for axis in range(3)
                           if L.shape[axis] != nxt.shape[axis]]
                if int(np.prod(L.shape)) <= TRANSFER_CSR_MAX_CELLS:
                    P = sp.identity(1, format="csr")
                    for axis in range(3):
                        one = dict(factors).get(axis, sp.identity(L.shape[axis], format="csr"))
                        P = sp.kron(P, one, format="csr")
                    entry["P_csr"] = CSROperator(P, self.device, dtype)
                    entry["PT_csr"] = CSROperator(P.T.tocsr(), self.device, dtype)
                else:
                    entry["P"] = [_AxisTransfer(P1, axis, 3, self.device, dtype) for axis, P1 in factors]
                    entry["PT"] = [_AxisTransfer(P1.T.tocsr(), axis, 3, self.device, dtype) for axis, P1 in factors]
                entry["coarse_shape"] = tuple(nxt.shape)
                entry["scale"] = put(L.scale)
                entry["pscale"] = put(L.pscale)
                entry["coarse_active"] = put(nxt.active)
            else:
                entry["inv_diag"] = put(1.0 / L.diag)
                kind, data = L.chol
                entry["kind"] = kind
                entry["idx"] = torch.from_numpy(np.asarray(L.dense_active, dtype=np.int64)).to(self.device)
                if kind == "chol":
                    factor, lower = data
                    tri = np.tril(factor) if lower else np.triu(factor).T
                    entry["L"] = torch.from_numpy(np.ascontiguousarray(tri)).to(device=self.device, dtype=dtype)
                elif kind == "eig":
                    vecs, inv = data
                    entry["vecs"] = torch.from_numpy(np.ascontiguousarray(vecs)).to(device=self.device, dtype=dtype)
                    entry["inv"] = torch.from_numpy(np.asarray(inv)).to(device=self.device, dtype=dtype)
            self.levels.append(entry)

    def _cycle(self, lev, b):
        L = self.levels[lev]
        if lev == len(self.levels) - 1:
            x = b * L["inv_diag"]
            if L["kind"] == "chol":
                x[L["idx"]] = torch.cholesky_solve(b[L["idx"]].unsqueeze(1), L["L"]).squeeze(1)
            elif L["kind"] == "eig":
                x[L["idx"]] = L["vecs"] @ (L["inv"] * (L["vecs"].T @ b[L["idx"]]))
            return x
        res = L["A"].residual
        x = None
        for s in range(self.smoothing_steps):
            if s == 0:
                x = L["w_red"] * b
            else:
                x.addcmul_(L["w_red"], res(b, x))
            x.addcmul_(L["w_black"], res(b, x))
        fine_r = L["scale"] * res(b, x)
        if "PT_csr" in L:
            coarse_b = L["PT_csr"](fine_r)
        else:
            coarse_b = fine_r.view(L["shape"])
            for transfer in L["PT"]:
                coarse_b = transfer(coarse_b)
            coarse_b = coarse_b.reshape(-1)
        e = self._cycle(lev + 1, coarse_b * L["coarse_active"])
        if "P_csr" in L:
            fine = L["P_csr"](L["coarse_active"] * e)
        else:
            fine = (L["coarse_active"] * e).view(L["coarse_shape"])
            for transfer in L["P"]:
                fine = transfer(fine)
            fine = fine.reshape(-1)
        x.addcmul_(L["pscale"], fine)
        for _ in range(self.smoothing_steps):
            x.addcmul_(L["w_black"], res(b, x))
            x.addcmul_(L["w_red"], res(b, x))
        return x

    def __call__(self, r):
        return self._cycle(0, r)

    matvec = __call__
