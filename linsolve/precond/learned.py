"""A trained network as an approximate ``A^-1``: the search-direction generator of DCDM.

The network is applied to ``r`` scaled to unit RMS over the fluid cells (so
one model serves every grid size), its output is restricted to fluid cells,
and decoupled rows (identity rows of solid / air cells) get their exact
Jacobi value. The result is a *direction*; as an operator it is scaled by the
exact line search ``q (qᵀr)/(qᵀAq)``, the best multiple of ``q`` in the A-norm.

The map is neither linear nor symmetric (ReLU network), so it is meant for
DCDM and flexible Krylov methods, never for plain CG: the operator carries
``symmetric = False`` for CG to refuse it.

torch is imported only when a network is actually built or applied.

Repeated solves on one grid (a simulation loop) run a frozen TorchScript copy
of the network (``torch.jit.freeze`` + ``optimize_for_inference``: 1.7× faster
per application at 64³ on one CPU core). Tracing costs seconds, so a grid shape
is compiled only the second time a solve uses it, only on the CPU and only for
networks loaded from a model file (whose weights do not change under us); set
``LINSOLVE_JIT=0`` to always run the network eagerly.
"""
from __future__ import annotations

import math
import os
import time
import warnings
import weakref

import numpy as np
from scipy.sparse.linalg import LinearOperator

from .._grid import fluid_mask
from .._validation import as_operator, check_grid_shape
from ..structure import check_symmetric

__all__ = ["learned", "LearnedPreconditioner", "NetworkDirection", "resolve_grid_shape", "resolve_model"]

_PREFERRED = {2: "poisson2d-64", 3: "poisson3d-32"}
# model=None picks a shipped model of this architecture: others (e.g. a learned multigrid) need other inputs.
_DEFAULT_ARCHITECTURE = "dcdm"


def resolve_grid_shape(grid_shape, n: int, matrix=None, model=None) -> tuple:
    """``grid_shape`` checked against ``n``, or the grid :func:`linsolve.find_grid` reads off ``matrix``.

    The grid is never guessed from ``n``: without ``grid_shape`` the matrix's
    sparsity pattern must be a 5/7-point stencil on one grid (any shape), and
    a model of another dimensionality is refused (a 16³ 7-point matrix is not
    the 64×64 grid of a 2D model, though both have 4096 rows).

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.precond.learned import resolve_grid_shape
    >>> resolve_grid_shape(None, 120, linsolve.problems.poisson((12, 10)))
    (12, 10)
    >>> resolve_grid_shape(None, 4096, linsolve.problems.poisson((16, 16, 16)), model="poisson2d-64")
    Traceback (most recent call last):
    ...
    ValueError: A is a 7-point stencil on the 3D grid (16, 16, 16), but the model is for 2D grids
    """
    model_dims = _model_dims(model)
    if grid_shape is not None:
        shape = check_grid_shape(grid_shape, n)
        if matrix is not None:
            _check_stencil_on(matrix, shape)
        return shape
    if matrix is None:
        raise ValueError("the grid of a LinearOperator cannot be read off its entries; pass grid_shape=(nx, ny) "
                         "or (nx, ny, nz) matching A's C-order numbering")
    from ..structure import find_grid

    found = find_grid(matrix)
    if found is None or found.border is not None:
        what = "a Lagrange-bordered system" if found is not None else "not a 5/7-point stencil on a grid"
        raise ValueError(f"A ({n}x{n}) is {what}: the grid cannot be read off its pattern; pass "
                         f"grid_shape=(nx, ny) or (nx, ny, nz) matching A's C-order numbering")
    if model_dims is not None and found.dims != model_dims:
        raise ValueError(f"A is a {2 * found.dims + 1}-point stencil on the {found.dims}D grid {found.shape}, "
                         f"but the model is for {model_dims}D grids")
    return found.shape


def _check_stencil_on(matrix, shape) -> None:
    """Refuse a matrix with entries between cells that are not neighbours on ``shape`` (a wrong grid_shape
    with the right number of cells: the network would run on a scrambled picture of the residual)."""
    from ..kernels import multigrid as K

    grid3, _, _ = K.layout(shape)
    table, half = K.offset_table(grid3)
    counts = np.zeros(27, dtype=np.int64)
    row = int(K.stencil_pattern(matrix.indptr, matrix.indices, matrix.data, np.array(grid3, dtype=np.int64),
                                table, half, counts))
    if row >= 0:
        raise ValueError(f"grid_shape {tuple(shape)} does not fit A: row {row} couples cells that are not "
                         f"neighbours on that grid (pass the grid A is numbered on, in C order)")


