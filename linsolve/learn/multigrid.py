"""Learning the multigrid smoothing in torch (training) — architecture ``"mg-stencil"``.

The model conditions the smoothing of :mod:`linsolve.precond.hierarchy` on the
local stencil: on every level a cell's point relaxation is

    omega = omega_lo + (omega_hi - omega_lo) * sigmoid(bias_g + weights_g . features(cell))

with the scale-free features of :func:`linsolve.kernels.multigrid.stencil_features`
(sorted axis couplings over the diagonal, Dirichlet share of the row,
off-axis share, coefficient contrast), so the same few numbers adapt to
anisotropy, free-surface rows and density jumps wherever they occur. Each
parameter group ``g`` (finest level / middle levels / level above the
coarsest, see :func:`~linsolve.precond.multigrid.parameter_group`) also has a
coarse-correction scale ``exp(log_correction_g)`` and a line-block relaxation
``omega_lo + (omega_hi - omega_lo) * sigmoid(line_bias_g)``.

Whatever the parameters, one V-cycle stays linear, symmetric and positive
definite (relaxations in (0, 2), positive corrections), so PCG can use it. At
initialisation (zero weights, omega = 1, unit corrections) the model equals
the classical twin :func:`~linsolve.precond.multigrid.geometric_mg`.

Training runs the one V-cycle of :mod:`linsolve.precond.hierarchy` with the
torch kernels (:class:`~linsolve.backends.torch_kernels.TorchCycleKernels`) and
minimises ``mean log(||r_k|| / ||b||)`` after ``k`` PCG iterations on pressure
systems from every fluid scene, 2D or 3D (unsupervised: no solutions needed).
Inference needs no torch (:func:`linsolve.precond.multigrid.fast_learned`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from .._optional import require_torch
from ..kernels import multigrid as K
from ..precond.multigrid import MODEL_ARCHITECTURE, level_features, parameter_group

torch = require_torch("training the learned multigrid")
nn = torch.nn

__all__ = ["MGStencilModel", "TrainingSystem", "MGTrainConfig", "train_mg", "pcg_loss", "training_systems",
           "SCENES_2D", "SCENES_3D"]

ARCHITECTURE = MODEL_ARCHITECTURE


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class MGStencilModel(nn.Module):
    """Learned parameters of the multigrid smoothing (see the module docstring).

    Parameters
    ----------
    dims : int
        Grid dimensionality the model is trained for (recorded; inference
        refuses grids of the other dimensionality).
    n_groups : int
        Parameter groups (see :func:`linsolve.precond.multigrid.parameter_group`).
    omega_lo, omega_hi : float
        Range of the relaxations, ``0 < omega_lo < 1 < omega_hi < 2``.

    Examples
    --------
    >>> from linsolve.learn.multigrid import MGStencilModel
    >>> net = MGStencilModel(dims=2)
    >>> p = net.numpy_parameters()
    >>> p["weights"].shape, round(float(net.omega(p["bias"][0:1])[0]), 6)
    ((3, 6), 1.0)
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
        start = _logit((1.0 - omega_lo) / (omega_hi - omega_lo))  # omega = 1: the classical twin
        self.weights = nn.Parameter(torch.zeros(n_groups, K.N_FEATURES, dtype=torch.float64))
        self.bias = nn.Parameter(torch.full((n_groups,), start, dtype=torch.float64))
        self.log_correction = nn.Parameter(torch.zeros(n_groups, dtype=torch.float64))
        self.line_bias = nn.Parameter(torch.full((n_groups,), start, dtype=torch.float64))

    def omega(self, z):
        z = torch.as_tensor(z, dtype=torch.float64)
        return self.omega_lo + (self.omega_hi - self.omega_lo) * torch.sigmoid(z)

    def numpy_parameters(self) -> dict:
        """Parameters as the dict :func:`linsolve.precond.multigrid.fast_learned` accepts."""
        out = {k: getattr(self, k).detach().cpu().numpy().copy()
               for k in ("weights", "bias", "log_correction", "line_bias")}
        out.update(omega_lo=self.omega_lo, omega_hi=self.omega_hi, dims=self.dims, name="mg-stencil(torch)")
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - needs a matrix
        raise TypeError("MGStencilModel sets the smoothing of a multigrid hierarchy: use "
                        "linsolve.precond.multigrid.fast_learned(A, model=net) or TrainingSystem(A, ...)")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def _register():
    from .networks import register_architecture

    register_architecture(ARCHITECTURE, MGStencilModel)


_register()


