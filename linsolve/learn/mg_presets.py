"""Training presets of the learned multigrid V-cycle (``linsolve train mg3d``).

Loaded by :func:`linsolve.learn.presets.all_presets` (it imports only the preset registry). A preset trains
:class:`linsolve.learn.multigrid.MGStencilModel` on pressure systems of every
fluid scene (obstacles, free surface, two-phase, graded grid) plus stretched
and porous grids, and writes the model with :func:`linsolve.models.save`; the
shipped ``mg-fluid3d`` / ``mg-fluid2d`` models are the ``mg3d`` / ``mg2d``
presets with their defaults (see ``linsolve/models/weights/RECIPE.md``).
"""
from __future__ import annotations

import functools

from ._preset_registry import apply_options, register_preset

__all__ = ["MG_PRESETS", "mg_config"]

MG_PRESETS = {
    "mg3d": dict(
        description="learned multigrid smoothing (stencil-conditioned relaxation, per-level coarse correction and "
                    "line relaxation) on 24^3 frames of every fluid scene plus stretched and porous grids",
        grid_shape=(24, 24, 24), steps=120, pcg_steps=6, lr=0.05, out="mg-fluid3d.safetensors"),
    "mg2d": dict(
        description="the 2D counterpart of mg3d, on 96^2 frames of every fluid scene plus stretched and porous grids",
        grid_shape=(96, 96), steps=120, pcg_steps=6, lr=0.05, coarse_sizes=(16, 64), out="mg-fluid2d.safetensors"),
    "mg3d-quick": dict(
        description="tiny smoke test of the mg3d pipeline (12^3, 5 steps)",
        grid_shape=(12, 12, 12), steps=5, pcg_steps=3, lr=0.05, frames_per_scene=1, frame_stride=1,
        scenes=("moving_sphere",), extra=("porous",), coarse_sizes=(16,), out="mg-fluid3d-quick.safetensors"),
}

_OPTION_FIELDS = {"seed": "seed", "threads": "threads", "out": "out", "lr": "lr", "grid": "grid_shape",
                  "epochs": "steps", "steps": "steps"}


def mg_config(name: str, options=None):
    """The :class:`~linsolve.learn.multigrid.MGTrainConfig` of preset ``name`` with ``options`` applied.

    Examples
    --------
    >>> from linsolve.learn.mg_presets import mg_config
    >>> mg_config("mg3d").grid_shape
    (24, 24, 24)
    """
    from .multigrid import MGTrainConfig

    if name not in MG_PRESETS:
        raise ValueError(f"unknown multigrid preset {name!r}; choose one of {sorted(MG_PRESETS)}")
    spec = {k: v for k, v in MG_PRESETS[name].items() if k != "description"}
    config = MGTrainConfig(preset=name, **spec)
    return apply_options(config, options, _OPTION_FIELDS)


def _train(name: str, options) -> str:
    from .multigrid import train_mg

    device = getattr(options, "device", None)
    if device not in (None, "cpu"):
        raise ValueError(f"--device {device!r}: the multigrid presets train on the CPU (a few minutes on 2 cores); "
                         f"leave --device out")
    if getattr(options, "resume", False):
        raise ValueError("--resume: the multigrid presets keep no checkpoint (they train in minutes); run again "
                         "without --resume")
    config = mg_config(name, options)
    train_mg(config)
    return config.out


for _name, _spec in MG_PRESETS.items():
    register_preset(_name, functools.partial(_train, _name), _spec["description"])
