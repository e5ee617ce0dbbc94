"""Named training presets for ``linsolve train PRESET``.

A preset is a name, a description and a *trainer*: a callable taking an
options object (the parsed ``linsolve train`` arguments: ``out``, ``resume``,
``device``, ``seed``, ``epochs``... any of which may be ``None`` for "preset
default") and returning the path of the model it wrote. Other modules add
presets with :func:`register_preset`; :func:`all_presets` loads every preset
module (this one and :mod:`linsolve.learn.mg_presets`, which do not import
each other).

The DCDM presets are sized for a 2-core CPU (about 10-15 minutes each when the
machine is not shared); the
paper's settings (10,000 Lanczos steps, 20,000 samples, 1,000 epochs) are a
matter of passing larger ``--lanczos/--samples/--epochs``.
"""
from __future__ import annotations

import functools

from ._preset_registry import PRESETS, Preset, all_presets, apply_options, register_preset

__all__ = ["PRESETS", "Preset", "register_preset", "dcdm_config", "apply_options", "all_presets"]


# The 2D and 3D defaults. Recorded in each model's metadata and in models/weights/RECIPE.md.
# Sized for an idle 2-core CPU: 2,400 (2D, about 5 minutes) and 2,640 (3D, about 45 minutes, under the one-hour
# budget) Adam steps of batch 10 instead of the paper's ~2 million, hence lr 1e-3 rather than the paper's 1e-4. More --epochs train longer. The 3D network keeps
# the paper's structure with fewer convolutions (2/4/2 instead of 4/6/4) to afford more steps.
_DCDM_PRESETS = {
    "poisson2d-64": dict(
        grid_shape=(64, 64), net_config={"dims": 2, "channels": 16, "n_down": 4, "n_coarse": 6, "n_up": 4},
        n_lanczos=400, n_samples=800, epochs=30, batch_size=10, lr=1e-3,
        description="DCDM CNN (2D, paper layout 1+4/6/4, 16 channels) on the empty-domain 64x64 Poisson matrix"),
    "poisson3d-32": dict(
        grid_shape=(32, 32, 32), net_config={"dims": 3, "channels": 16, "n_down": 2, "n_coarse": 4, "n_up": 2},
        n_lanczos=400, n_samples=600, epochs=44, batch_size=10, lr=1e-3,
        description="DCDM CNN (3D, layout 1+2/4/2, 16 channels) on the empty-domain 32^3 Poisson matrix"),
    # Multi-level variant (issue 6, grid-growth goal): the same data and loss; three nested 2x pooling levels
    # (U-Net style, 2 residual convolutions on each side of the intermediate levels) so the receptive field
    # reaches across the grid instead of being fixed in cells. lr 3e-4: at 1e-3 the deeper network collapses
    # onto the trivial loss of 1 (q useless as a direction) in its first epochs and does not recover.
    "poisson3d-32-ml": dict(
        grid_shape=(32, 32, 32),
        net_config={"dims": 3, "channels": 16, "n_down": 2, "n_coarse": 4, "n_up": 2, "levels": 3, "n_mid": 2},
        n_lanczos=400, n_samples=600, epochs=15, batch_size=10, lr=3e-4,
        description="multi-level DCDM CNN (3D, 3 pooling levels, 1+2/2/2/4/2/2/2 convs, 16 channels) on the "
                    "empty-domain 32^3 Poisson matrix"),
}

_OPTION_FIELDS = {"epochs": "epochs", "samples": "n_samples", "lanczos": "n_lanczos", "batch_size": "batch_size",
                  "lr": "lr", "seed": "seed", "device": "device", "threads": "threads", "grid": "grid_shape",
                  "checkpoint_dir": "checkpoint_dir", "out": "out", "resume": "resume"}


def dcdm_config(name: str, options=None):
    """The :class:`~linsolve.learn.train.TrainConfig` of a DCDM preset with ``options`` applied."""
    from .train import TrainConfig

    base = dict(_DCDM_PRESETS[name])
    config = TrainConfig(preset=name, threads=2, out=f"{name}.safetensors", **base)
    return apply_options(config, options, _OPTION_FIELDS)


def _train_dcdm(name: str, options) -> str:
    from .train import train

    config = dcdm_config(name, options)
    train(config)
    return config.out


for _name, _spec in _DCDM_PRESETS.items():
    register_preset(_name, functools.partial(_train_dcdm, _name), _spec["description"])