def _model_dims(model):
    """Dimensionality of ``model`` (name, path or module) when it says; ``None`` for the shipped default."""
    if model is None:
        return None
    if isinstance(model, (str, os.PathLike)):
        from .. import models

        return models.info(model).get("dims")
    return getattr(model, "dims", None)


def resolve_model(model, dims: int):
    """A torch network for a ``dims``-D grid from ``None`` (shipped), a name/path, or a module."""
    from .. import models

    if model is None:
        names = models.find(dims, architecture=_DEFAULT_ARCHITECTURE)
        preferred = _PREFERRED.get(dims)
        if preferred in names:
            names = [preferred] + [n for n in names if n != preferred]
        if not names:
            raise ValueError(f"no shipped DCDM model for {dims}D grids (shipped: {models.available() or 'none'}); "
                             f"train one with `linsolve train poisson{dims}d-...` and pass model=PATH")
        net = models.load(names[0])
    elif isinstance(model, (str, os.PathLike)):
        net = models.load(model)
    else:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be None, a model name, a path or a torch.nn.Module, "
                            f"got {type(model).__name__}")
        net = model
    net_dims = getattr(net, "dims", None)
    if net_dims is not None and net_dims != dims:
        source = getattr(net, "source_path", None) or type(net).__name__
        raise ValueError(f"model {os.path.basename(str(source))} is a {net_dims}D model but the problem grid is "
                         f"{dims}D; pass a {dims}D model")
    return net


def decoupled_cells(n: int, matrix=None, cell_types=None):
    """Cells the network must not see: identity rows of A (solid/air) and non-FLUID cells.

    Returns ``(decoupled bool array, diagonal of A or ones)``; shared by the NumPy
    and torch drivers so both mask exactly the same cells.
    """
    decoupled = np.zeros(n, dtype=bool)
    diag = np.ones(n)
    if matrix is not None:
        diag = matrix.diagonal().astype(np.float64)
        decoupled = np.diff(matrix.indptr) <= 1
    if cell_types is not None:
        ct = np.asarray(cell_types)
        if ct.size != n:
            raise ValueError(f"cell_types has {ct.size} cells but A has {n} rows")
        decoupled |= ~fluid_mask(ct)
    return decoupled, diag


# network -> {(grid shape, dtype): "seen" | "failed" | frozen module}; entries die with the network.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def inference_network(net, grid_shape, device, dtype):
    """``(module, optimized)``: the frozen TorchScript copy of ``net`` for this shape when worth it.

    See the module notes for when a copy is made; any failure to trace falls
    back to the eager network for good (same outputs, just slower).
    """
    import torch

    if (torch.device(device).type != "cpu" or getattr(net, "source_path", None) is None
            or os.environ.get("LINSOLVE_JIT", "1") == "0" or not hasattr(torch.jit, "optimize_for_inference")):
        return net, False
    per_net = _COMPILED.setdefault(net, {})
    key = (tuple(grid_shape), dtype)
    entry = per_net.get(key)
    if entry is None:  # a one-off solve would not earn the tracing time back
        per_net[key] = "seen"
        return net, False
    if isinstance(entry, str) and entry == "seen":
        try:
            example = torch.zeros((1, 1) + tuple(grid_shape), dtype=dtype)
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings about the shape checks, fixed for this shape
                entry = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net.eval(), example)))
        except Exception:  # pragma: no cover - depends on the torch build
            entry = "failed"
        per_net[key] = entry
    return (net, False) if isinstance(entry, str) else (entry, True)


