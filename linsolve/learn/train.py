"""Training loop with atomic per-epoch checkpoints and exact resume (the CLI is :mod:`linsolve.cli.train`).

Training is a function of a :class:`TrainConfig`: build the matrix, generate
(or reload) the Ritz-vector data, build the network from the architecture
registry, then Adam on the DCDM loss. After every epoch a checkpoint (model,
optimizer state, RNG states, epoch, loss log) is written atomically as a
safetensors file (never pickle), and ``resume=True`` continues from it. The
data order of epoch ``e`` comes from ``numpy.random.default_rng([seed, 2, e])``,
so an interrupted and resumed run visits the same batches as an uninterrupted
one and ends at the same loss.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .._io import MissingFileError

__all__ = ["TrainConfig", "train", "train_network", "build_matrix"]


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved into the model's metadata).

    ``out`` is the final model file; ``checkpoint_dir`` (default ``out`` with
    ``.ckpt`` instead of its suffix) holds ``checkpoint.safetensors``, the cached
    data set and ``log.json``.
    """

    preset: str = "custom"
    grid_shape: tuple = (32, 32)
    matrix: str = "poisson"
    architecture: str = "dcdm"
    net_config: dict = field(default_factory=dict)
    n_lanczos: int = 200
    n_samples: int = 400
    theta: Optional[int] = None
    epochs: int = 10
    batch_size: int = 10
    lr: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = None
    out: str = "model.safetensors"
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    progress: bool = True
    description: str = ""

    def checkpoint_folder(self) -> str:
        if self.checkpoint_dir:
            return self.checkpoint_dir
        base = self.out[:-len(".safetensors")] if self.out.endswith(".safetensors") else self.out
        return base + ".ckpt"

    def validate(self) -> "TrainConfig":
        shape = tuple(int(s) for s in self.grid_shape)
        if len(shape) not in (2, 3) or any(s < 2 for s in shape):
            raise ValueError(f"grid_shape must be 2 or 3 sizes >= 2, got {self.grid_shape!r}")
        self.grid_shape = shape
        for name in ("n_lanczos", "n_samples", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.matrix not in _MATRICES:
            raise ValueError(f"matrix must be one of {sorted(_MATRICES)}, got {self.matrix!r}")
        return self


def _poisson(shape):
    from ..problems import poisson

    return poisson(shape)


def _fluid_tank(shape):
    """The pressure matrix of the smoke scenes without an obstacle (``fluid_sequence``'s ``smoke_plume``):
    one-cell solid walls on every side but the top of axis 1, which is open (Dirichlet)."""
    from ..problems import FLUID, SOLID, pressure_matrix

    types = np.full(tuple(shape), FLUID, dtype=np.int8)
    for axis in range(len(shape)):
        index = [slice(None)] * len(shape)
        index[axis] = 0
        types[tuple(index)] = SOLID
        if axis != 1:
            index[axis] = -1
            types[tuple(index)] = SOLID
    return pressure_matrix(types)


# Empty-domain Poisson is the paper's training matrix; the tank has the smoke scenes' boundary conditions
# (Neumann walls, open top), whose low modes a Dirichlet-trained network has never seen.
_MATRICES = {"poisson": _poisson, "fluid-tank": _fluid_tank}


def build_matrix(config: TrainConfig):
    """The training matrix named by ``config.matrix`` on ``config.grid_shape`` (CSR, float64)."""
    return _MATRICES[config.matrix](tuple(config.grid_shape))


def _resolve_device(device: str):
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: unknown torch device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available in this torch installation")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available")
    return dev