class TrainingSystem:
    """One pressure system prepared for training: its hierarchy on the torch kernels, features and right-hand sides.

    ``B`` holds right-hand sides as columns (length-n arrays); their components
    in the null space of A (zero rows, closed regions) are removed so every
    column is consistent.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.learn.multigrid import MGStencilModel, TrainingSystem, pcg_loss
    >>> A = linsolve.problems.poisson((12, 12))
    >>> S = TrainingSystem(A, (12, 12), np.ones((144, 1)), coarse_size=16)
    >>> float(pcg_loss(MGStencilModel(dims=2), S, 2)) < 0
    True
    """

    def __init__(self, A, grid_shape, B, *, coarse_size: int = 64, device="cpu"):
        from ..backends.torch_kernels import TorchCycleKernels, _interior_mask
        from ..krylov.pcg import project_range
        from ..precond.multigrid import geometric_mg

        M = geometric_mg(A, grid_shape=grid_shape, coarse_size=coarse_size, precision="double", crop=False)
        self.hierarchy = H = M.hierarchy
        self.smoothing_steps = M.smoothing_steps  # the sweeps inference runs (DEFAULT_SMOOTHING_STEPS)
        self.kernels = TorchCycleKernels(H, device=device, dtype=torch.float64)
        self.features = [torch.from_numpy(level_features(L)).to(device) for L in H.levels]
        self.active = [torch.from_numpy(L.active > 0).to(device) for L in H.levels]
        self.diag = [torch.from_numpy(L.diag).to(device) for L in H.levels]
        B = np.asarray(B, dtype=np.float64).reshape(A.shape[0], -1)
        B = np.stack([project_range(B[:, j], H.zero_rows, H.closed_labels) for j in range(B.shape[1])], axis=1)
        keep = np.linalg.norm(B, axis=0) > 0
        interior = np.flatnonzero(_interior_mask(H.levels[0]))
        padded = np.zeros((H.levels[0].npad, int(keep.sum())))
        padded[interior] = B[:, keep]
        self.B = torch.from_numpy(padded).to(device)
        self.n_levels = len(H.levels)

    def set_model(self, net: MGStencilModel) -> None:
        """Relaxations, corrections and line relaxations of ``net`` on this hierarchy (differentiable)."""
        groups = net.weights.shape[0]
        relax, corr, lines = [], [], []
        for lev in range(self.n_levels):
            g = parameter_group(lev, self.n_levels, groups)
            z = net.bias[g] + net.weights[g] @ self.features[lev]
            omega = net.omega(z)
            d = self.diag[lev]
            positive = d > 0
            safe = torch.where(positive, d, torch.ones_like(d))
            relax.append(torch.where(positive, torch.where(self.active[lev], omega, torch.ones_like(omega)) / safe,
                                     torch.zeros_like(d)))
            corr.append(torch.exp(net.log_correction[g]))
            lines.append(net.omega(net.line_bias[g]))
        self.kernels.set_parameters(relax, corr, lines)

    def precondition(self, r):
        from ..precond.hierarchy import vcycle

        return vcycle(self.hierarchy, self.kernels, r, self.smoothing_steps)

    def matvec(self, x):
        return self.kernels._apply(0, x)


def pcg_loss(net: MGStencilModel, system: TrainingSystem, steps: int) -> torch.Tensor:
    """``mean log(||r_k|| / ||b||)`` after ``steps`` PCG iterations (columns of ``B`` independent).

    Scale-free (PCG ignores the scale of M) and a direct proxy of the iteration count.
    """
    system.set_model(net)
    b = system.B
    r = b.clone()
    x = torch.zeros_like(b)
    z = system.precondition(r)
    p = z
    rz = (r * z).sum(0)
    for _ in range(steps):
        Ap = system.matvec(p)
        alpha = rz / (p * Ap).sum(0)
        x = x + alpha * p
        r = r - alpha * Ap
        z = system.precondition(r)
        rz_new = (r * z).sum(0)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return torch.log(r.norm(dim=0) / b.norm(dim=0)).mean()


SCENES_3D = ("moving_sphere", "smoke_sphere", "dam_break", "rising_bubble", "moving_sphere_graded")
SCENES_2D = ("moving_sphere", "smoke_sphere", "dam_break", "rising_bubble", "moving_sphere_graded")


@dataclass
class MGTrainConfig:
    """A training run of the learned smoothing (saved in the model's metadata)."""

    preset: str = "mg3d"
    grid_shape: tuple = (24, 24, 24)
    scenes: tuple = SCENES_3D
    frames_per_scene: int = 2
    frame_stride: int = 4
    random_rhs: int = 2
    extra: tuple = ("stretched", "porous")
    steps: int = 150
    pcg_steps: int = 6
    lr: float = 0.02
    batch: int = 4
    eval_every: int = 10
    seed: int = 0
    threads: int = 2
    out: str = "mg-fluid3d.safetensors"
    progress: bool = True
    n_groups: int = 3
    coarse_sizes: tuple = (16, 128)
    log: list = field(default_factory=list)


def _extra_systems(kind: str, shape, rng):
    """Matrices beyond the simulated scenes: a stretched grid and a porous medium (trapped cells)."""
    from ..problems import porous_cells, pressure_matrix

    if kind == "stretched":
        h = [1.0] * len(shape)
        h[-1] = 1.0 / 8.0
        types = np.zeros(shape, dtype=np.int8)
        return pressure_matrix(types, h=tuple(h)), types
    if kind == "porous":
        types = porous_cells(shape, 0.25, seed=int(rng.integers(1 << 30)))
        return pressure_matrix(types), types
    raise ValueError(f"unknown extra training system {kind!r}; use 'stretched' or 'porous'")