class NetworkDirection:
    """``r ↦ q``: the network's search direction for residual ``r``, on NumPy arrays or torch tensors.

    The fluid part of ``r`` (rows with off-diagonal entries and, when given,
    FLUID cells of ``cell_types``) is scaled to unit RMS and fed to the
    network; its output is restricted to the fluid cells, and decoupled rows
    (solid/air identity rows) get their exact Jacobi value ``r_i / a_ii``.
    A NumPy ``r`` (float64) gives a NumPy ``q`` (the host path of the NumPy
    DCDM driver); a tensor ``r`` on ``device`` gives a tensor ``q`` there
    without host copies (the torch backend).

    A network whose parameters live on another device is copied there: the
    caller's module is never moved behind their back.

    Parameters
    ----------
    net : torch.nn.Module
        Maps ``(1, 1, *grid_shape)`` to the same shape.
    grid_shape : tuple
    matrix : scipy sparse matrix or None
        Used to find decoupled rows (a single diagonal entry: solid / air cells).
    cell_types : int array, optional
        Non-FLUID cells are masked out of the network's input and output.
    device : str or torch.device
        Where the network runs.

    Examples
    --------
    >>> import numpy as np, torch, linsolve
    >>> from linsolve.learn.networks import DCDMNet
    >>> from linsolve.precond.learned import NetworkDirection
    >>> A = linsolve.problems.poisson((8, 8))
    >>> d = NetworkDirection(DCDMNet(dims=2, channels=2, n_down=1, n_coarse=1, n_up=1), (8, 8), A)
    >>> d(np.ones(64)).shape, d(torch.ones(64, dtype=torch.float64)).shape
    ((64,), torch.Size([64]))
    """

    def __init__(self, net, grid_shape, matrix=None, cell_types=None, device="cpu"):
        import torch

        self.torch = torch
        self.grid_shape = tuple(grid_shape)
        self.device = torch.device(device)
        n = int(np.prod(self.grid_shape))
        decoupled, diag = decoupled_cells(n, matrix, cell_types)
        self.fluid = ~decoupled
        self.n_fluid = int(self.fluid.sum())
        self.all_fluid = self.n_fluid == n
        self.decoupled_idx = np.flatnonzero(decoupled)
        safe = diag[self.decoupled_idx]
        safe[safe == 0] = 1.0
        self.decoupled_diag = safe
        self._device_masks = {}
        self.net_time_s = 0.0
        self.calls = 0
        params = list(net.parameters())
        self.net_dtype = params[0].dtype if params else torch.float32
        if params and params[0].device != self.device:
            import copy

            net = copy.deepcopy(net).to(self.device)  # never move a caller's module behind their back
        self.net, self.optimized = inference_network(net.eval(), self.grid_shape, self.device, self.net_dtype)

    def __call__(self, r):
        if isinstance(r, np.ndarray):
            return self._host(r)
        return self._on_device(r)

    def _host(self, r: np.ndarray) -> np.ndarray:
        torch = self.torch
        q = np.zeros(r.shape[0], dtype=np.float64)
        rf = r if self.all_fluid else np.where(self.fluid, r, 0.0)
        norm = float(np.linalg.norm(rf))
        if norm > 0 and np.isfinite(norm):
            scaled = rf * (math.sqrt(self.n_fluid) / norm)
            inp = torch.from_numpy(scaled.astype(np.float32, copy=False)).to(self.device, self.net_dtype)
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = self.net(inp.reshape((1, 1) + self.grid_shape))
            self.net_time_s += time.perf_counter() - t0
            self.calls += 1
            q = out.reshape(-1).to("cpu", torch.float64).numpy().copy()
            if not self.all_fluid:
                q[~self.fluid] = 0.0
        elif not np.isfinite(norm):
            q[:] = np.nan
        if self.decoupled_idx.size:
            q[self.decoupled_idx] = r[self.decoupled_idx] / self.decoupled_diag
        return q

    def _masks(self, dtype):
        """(fluid mask, 1/a_ii on decoupled rows else 0) as tensors on the device, per dtype."""
        if dtype not in self._device_masks:
            torch = self.torch
            inv = np.zeros(self.fluid.size)
            inv[self.decoupled_idx] = 1.0 / self.decoupled_diag
            self._device_masks[dtype] = (torch.from_numpy(self.fluid).to(self.device),
                                         torch.from_numpy(inv).to(self.device, dtype))
        return self._device_masks[dtype]

    def _on_device(self, r):
        # Every decision stays on the device (no host synchronisation): a zero r gives q = 0 by a mask.
        torch = self.torch
        fluid, inv_diag = self._masks(r.dtype)
        zero = torch.zeros((), dtype=r.dtype, device=r.device)
        rf = r if self.all_fluid else torch.where(fluid, r, zero)
        nrm = torch.linalg.vector_norm(rf)
        positive = nrm > 0
        scale = torch.where(positive, math.sqrt(self.n_fluid) / torch.where(positive, nrm, torch.ones_like(nrm)),
                            torch.zeros_like(nrm))
        inp = (rf * scale).to(torch.float32).to(self.net_dtype).view((1, 1) + self.grid_shape)
        out = self.net(inp).reshape(-1).to(r.dtype)
        self.calls += 1
        q = out * positive.to(r.dtype)
        if not self.all_fluid:
            q = torch.where(fluid, q, zero) + r * inv_diag
        return q


