"""The learned multigrid V-cycle in torch (training) — architecture ``"mg-vcycle"``.

The model is the hierarchy of :mod:`linsolve.precond.multigrid` with learned
parameters, kept small so it transfers across grid sizes:

* two parameter groups: the finest level, and all coarser levels (shared);
* per group a table ``(4, 27)`` and a bias: the red-black relaxation of every
  cell is ``omega_lo + (omega_hi - omega_lo) * sigmoid(bias + sum_o
  table[type(c + o), o])``, a linear function of the one-hot 3x3x3 cell-type
  patch (codes FLUID, SOLID, AIR, outside-the-grid) squashed into (0, 2);
* per group ``log_correction``: the coarse-grid correction is scaled by
  ``exp(log_correction) > 0``.

Whatever the parameters, one V-cycle stays linear in ``r``, symmetric (the
post-smoother is the adjoint of the pre-smoother, restriction is the
transpose of prolongation) and positive definite (``omega`` in (0, 2),
positive correction, SPD coarse solve), so PCG can use it. At initialisation
(zero tables, ``omega = 1``, unit corrections) it equals the classical twin
:func:`linsolve.precond.multigrid.geometric_mg`.

Training minimises ``mean log(||r_k|| / ||b||)`` after ``k`` PCG iterations
preconditioned by the V-cycle, on pressure systems of fluid frames with
obstacles (unsupervised: no solutions needed). Inference runs in NumPy/numba
(:func:`linsolve.precond.multigrid.fast_learned`) from the saved tensors.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from ..precond.multigrid import parameter_group

__all__ = ["MGVCycle", "TorchHierarchy", "MGTrainConfig", "train_mg", "pcg_loss", "training_systems"]

ARCHITECTURE = "mg-vcycle"


class MGVCycle(nn.Module):
    """Learned parameters of the multigrid V-cycle (see the module docstring).

    Parameters
    ----------
    dims : int
        Grid dimensionality the model was trained for (2D grids run as 3D
        with one layer, so a 3D model works on both).
    n_groups : int
        Parameter groups (see :func:`linsolve.precond.multigrid.parameter_group`).
    omega_lo, omega_hi : float
        Range of the relaxation, ``0 < omega_lo < omega_hi < 2``.

    Examples
    --------
    >>> from linsolve.learn.multigrid import MGVCycle
    >>> net = MGVCycle()
    >>> p = net.numpy_parameters()
    >>> p["tables"].shape, round(float(net.omega(p["bias"][0:1])[0]), 6)
    ((3, 4, 27), 1.0)
    """

    architecture = ARCHITECTURE

    def __init__(self, dims: int = 3, n_groups: int = 3, omega_lo: float = 0.2, omega_hi: float = 1.9):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
            raise ValueError(f"n_groups must be a positive int, got {n_groups!r}")
        if not (0 < omega_lo < 1 < omega_hi < 2):
            raise ValueError(f"need 0 < omega_lo < 1 < omega_hi < 2, got {omega_lo}, {omega_hi}")
        self.dims = int(dims)
        self.config = {"dims": int(dims), "n_groups": int(n_groups), "omega_lo": float(omega_lo),
                       "omega_hi": float(omega_hi)}
        self.omega_lo, self.omega_hi = float(omega_lo), float(omega_hi)
        start = (1.0 - omega_lo) / (omega_hi - omega_lo)  # omega = 1: Gauss-Seidel, the classical twin
        self.tables = nn.Parameter(torch.zeros(n_groups, 4, 27, dtype=torch.float64))
        self.bias = nn.Parameter(torch.full((n_groups,), math.log(start / (1 - start)), dtype=torch.float64))
        self.log_correction = nn.Parameter(torch.zeros(n_groups, dtype=torch.float64))

    def omega(self, z):
        z = torch.as_tensor(z, dtype=torch.float64)
        return self.omega_lo + (self.omega_hi - self.omega_lo) * torch.sigmoid(z)

    def numpy_parameters(self) -> dict:
        """Parameters as the dict :func:`linsolve.precond.multigrid.fast_learned` accepts."""
        return {"tables": self.tables.detach().cpu().numpy().copy(), "bias": self.bias.detach().cpu().numpy().copy(),
                "log_correction": self.log_correction.detach().cpu().numpy().copy(),
                "omega_lo": self.omega_lo, "omega_hi": self.omega_hi, "name": "mg-vcycle(torch)"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - needs a matrix
        raise TypeError("MGVCycle is applied through a matrix: use TorchHierarchy(A, cell_types).vcycle(net, r) "
                        "or linsolve.precond.multigrid.fast_learned(A, cell_types, model=net)")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def _register():
    try:
        from .networks import register_architecture
    except ImportError:  # pragma: no cover - networks not available
        return
    register_architecture(ARCHITECTURE, MGVCycle)


_register()


def _interp_1d(n: int, m: int) -> sp.csr_matrix:
    """Cell-centred linear interpolation from ``m`` to ``n`` cells (identity when ``n == m``)."""
    if n == m:
        return sp.identity(n, format="csr")
    rows, cols, vals = [], [], []
    for i in range(n):
        c = i // 2
        other = c - 1 if i % 2 == 0 else c + 1
        rows.append(i), cols.append(c), vals.append(0.75)
        if 0 <= other < m:
            rows.append(i), cols.append(other), vals.append(0.25)
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, m))


def _to_torch_sparse(mat) -> torch.Tensor:
    # CSR: ``csr @ dense`` is ~40x faster than COO ``sparse.mm`` on CPU and supports autograd.
    csr = sp.csr_matrix(mat)
    csr.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.tensor(csr.indptr, dtype=torch.int64),
                                       torch.tensor(csr.indices, dtype=torch.int64),
                                       torch.tensor(csr.data, dtype=torch.float64), csr.shape,
                                       check_invariants=False)


class _SpMM(torch.autograd.Function):
    """``M @ x`` with the transpose given, so backward avoids torch's slow CSR transpose."""

    @staticmethod
    def forward(ctx, M, MT, x):
        ctx.MT = MT
        return M @ x

    @staticmethod
    def backward(ctx, grad):
        return None, None, ctx.MT @ grad