def training_systems(config: MGTrainConfig):
    """``[(A, grid_shape, B)]``: frames of every scene (their own b plus random ones) and the extra matrices."""
    from ..problems import fluid_sequence

    rng = np.random.default_rng(config.seed)
    shape = tuple(config.grid_shape)
    out = []

    def cheap(A, b, x0):  # the simulation needs a pressure; its accuracy does not matter for training data
        from ..krylov.pcg import gmg_pcg_result

        return gmg_pcg_result(A, b, x0=x0, rtol=1e-4, grid_shape=shape)

    for scene in config.scenes:
        frames = config.frames_per_scene * config.frame_stride
        for k, inst in enumerate(fluid_sequence(shape, frames, scene=scene, seed=config.seed, solver=cheap,
                                                check=False)):
            if k % config.frame_stride != config.frame_stride - 1:
                continue
            out.append((inst.A, shape, _rhs(inst.A, inst.b, config.random_rhs, rng)))
    for kind in config.extra:
        A, _ = _extra_systems(kind, shape, rng)
        out.append((A, shape, _rhs(A, None, config.random_rhs, rng)))
    return out


def _rhs(A, b, count, rng):
    coupled = np.diff(A.indptr) > 1
    cols = [b] if b is not None and np.any(b) else []
    cols += [np.where(coupled, rng.standard_normal(A.shape[0]), 0.0) for _ in range(count)]
    return np.stack(cols, axis=1)


def train_mg(config: MGTrainConfig, *, systems=None, net: Optional[MGStencilModel] = None):
    """Train the learned smoothing; write ``config.out`` with :func:`linsolve.models.save`; return the net.

    Examples
    --------
    >>> import numpy as np, linsolve, os, tempfile
    >>> from linsolve.learn.multigrid import MGTrainConfig, train_mg
    >>> A = linsolve.problems.poisson((10, 10))
    >>> cfg = MGTrainConfig(steps=2, pcg_steps=2, out=os.path.join(tempfile.mkdtemp(), "m.safetensors"),
    ...                     progress=False, grid_shape=(10, 10), coarse_sizes=(16,))
    >>> net = train_mg(cfg, systems=[(A, (10, 10), np.ones((100, 1)))])
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
        prepared = [TrainingSystem(A, shape, B, coarse_size=int(c)) for A, shape, B in systems
                    for c in config.coarse_sizes]
        prepared = [S for S in prepared if S.n_levels >= 2 and S.B.shape[1] > 0]
        if not prepared:
            raise ValueError(f"the training grids are too small for a multigrid hierarchy with coarsest sizes "
                             f"{tuple(config.coarse_sizes)}; use larger grids or smaller coarse_sizes")
        dims = len(tuple(config.grid_shape))
        net = net if net is not None else MGStencilModel(dims=dims, n_groups=config.n_groups)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr)

        def full_loss():
            with torch.no_grad():
                return float(np.mean([pcg_loss(net, S, config.pcg_steps).item() for S in prepared]))

        # The twin is where training starts and the floor it keeps: the best parameters seen on the whole
        # training set are the ones saved, so the learned smoothing is never worse than the classical one there.
        start = full_loss()
        best, best_state = start, {k: v.detach().clone() for k, v in net.state_dict().items()}
        log = [{"step": 0, "loss": start, "full": True}]
        bar = None
        if config.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.steps, desc=ARCHITECTURE, unit="step")
        order = np.random.default_rng(config.seed)
        for step in range(1, config.steps + 1):
            picks = order.choice(len(prepared), size=min(config.batch, len(prepared)), replace=False)
            opt.zero_grad()
            loss = sum(pcg_loss(net, prepared[int(k)], config.pcg_steps) for k in picks) / len(picks)
            loss.backward()
            opt.step()
            log.append({"step": step, "loss": float(loss.item())})
            if step % config.eval_every == 0 or step == config.steps:
                current = full_loss()
                log.append({"step": step, "loss": current, "full": True})
                if current < best:
                    best, best_state = current, {k: v.detach().clone() for k, v in net.state_dict().items()}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}", best=f"{best:.3f}")
        if bar is not None:
            bar.close()
        net.load_state_dict(best_state)
        final = best
        config.log = log
        meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items() if k != "log"}
        models.save(net, config.out, metadata={
            "preset": config.preset, "training": meta, "loss_start": start, "loss_final": final,
            "loss_curve": [e["loss"] for e in log if not e.get("full")],
            "full_loss_curve": [[e["step"], e["loss"]] for e in log if e.get("full")],
            "train_seconds": time.perf_counter() - t0,
            "input_normalization": "none",
            "data_recipe": f"fluid_sequence{tuple(config.grid_shape)} scenes={list(config.scenes)} every "
                           f"{config.frame_stride}th of {config.frames_per_scene * config.frame_stride} frames, "
                           f"seed {config.seed}; extra matrices {list(config.extra)}; each with its own b (scenes) "
                           f"and {config.random_rhs} random right-hand sides; coarsest sizes "
                           f"{list(config.coarse_sizes)}"})
        net.train_loss = (start, final)
        return net
    finally:
        torch.set_num_threads(old_threads)