class LearnedPreconditioner(LinearOperator):
    """The network's direction scaled by the exact line search: ``M r = q (qᵀr)/(qᵀAq)``.

    Not linear and not symmetric: use it with DCDM or flexible Krylov methods
    (FCG, FGMRES). ``symmetric = False`` tells CG to refuse it.
    """

    symmetric = False

    def __init__(self, A_op, direction: NetworkDirection, model_name: str = ""):
        self._A = A_op
        self.direction = direction
        self.model_name = model_name
        self.grid_shape = direction.grid_shape
        super().__init__(dtype=np.dtype(np.float64), shape=A_op.shape)

    def _matvec(self, r):
        r = np.asarray(r, dtype=np.float64).ravel()
        q = self.direction(r)
        qAq = float(q @ self._A.matvec(q))
        if not (np.isfinite(qAq) and qAq > 0):
            return q
        return q * (float(q @ r) / qAq)

    def _rmatvec(self, r):
        raise NotImplementedError("the learned preconditioner is not symmetric and has no transpose")

    def __repr__(self) -> str:
        return f"<LearnedPreconditioner model={self.model_name!r} grid={self.grid_shape} (not symmetric)>"


def learned(A, model=None, grid_shape=None, *, cell_types=None, device="cpu") -> LearnedPreconditioner:
    """A trained network as a ``LinearOperator`` approximating ``A^-1`` (for DCDM / flexible methods).

    Parameters
    ----------
    A : sparse matrix, shape (n, n)
        Symmetric positive definite, unknowns in C order over the grid.
    model : None, str, path or torch.nn.Module
        ``None``: the shipped model for A's grid dimensionality
        (``"poisson2d-64"`` / ``"poisson3d-32"``); a shipped name
        (:func:`linsolve.models.available`, e.g. the multi-level
        ``"poisson3d-32-ml"``), a model file, or a network.
    grid_shape : tuple, optional
        ``(nx, ny)`` or ``(nx, ny, nz)``; by default read off A's sparsity pattern
        (:func:`linsolve.find_grid`).
    cell_types : int array, optional
        FLUID=0 cells are fed to the network, others are treated as decoupled.
    device : str
        Torch device for the network.

    Returns
    -------
    LearnedPreconditioner
        ``M @ r`` is the network direction ``q`` scaled by ``(qᵀr)/(qᵀAq)``.
        The map is **nonlinear and not symmetric** (``M.symmetric is False``):
        it is for :func:`linsolve.dcdm` and flexible Krylov methods; plain
        (P)CG theory does not apply to it and CG should refuse it.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> A = linsolve.problems.poisson((32, 32))
    >>> M = linsolve.precond.learned(A)
    >>> r = np.random.default_rng(0).standard_normal(A.shape[0])
    >>> z = M @ r
    >>> M.symmetric, z.shape, bool(r @ z > 0)
    (False, (1024,), True)
    """
    from .._optional import require_torch

    require_torch("the learned DCDM preconditioner (linsolve.precond.learned)")
    op, mat = as_operator(A, "A")
    if mat is not None:
        check_symmetric(mat)
    n = op.shape[0]
    shape = resolve_grid_shape(grid_shape, n, mat, model)
    net = resolve_model(model, len(shape))
    direction = NetworkDirection(net, shape, mat if mat is not None else None, cell_types, device=device)
    name = os.path.basename(getattr(net, "source_path", "") or "") or type(net).__name__
    return LearnedPreconditioner(op, direction, name)