def _mm(M, MT, x):
    return _SpMM.apply(M, MT, x)


class TorchHierarchy:
    """The V-cycle hierarchy of one matrix as torch tensors (for training and checks).

    Built from :class:`linsolve.precond.multigrid.GeometricMG` (same levels,
    masks and transfer scales), so ``vcycle(net, r)`` equals
    ``fast_learned(A, cell_types, model=net) @ r`` up to rounding. With
    ``device="cuda"`` the tensors live on the GPU (the model must be moved
    there too); every operation is a CSR product or an elementwise update.

    Examples
    --------
    >>> import numpy as np, torch, linsolve
    >>> from linsolve.learn.multigrid import MGVCycle, TorchHierarchy
    >>> A = linsolve.problems.poisson((8, 8, 8))
    >>> H = TorchHierarchy(A, grid_shape=(8, 8, 8), coarse_size=64)
    >>> z = H.vcycle(MGVCycle(), torch.ones(512, 1, dtype=torch.float64))
    >>> z.shape
    torch.Size([512, 1])
    """

    def __init__(self, A, cell_types=None, grid_shape=None, coarse_size: int = 512, device="cpu"):
        from ..precond.multigrid import GeometricMG, _grid_shape, _stencil_csr
        from ..precond.multigrid import FLUID, SOLID

        mat = sp.csr_matrix(A)
        shape = _grid_shape(mat.shape[0], grid_shape, cell_types)
        mg = GeometricMG(mat, shape, cell_types=cell_types, coarse_size=coarse_size)
        self.n = mat.shape[0]
        self.A0 = _to_torch_sparse(mat)
        self.levels = []
        for lev, L in enumerate(mg.levels):
            d = {}
            n_l = L.diag.size
            d["A"] = self.A0 if lev == 0 else _to_torch_sparse(_stencil_csr(L.diag, L.w0, L.w1, L.w2))
            d["diag"] = torch.tensor(L.diag.ravel(), dtype=torch.float64)[:, None]
            d["active"] = torch.tensor(L.active.ravel(), dtype=torch.float64)[:, None]
            idx = np.indices(L.shape).sum(axis=0).ravel() % 2
            d["red"] = torch.tensor(idx == 0, dtype=torch.float64)[:, None]
            d["black"] = 1.0 - d["red"]
            types = L.cell_types if L.cell_types is not None else np.where(L.active > 0, FLUID, SOLID)
            padded = np.pad(np.asarray(types, dtype=np.int64), 1, constant_values=3)
            onehot = np.stack([(padded == t) for t in range(4)]).astype(np.float64)
            d["onehot"] = torch.tensor(onehot)[None]
            if L.scale is not None:
                nxt = mg.levels[lev + 1]
                P = sp.kron(sp.kron(_interp_1d(L.shape[0], nxt.shape[0]), _interp_1d(L.shape[1], nxt.shape[1])),
                            _interp_1d(L.shape[2], nxt.shape[2]))
                P = sp.diags(L.scale.ravel()) @ P @ sp.diags(nxt.active.ravel())
                d["P"] = _to_torch_sparse(P)
                d["PT"] = _to_torch_sparse(P.T)
            else:
                dense = _stencil_csr(L.diag, L.w0, L.w1, L.w2).toarray()
                d["Binv"] = torch.tensor(np.linalg.inv(dense))
            d["n"] = n_l
            self.levels.append(d)
        if str(device) != "cpu":  # GPU inference/training: every tensor moves once, per matrix
            self.A0 = self.A0.to(device)
            for d in self.levels:
                for key, value in d.items():
                    if isinstance(value, torch.Tensor):
                        d[key] = value.to(device)
        self.device = torch.device(device)

    def relaxations(self, net: MGVCycle) -> list:
        out = []
        g = net.tables.shape[0]
        for lev, d in enumerate(self.levels[:-1]):
            p = parameter_group(lev, len(self.levels), g)
            weight = net.tables[p].reshape(1, 4, 3, 3, 3)
            z = torch.nn.functional.conv3d(d["onehot"], weight).reshape(-1, 1) + net.bias[p]
            omega = net.omega(z)
            omega = torch.where(d["active"] > 0, omega, torch.ones_like(omega))
            out.append(omega / d["diag"])
        return out

    def corrections(self, net: MGVCycle) -> list:
        g = net.tables.shape[0]
        return [torch.exp(net.log_correction[parameter_group(lev, len(self.levels), g)])
                for lev in range(len(self.levels))]

    def vcycle(self, net: MGVCycle, r: torch.Tensor, relax=None, corr=None) -> torch.Tensor:
        """One V-cycle applied to the columns of ``r`` (shape ``(n, k)``)."""
        relax = self.relaxations(net) if relax is None else relax
        corr = self.corrections(net) if corr is None else corr
        return self._cycle(0, r, relax, corr)

    def _cycle(self, lev, b, relax, corr):
        d = self.levels[lev]
        if "Binv" in d:
            return d["Binv"] @ b
        A, w = d["A"], relax[lev]
        x = d["red"] * w * b
        x = x + d["black"] * w * (b - _mm(A, A, x))
        r = b - _mm(A, A, x)
        e = self._cycle(lev + 1, _mm(d["PT"], d["P"], r), relax, corr)
        x = x + corr[lev] * _mm(d["P"], d["PT"], e)
        x = x + d["black"] * w * (b - _mm(A, A, x))
        x = x + d["red"] * w * (b - _mm(A, A, x))
        return x


