"""Training presets of the learned multigrid V-cycle (``linsolve train mg3d``).

Imported at the end of :mod:`linsolve.learn.presets`. A preset trains
:class:`linsolve.learn.multigrid.MGVCycle` on pressure systems of fluid frames
with obstacles (moving and fixed sphere, plume) and writes the model with
:func:`linsolve.models.save`; the shipped ``mg-fluid3d`` model is the ``mg3d``
preset with its defaults (see ``linsolve/models/weights/RECIPE.md``).
"""
from __future__ import annotations

import functools

from .presets import apply_options, register_preset

__all__ = ["MG_PRESETS", "mg_config"]

MG_PRESETS = {
    "mg3d": dict(
        description="learned multigrid V-cycle (cell-type-conditioned red-black relaxation, per-level coarse "
                    "correction) on 32^3 fluid frames with obstacles; a few minutes on 2 CPU cores",
        grid_shape=(32, 32, 32), steps=200, pcg_steps=6, lr=0.03, out="mg-fluid3d.safetensors"),
    "mg3d-quick": dict(
        description="tiny smoke test of the mg3d pipeline (16^3, 10 steps)",
        grid_shape=(16, 16, 16), steps=10, pcg_steps=4, lr=0.03, frames_per_scene=2,
        out="mg-fluid3d-quick.safetensors"),
}

_OPTION_FIELDS = {"seed": "seed", "threads": "threads", "out": "out", "lr": "lr", "grid": "grid_shape",
                  "epochs": "steps", "steps": "steps"}


def mg_config(name: str, options=None):
    """The :class:`~linsolve.learn.multigrid.MGTrainConfig` of preset ``name`` with ``options`` applied.

    Examples
    --------
    >>> from linsolve.learn.mg_presets import mg_config
    >>> mg_config("mg3d").grid_shape
    (32, 32, 32)
    """
    from .multigrid import MGTrainConfig

    if name not in MG_PRESETS:
        raise ValueError(f"unknown multigrid preset {name!r}; choose one of {sorted(MG_PRESETS)}")
    spec = {k: v for k, v in MG_PRESETS[name].items() if k != "description"}
    config = MGTrainConfig(preset=name, **spec)
    return apply_options(config, options, _OPTION_FIELDS)


def _train(name: str, options) -> str:
    from .multigrid import train_mg

    config = mg_config(name, options)
    train_mg(config)
    return config.out


for _name, _spec in MG_PRESETS.items():
    register_preset(_name, functools.partial(_train, _name), _spec["description"])