def _data(config: TrainConfig, A, folder: str):
    """Ritz samples, cached beside the checkpoint so a resumed run reuses the exact same data."""
    from .._io import atomic_save_npy, atomic_write_json
    from .data import ritz_dataset

    recipe_key = {"matrix": config.matrix, "grid_shape": list(config.grid_shape), "n_lanczos": config.n_lanczos,
                  "n_samples": config.n_samples, "theta": config.theta, "seed": config.seed}
    data_path = os.path.join(folder, "data.npy")
    meta_path = os.path.join(folder, "data.json")
    if os.path.exists(data_path) and os.path.exists(meta_path):
        with open(meta_path) as handle:
            cached = json.load(handle)
        if cached.get("key") == recipe_key:
            samples = np.load(data_path, allow_pickle=False)
            if samples.shape == (config.n_samples, A.shape[0]):
                return samples, cached["recipe"]
    t0 = time.perf_counter()
    data = ritz_dataset(A, config.n_lanczos, config.n_samples, seed=config.seed, theta=config.theta)
    recipe = dict(data.recipe, matrix=config.matrix, grid_shape=list(config.grid_shape),
                  seconds=round(time.perf_counter() - t0, 2))
    decoupled = _decoupled(A)
    if decoupled.any():
        # The solvers never show the network solid/air cells (identity rows), so neither does training: the
        # identity block's Ritz vector is dropped by zeroing those cells, and the samples renormalised.
        data.samples[:, decoupled] = 0.0
        data.samples /= np.linalg.norm(data.samples, axis=1, keepdims=True)
        recipe["decoupled_cells_zeroed"] = int(decoupled.sum())
    atomic_save_npy(data_path, data.samples)
    atomic_write_json(meta_path, {"key": recipe_key, "recipe": recipe})
    return data.samples, recipe


def _decoupled(A) -> np.ndarray:
    """Identity rows of A (solid/air cells of a pressure matrix), as the learned operators find them."""
    from ..precond.learned import decoupled_cells

    return decoupled_cells(A.shape[0], A)[0]