def pcg_loss(net: MGVCycle, H: TorchHierarchy, b: torch.Tensor, steps: int) -> torch.Tensor:
    """``mean log(||r_k|| / ||b||)`` after ``steps`` PCG iterations (columns of ``b`` independent).

    Scale-free (PCG ignores the scale of M) and a direct proxy of the
    iteration count.
    """
    relax, corr = H.relaxations(net), H.corrections(net)
    A = H.A0
    r = b.clone()
    x = torch.zeros_like(b)
    z = H.vcycle(net, r, relax, corr)
    p = z
    rz = (r * z).sum(0)
    for _ in range(steps):
        Ap = _mm(A, A, p)
        alpha = rz / (p * Ap).sum(0)
        x = x + alpha * p
        r = r - alpha * Ap
        z = H.vcycle(net, r, relax, corr)
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return torch.log(r.norm(dim=0) / b.norm(dim=0)).mean()


@dataclass
class MGTrainConfig:
    """A training run of the learned V-cycle (saved in the model's metadata)."""

    preset: str = "mg3d"
    grid_shape: tuple = (32, 32, 32)
    scenes: tuple = ("moving_sphere", "smoke_sphere", "smoke_plume")
    frames_per_scene: int = 4
    frame_stride: int = 3
    random_rhs: int = 2
    steps: int = 200
    pcg_steps: int = 6
    lr: float = 0.03
    seed: int = 0
    threads: int = 1
    out: str = "mg-fluid3d.safetensors"
    progress: bool = True
    n_groups: int = 3
    coarse_sizes: tuple = (64, 512)
    log: list = field(default_factory=list)


