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

from .._validation import user_stacklevel
from ..precond.hierarchy import CycleSteps
from .array_api import NUMPY, ops_for

__all__ = ["CSROperator", "StencilOperator", "RedBlack", "TorchVCycle", "TorchCycleKernels", "red_mask", "stencil_offsets",
           "is_grid_stencil", "to_torch_dtype", "normalize_device"]


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


class TorchCycleKernels(CycleSteps):
    """The :func:`linsolve.precond.hierarchy.vcycle` kernels on torch tensors: GPU inference and training.

    Built once per hierarchy (stencils, interpolation weights, colours, line
    segments and the coarsest inverse are copied to the device); the same
    cycle function as the NumPy path then runs on tensors of shape
    ``(npad,)`` or ``(npad, k)`` (``k`` right-hand sides at once). Every step
    is functional (no in-place update of a tensor that autograd needs), so the
    relaxation tensors may carry gradients: that is how the learned smoothing
    is trained. Multicolour Gauss-Seidel is one masked update per colour,
    ``x += mask_c relax (b - A x)``; a line segment colour is a batched Thomas
    solve over all its segments. Same operator as the NumPy cycle up to
    rounding.

    ``relax`` / ``corrections`` / ``line_omegas`` (per level) default to the
    hierarchy's own values; :meth:`set_parameters` replaces them (tensors with
    gradients are fine).
    """

    def __init__(self, H, device="cpu", dtype=torch.float64):
        from ..precond.hierarchy import coarse_inverse

        self.H = H
        self.device = normalize_device(device)
        self.dtype = dtype

        def put(arr, dt=None):
            return torch.from_numpy(np.ascontiguousarray(arr)).to(device=self.device, dtype=dt or dtype)

        self.levels = []
        for lev, L in enumerate(H.levels):
            entry = {"npad": L.npad, "diag": put(L.diag), "coef": put(L.coef), "offs": [int(o) for o in L.offs]}
            grid = np.zeros(tuple(int(p) for p in L.pshape), dtype=np.int64)
            idx = np.indices(L.grid3)
            inside = tuple(slice(g, g + m) for g, m in zip(L.ghost, L.grid3))
            colors = []
            for c in L.point_colors:
                mask = np.zeros_like(grid, dtype=bool)
                if c < 0:
                    mask[inside] = (idx.sum(axis=0) % 2) == (-1 - c)
                else:
                    mask[inside] = ((idx[0] % 2) == ((c >> 2) & 1)) & ((idx[1] % 2) == ((c >> 1) & 1)) \
                        & ((idx[2] % 2) == (c & 1))
                colors.append(put(mask.ravel().astype(np.float64)))
            entry["colors"] = colors
            entry["lines"] = [self._segments(L, ls, put) for ls in L.lines]
            entry["clusters"] = self._cluster_groups(L.clusters, put)
            if L.W is not None:
                C = H.levels[lev + 1]
                entry["W"] = put(L.W)
                entry["corner"] = put(_corner_index(L, C), torch.int64)
                entry["cnpad"] = C.npad
            else:
                rows = L.coarse["rows"]
                entry["rows"] = put(rows, torch.int64)
                entry["inv_diag"] = put(L.coarse["inv_diag"])
                entry["Binv"] = put(coarse_inverse(L))
            self.levels.append(entry)
        self.set_parameters([put(L.relax) for L in H.levels], [float(L.correction) for L in H.levels],
                            [float(L.lines[0].omega) if L.lines else 1.0 for L in H.levels])

    @staticmethod
    def _segments(L, ls, put):
        """Per colour of a level's line segments: their cells and their blocks' Thomas factors, padded to the
        longest segment (gathered once here, not at every sweep).

        The factors are those of the compiled kernel (:func:`linsolve.kernels.multigrid.line_factor`, with its
        fallback for a vanishing pivot), so both cycles apply the same block solve.
        """
        from ..precond.hierarchy import _line_factors

        longest = int(ls.lengths.max())
        pos = np.arange(longest)
        valid = pos[None, :] < ls.lengths[:, None]
        index = np.where(valid, ls.starts[:, None] + pos[None, :] * ls.stride, 0)
        offsets, inv, upper = _line_factors(ls, L.diag, L.coef)
        flat = np.where(valid, offsets[:, None] + pos[None, :], 0)
        inv_pivot = np.where(valid, inv[flat], 0.0)
        upper_scaled = np.where(valid, upper[flat], 0.0)
        # forward elimination y_q = (r_q - l_q y_{q-1}) / m_q, back substitution x_q = y_q - u_q x_{q+1}
        lower = np.zeros_like(inv_pivot)
        lower[:, 1:] = np.where(valid[:, 1:], L.coef[ls.k_axis][index[:, :-1]], 0.0)
        valid &= L.diag[index] > 0
        forward, backward = -lower * inv_pivot, -upper_scaled[:, ::-1]  # the back substitution runs reversed
        groups = []
        for colour in ls.order:
            m = np.flatnonzero(ls.colors == colour)
            if m.size:
                groups.append({"index": put(index[m], torch.int64), "valid": put(valid[m].astype(np.float64)),
                               "inv_pivot": put(inv_pivot[m]), "forward": put(forward[m]),
                               "backward": put(np.ascontiguousarray(backward[m]))})
        return groups

    @staticmethod
    def _cluster_groups(cs, put):
        """Per colour of a level's clusters (:class:`linsolve.precond.hierarchy.ClusterSet`): their cells,
        couplings to the outside and scales, so that a colour is one gather-scatter step."""
        if cs is None:
            return []
        groups = []
        for k in range(cs.colour_start.size - 1):
            c0, c1 = int(cs.colour_start[k]), int(cs.colour_start[k + 1])
            m0, m1 = int(cs.m_start[c0]), int(cs.m_start[c1])
            e0, e1 = int(cs.e_start[c0]), int(cs.e_start[c1])
            groups.append({"n": c1 - c0, "members": put(cs.members[m0:m1], torch.int64),
                           "member_cluster": put(cs.member_cluster[m0:m1] - c0, torch.int64),
                           "leak": put(cs.leak[m0:m1]), "e_col": put(cs.e_col[e0:e1], torch.int64),
                           "edge_cluster": put(cs.edge_cluster[e0:e1] - c0, torch.int64),
                           "e_weight": put(cs.e_weight[e0:e1]), "inv_d": put(cs.inv_d[c0:c1])})
        return groups

    def set_parameters(self, relax, corrections, line_omegas) -> None:
        """Per-level relaxation tensors (``omega / diag`` per padded cell), correction scales, line omegas."""
        self.relax = list(relax)
        self.corrections = list(corrections)
        self.line_omegas = list(line_omegas)
        # each colour's relaxation, zero off the colour: one multiply-add per colour step
        self._colour_relax = [[mask * r for mask in L["colors"]] for L, r in zip(self.levels, self.relax)]

    # -- the operations the cycle calls
    def _apply(self, lev, x):
        L = self.levels[lev]
        y = _bcast(L["diag"], x) * x
        for k, o in enumerate(L["offs"]):
            # one fused multiply-add per neighbour into a view of the fresh y (autograd follows in-place slices)
            c = _bcast(L["coef"][k], x)[:-o]
            y[:-o].addcmul_(c, x[o:])
            y[o:].addcmul_(c, x[:-o])
        return y

    def zeros(self, lev):
        return None  # the first smoothing step starts from x = 0

    def smooth(self, lev, x, b, pre, first):
        L = self.levels[lev]
        colors = self._colour_relax[lev] if pre else self._colour_relax[lev][::-1]
        lines = L["lines"] if pre else L["lines"][::-1]
        if not pre:
            x = self._clusters(lev, x, b, forward=False)
            x = self._lines(lev, x, b, lines, reverse=True)
        for colour_relax in colors:
            w = _bcast(colour_relax, b)
            if x is None:
                x = w * b
            else:
                x = torch.addcmul(x, w, b - self._apply(lev, x))
        if pre:
            x = self._lines(lev, x, b, lines, reverse=False)
            x = self._clusters(lev, x, b, forward=True)
        return x

    def _clusters(self, lev, x, b, forward):
        """The exact correction of each cluster's constant, a colour at a time (``K.cluster_correct``)."""
        groups = self.levels[lev]["clusters"]
        for g in (groups if forward else groups[::-1]):
            m = g["members"]
            xm = x.index_select(0, m)
            s = torch.zeros((g["n"],) + tuple(x.shape[1:]), device=x.device, dtype=x.dtype)
            s = s.index_add(0, g["member_cluster"], b.index_select(0, m) - _bcast(g["leak"], xm) * xm)
            xe = x.index_select(0, g["e_col"])
            s = s.index_add(0, g["edge_cluster"], -_bcast(g["e_weight"], xe) * xe)
            delta = (_bcast(g["inv_d"], s) * s).index_select(0, g["member_cluster"])
            x = x.index_add(0, m, delta)
        return x

    def _lines(self, lev, x, b, lines, reverse):
        omega = self.line_omegas[lev]
        for groups in lines:
            for group in (groups[::-1] if reverse else groups):
                r = b - self._apply(lev, x)
                index, valid, inv_pivot = group["index"], group["valid"], group["inv_pivot"]
                extra = r.dim() > 1
                rhs = r[index] * (inv_pivot[..., None] if extra else inv_pivot)
                y = _affine_scan(group["forward"], rhs)
                delta = _affine_scan(group["backward"], y.flip(1)).flip(1)
                delta = delta * (valid[..., None] if extra else valid)
                flat = index.reshape(-1)
                update = torch.zeros_like(x).index_add(0, flat, delta.reshape((flat.numel(),) + x.shape[1:]))
                x = x + omega * update
        return x

    def residual_restrict(self, lev, x, b):
        L = self.levels[lev]
        r = b - self._apply(lev, x)
        out = torch.zeros((L["cnpad"],) + r.shape[1:], device=r.device, dtype=r.dtype)
        for sub in range(8):
            out = out.index_add(0, L["corner"][sub], _bcast(L["W"][sub], r) * r)
        return out

    def prolong_add(self, lev, x, e):
        L = self.levels[lev]
        fine = torch.zeros_like(x)
        for sub in range(8):
            fine = fine + _bcast(L["W"][sub], x) * e[L["corner"][sub]]
        return x + self.corrections[lev] * fine

    def coarse_solve(self, lev, b):
        L = self.levels[lev]
        x = _bcast(L["inv_diag"], b) * b
        if L["rows"].numel():
            x = x.index_copy(0, L["rows"], L["Binv"] @ b[L["rows"]])
        return x