def _optimizer_to_tensors(opt):
    """Split an optimizer state dict into tensors (safetensors) and JSON (param groups, scalars)."""
    import torch

    state = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    groups = json.loads(json.dumps(state["param_groups"], default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_tensors(opt, tensors, meta):
    state: dict = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _save_checkpoint(path, net, opt, epoch, log, config):
    import torch

    from .._io import atomic_write_bytes
    from ..models._format import encode

    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    opt_tensors, opt_meta = _optimizer_to_tensors(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"kind": "checkpoint", "epoch": epoch, "loss_log": log, "optimizer": opt_meta,
            "architecture": net.architecture, "config": net.config, "dims": net.dims,
            "train_config": _config_dict(config)}
    atomic_write_bytes(path, encode(tensors, meta))


def _load_checkpoint(path, net, opt, config):
    import torch

    from ..models._format import decode

    tensors, meta = decode(path)
    if meta.get("kind") != "checkpoint":
        raise ValueError(f"{path} is not a training checkpoint")
    saved = meta.get("train_config", {})
    for key in ("grid_shape", "architecture", "net_config", "n_samples", "n_lanczos", "batch_size", "seed",
                "matrix"):
        if key in saved and saved[key] != _config_dict(config)[key]:
            raise ValueError(f"cannot resume: checkpoint {path} was written with {key}={saved[key]!r}, "
                             f"this run has {_config_dict(config)[key]!r}")
    net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    _optimizer_from_tensors(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(meta["epoch"]), list(meta["loss_log"])


def _config_dict(config: TrainConfig) -> dict:
    d = dataclasses.asdict(config)
    d["grid_shape"] = list(config.grid_shape)
    return json.loads(json.dumps(d))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def train(config: TrainConfig, *, matrix=None, on_epoch_end: Optional[Callable] = None):
    """Train a network on Ritz-vector data of one matrix with the DCDM loss.

    Parameters
    ----------
    config : TrainConfig
    matrix : sparse matrix, optional
        Overrides ``config.matrix`` (e.g. a pressure matrix with obstacles).
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, loss)`` after each epoch's checkpoint is written
        (raising from it stops training; the checkpoint stays usable).

    Returns
    -------
    net : torch.nn.Module
        The trained network; it is also written to ``config.out`` with metadata.
    log : list of float
        Mean training loss of each epoch.

    Examples
    --------
    >>> import os, tempfile
    >>> from linsolve.learn.train import TrainConfig, train
    >>> cfg = TrainConfig(grid_shape=(8, 8), n_lanczos=20, n_samples=8, epochs=1, batch_size=4,
    ...                   net_config={"dims": 2, "channels": 4, "n_down": 1, "n_coarse": 1, "n_up": 1},
    ...                   out=os.path.join(tempfile.mkdtemp(), "m.safetensors"), progress=False)
    >>> net, log = train(cfg)
    >>> len(log), os.path.exists(cfg.out)
    (1, True)
    """
    import torch
    from tqdm.auto import tqdm

    from .. import models
    from .losses import dcdm_loss, sparse_to_torch
    from .networks import build_network

    config.validate()
    device = _resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    folder = config.checkpoint_folder()
    os.makedirs(folder, exist_ok=True)
    ckpt_path = os.path.join(folder, "checkpoint.safetensors")
    t_start = time.perf_counter()
    # Before the (minutes-long) data step: a missing checkpoint is a typo, not a reason to build data.
    if config.resume and not os.path.exists(ckpt_path):
        raise MissingFileError(f"--resume: no checkpoint at {ckpt_path}")

    A = matrix if matrix is not None else build_matrix(config)
    n = A.shape[0]
    if n != int(np.prod(config.grid_shape)):
        raise ValueError(f"matrix has {n} rows but grid_shape {config.grid_shape} has "
                         f"{int(np.prod(config.grid_shape))} cells")
    samples, recipe = _data(config, A, folder)
    A_t = sparse_to_torch(A, device=device)

    net_config = dict(config.net_config)
    net_config.setdefault("dims", len(config.grid_shape))
    if net_config["dims"] != len(config.grid_shape):
        raise ValueError(f"net_config dims={net_config['dims']} but grid_shape {config.grid_shape} is "
                         f"{len(config.grid_shape)}D")
    torch.manual_seed(config.seed)
    net = build_network(config.architecture, net_config).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    start_epoch, log = 0, []
    if config.resume:
        start_epoch, log = _load_checkpoint(ckpt_path, net, opt, config)
    elif os.path.exists(ckpt_path):
        os.remove(ckpt_path)  # a fresh run must not be confused with an old checkpoint later

    n_batches = -(-config.n_samples // config.batch_size)
    shape = (1,) + tuple(config.grid_shape)
    coupled = ~_decoupled(A)
    # Inputs at unit RMS over the coupled cells and outputs restricted to them, as the solvers do.
    scale = float(np.sqrt(coupled.sum()))
    out_mask = None if coupled.all() else torch.from_numpy(coupled.astype(np.float32)).to(device).reshape(shape)
    bar = tqdm(total=(config.epochs - start_epoch) * n_batches, disable=not config.progress,
               desc=f"train {config.preset}", unit="batch", dynamic_ncols=True,
               mininterval=2.0)
    try:
        for epoch in range(start_epoch, config.epochs):
            net.train()
            order = np.random.default_rng([config.seed, 2, epoch]).permutation(config.n_samples)
            total = 0.0
            for k in range(n_batches):
                idx = np.sort(order[k * config.batch_size:(k + 1) * config.batch_size])
                b = torch.from_numpy(samples[idx]).to(device)
                q = net((b * scale).reshape((len(idx),) + shape))
                if out_mask is not None:
                    q = q * out_mask
                loss = dcdm_loss(q, b, A_t)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4g}")
            log.append(total / config.n_samples)
            _save_checkpoint(ckpt_path, net, opt, epoch + 1, log, config)
            _write_log(folder, log, config)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, log[-1])
    finally:
        bar.close()

    net.eval()
    meta = {"preset": config.preset, "description": config.description, "data_recipe": recipe,
            "train_config": _config_dict(config), "loss_curve": log, "final_loss": log[-1] if log else None,
            "grid_shape_trained": list(config.grid_shape), "train_seconds": round(time.perf_counter() - t_start, 1),
            "peak_rss_mb": round(_peak_rss_mb(), 1), "torch_threads": torch.get_num_threads(),
            "command": "linsolve train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train"] else None}
    models.save(net.to("cpu"), config.out, meta)
    return net, log


train_network = train


def _write_log(folder, log, config):
    from .._io import atomic_write_json

    atomic_write_json(os.path.join(folder, "log.json"),
                      {"preset": config.preset, "epochs_done": len(log), "loss_per_epoch": log})