def training_systems(config: MGTrainConfig):
    """``[(A, cell_types, B)]``: fluid frames (obstacles) with their ``b`` plus random right-hand sides."""
    from ..krylov.cg import cg_result
    from ..precond.multigrid import geometric_mg
    from ..problems import fluid_sequence

    rng = np.random.default_rng(config.seed)

    def quick_solver(A, b, x0):
        return cg_result(A, b, x0, rtol=1e-6, M=geometric_mg(A, grid_shape=config.grid_shape))

    systems = []
    for scene in config.scenes:
        frames = config.frames_per_scene * config.frame_stride
        for k, inst in enumerate(fluid_sequence(config.grid_shape, frames, scene=scene, seed=config.seed,
                                                solver=quick_solver, check=False)):
            if k % config.frame_stride != config.frame_stride - 1:
                continue
            fluid = (inst.cell_types == 0).ravel()
            cols = [inst.b] if np.any(inst.b) else []
            for _ in range(config.random_rhs):
                cols.append(np.where(fluid, rng.standard_normal(fluid.size), 0.0))
            systems.append((inst.A, inst.cell_types, np.stack(cols, axis=1)))
    return systems


def train_mg(config: MGTrainConfig, *, systems=None, net: Optional[MGVCycle] = None):
    """Train the learned V-cycle; write ``config.out`` with :func:`linsolve.models.save`; return the net.

    Examples
    --------
    >>> import numpy as np, linsolve, os, tempfile
    >>> from linsolve.learn.multigrid import MGTrainConfig, train_mg
    >>> A = linsolve.problems.poisson((8, 8, 8))
    >>> cfg = MGTrainConfig(steps=2, pcg_steps=2, out=os.path.join(tempfile.mkdtemp(), "m.safetensors"),
    ...                     progress=False, grid_shape=(8, 8, 8))
    >>> net = train_mg(cfg, systems=[(A, np.zeros((8, 8, 8), int), np.ones((512, 1)))])
    >>> os.path.exists(cfg.out)
    True
    """
    from .. import models

    torch.manual_seed(config.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.threads)))
    t0 = time.perf_counter()
    try:
        if systems is None:
            systems = training_systems(config)
        # Several coarsest sizes: the same matrix with shallow and deep hierarchies, so every parameter
        # group is trained in the roles it plays on larger grids.
        hierarchies = [(TorchHierarchy(A, types, coarse_size=int(c)), torch.tensor(B, dtype=torch.float64))
                       for A, types, B in systems for c in config.coarse_sizes]
        # A grid no larger than the coarsest size is solved directly: nothing to learn there.
        hierarchies = [(H, B) for H, B in hierarchies if len(H.levels) >= 2]
        if not hierarchies:
            raise ValueError(f"the training grids are too small for a multigrid hierarchy with coarsest sizes "
                             f"{tuple(config.coarse_sizes)}; use larger grids or smaller coarse_sizes")
        net = net if net is not None else MGVCycle(dims=len(config.grid_shape) if len(config.grid_shape) == 3 else 2,
                                                   n_groups=config.n_groups)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)
        with torch.no_grad():
            start = float(np.mean([pcg_loss(net, H, B, config.pcg_steps).item() for H, B in hierarchies]))
        log = [{"step": 0, "loss": start}]
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, desc="mg-vcycle", unit="step")
        order = np.random.default_rng(config.seed)
        for step in range(1, config.steps + 1):
            H, B = hierarchies[int(order.integers(len(hierarchies)))]
            opt.zero_grad()
            loss = pcg_loss(net, H, B, config.pcg_steps)
            loss.backward()
            opt.step()
            log.append({"step": step, "loss": float(loss.item())})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
        with torch.no_grad():
            final = float(np.mean([pcg_loss(net, H, B, config.pcg_steps).item() for H, B in hierarchies]))
        config.log = log
        meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k != "log"}
        models.save(net, config.out, metadata={
            "preset": config.preset, "training": meta, "loss_start": start, "loss_final": final,
            "loss_curve": [e["loss"] for e in log], "train_seconds": time.perf_counter() - t0,
            "input_normalization": "none",
            "data_recipe": f"fluid_sequence{tuple(config.grid_shape)} scenes={list(config.scenes)} "
                           f"every {config.frame_stride}th of {config.frames_per_scene * config.frame_stride} "
                           f"frames, seed {config.seed}, + {config.random_rhs} random fluid rhs per frame"})
        net.train_loss = (start, final)
        return net
    finally:
        torch.set_num_threads(old_threads)