def _bcast(v, like):
    """``v`` (one entry per padded cell) shaped to multiply ``like`` (``(npad,)`` or ``(npad, k)``)."""
    return v if like.dim() == 1 else v[:, None]


def _affine_scan(a, c):
    """``y_q = a_q y_{q-1} + c_q`` (``y_{-1} = 0``) along axis 1 of ``(s, n[, k])`` tensors, in ``log2 n`` steps.

    The forward elimination and back substitution of the line blocks' Thomas
    factors are such recurrences; a parallel prefix (Hillis-Steele) over the
    affine maps ``y -> a y + c`` solves all segments together in ``log2 n``
    whole-tensor steps instead of ``n`` sequential ones (a kernel launch each
    on a GPU).
    """
    extra = c.dim() == 3
    n = a.shape[1]
    step = 1
    while step < n:
        a_prev = torch.nn.functional.pad(a[:, :-step], (step, 0))
        c_prev = torch.nn.functional.pad(c[:, :-step], ((0, 0) if extra else ()) + (step, 0))
        c = c + (a[..., None] if extra else a) * c_prev
        a = a * a_prev
        step *= 2
    return c


def _corner_index(L, C) -> np.ndarray:
    """``(8, npad)`` coarse padded index of corner ``sub`` of every fine cell (0 where there is none)."""
    out = np.zeros((8, L.npad), dtype=np.int64)
    idx = np.indices(L.grid3).reshape(3, -1)
    fine = np.flatnonzero(_interior_mask(L))
    for sub in range(8):
        bits = ((sub >> 2) & 1, (sub >> 1) & 1, sub & 1)
        coords = [(idx[a] // 2 + bits[a]) if L.caxes[a] else idx[a] + bits[a] for a in range(3)]
        ok = np.all([(c + g) < p for c, g, p in zip(coords, C.ghost, C.pshape)], axis=0)
        flat = ((coords[0] + C.ghost[0]) * C.pshape[1] + coords[1] + C.ghost[1]) * C.pshape[2] + coords[2] + C.ghost[2]
        out[sub, fine] = np.where(ok, flat, 0)
    return out


def _interior_mask(L) -> np.ndarray:
    mask = np.zeros(tuple(int(p) for p in L.pshape), dtype=bool)
    mask[tuple(slice(g, g + m) for g, m in zip(L.ghost, L.grid3))] = True
    return mask.ravel()


class TorchVCycle:
    """The V-cycle of a :class:`~linsolve.precond.multigrid.GeometricMG` (classical or learned) in torch.

    The hierarchy is built on the host by :mod:`linsolve.precond.multigrid`
    and copied to the device once (:class:`TorchCycleKernels`); each
    application runs the one V-cycle of :mod:`linsolve.precond.hierarchy` on
    the device. Same operator as the host V-cycle (to rounding), so it is
    symmetric positive definite and usable in CG.

    Examples
    --------
    >>> import numpy as np, torch, linsolve
    >>> from linsolve.precond.multigrid import geometric_mg
    >>> from linsolve.backends.torch_kernels import TorchVCycle
    >>> A = linsolve.problems.poisson((8, 8, 8)); r = np.random.default_rng(0).standard_normal(512)
    >>> M = geometric_mg(A, grid_shape=(8, 8, 8), coarse_size=8, precision="double")
    >>> z = TorchVCycle(M)(torch.from_numpy(r))
    >>> bool(np.allclose(z.numpy(), M.matvec(r)))
    True
    """

    symmetric = True

    #: Replay the cycle as a captured CUDA graph on a GPU (one launch instead of thousands of small kernels);
    #: the first application captures it. Set to False to run every kernel from Python (as on a CPU).
    use_cuda_graph = True

    def __init__(self, gmg, device="cpu", dtype=torch.float64, fine_operator=None):
        self.device = normalize_device(device)
        self._graph = None  # (graph, static input, static output) once captured; False where capture failed
        self.dtype = dtype
        self.smoothing_steps = int(gmg.smoothing_steps)
        self.shape = tuple(gmg.shape)
        self.kernels = TorchCycleKernels(gmg.hierarchy, device=self.device, dtype=dtype)
        self.levels = self.kernels.levels
        H = gmg.hierarchy
        L0 = H.levels[0]
        self._interior = torch.from_numpy(np.flatnonzero(_interior_mask(L0))).to(self.device)
        # the cells the levels cover (a cropped hierarchy covers the box of the coupled cells)
        self._cells = torch.from_numpy(H.box_index()).to(self.device)
        self._outside = None if H.outside_inv is None else \
            torch.from_numpy(H.outside_inv).to(device=self.device, dtype=dtype)
        self._npad = L0.npad

    def __call__(self, r):
        if self._graph is not False and self.use_cuda_graph and r.is_cuda and r.dim() == 1 \
                and not (torch.is_grad_enabled() and r.requires_grad):
            return self._replay(r)
        return self._cycle(r)

    def _replay(self, r):
        """The cycle replayed from a CUDA graph captured at the first call (same kernels, same result)."""
        if self._graph is None or self._graph[1].dtype != r.dtype:
            try:
                static_in = r.detach().clone()
                side = torch.cuda.Stream(device=r.device)
                side.wait_stream(torch.cuda.current_stream(r.device))
                with torch.cuda.stream(side), torch.no_grad():
                    for _ in range(2):  # allocations settle before capture, as torch's documentation asks
                        self._cycle(static_in)
                torch.cuda.current_stream(r.device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph), torch.no_grad():
                    static_out = self._cycle(static_in)
                self._graph = (graph, static_in, static_out)
            except RuntimeError as exc:  # pragma: no cover - depends on the CUDA build
                warnings.warn(f"TorchVCycle: CUDA graph capture failed ({exc}); running the cycle kernel by kernel",
                              RuntimeWarning, stacklevel=user_stacklevel())
                self._graph = False
                return self._cycle(r)
        graph, static_in, static_out = self._graph
        static_in.copy_(r)
        graph.replay()
        return static_out.clone()

    def _cycle(self, r):
        from ..precond.hierarchy import vcycle

        b = torch.zeros((self._npad,) + tuple(r.shape[1:]), device=r.device, dtype=r.dtype)
        b = b.index_copy(0, self._interior, r.index_select(0, self._cells))
        x = vcycle(self.kernels.H, self.kernels, b, self.smoothing_steps)[self._interior]
        if self._outside is None:
            return x
        out = r * (self._outside if r.dim() == 1 else self._outside[:, None])
        return out.index_copy(0, self._cells, x)

    matvec = __call__
