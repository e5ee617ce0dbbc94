"""The registry of training presets: ``linsolve train NAME`` looks names up here.

Preset modules (:mod:`linsolve.learn.presets` for DCDM,
:mod:`linsolve.learn.mg_presets` for the learned multigrid) register
themselves with :func:`register_preset` when imported; they import this
module, never each other, and :func:`all_presets` loads them all.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Dict

__all__ = ["PRESETS", "Preset", "register_preset", "apply_options", "all_presets", "PRESET_MODULES"]

#: The modules that register presets (loaded by :func:`all_presets`).
PRESET_MODULES = ("linsolve.learn.presets", "linsolve.learn.mg_presets")


@dataclass
class Preset:
    name: str
    trainer: Callable
    description: str = ""


PRESETS: Dict[str, Preset] = {}


def register_preset(name: str, trainer: Callable, description: str = "") -> None:
    """Make ``linsolve train NAME`` call ``trainer(options) -> model path``.

    Examples
    --------
    >>> from linsolve.learn.presets import PRESETS, register_preset
    >>> register_preset("noop", lambda options: "none.safetensors", "does nothing")
    >>> PRESETS["noop"].trainer(None)
    'none.safetensors'
    >>> del PRESETS["noop"]
    """
    if not isinstance(name, str) or not name:
        raise ValueError("preset name must be a non-empty string")
    if not callable(trainer):
        raise TypeError(f"preset {name!r}: trainer must be callable")
    PRESETS[name] = Preset(name, trainer, description)


def apply_options(config, options, fields):
    """Copy the options a user set (not ``None``/``False``) onto ``config`` via ``{option: field}``.

    Shared by every preset family so ``linsolve train`` options mean the same everywhere.
    """
    for opt_name, field_name in fields.items():
        value = getattr(options, opt_name, None) if options is not None else None
        if value is not None and value is not False:
            setattr(config, field_name, tuple(value) if field_name == "grid_shape" else value)
    if options is not None and getattr(options, "no_progress", False):
        config.progress = False
    return config


def all_presets() -> Dict[str, Preset]:
    """:data:`PRESETS` with every module of :data:`PRESET_MODULES` imported (a missing one is skipped).

    Ordered by family (the order of :data:`PRESET_MODULES`, others last), then as registered, whatever
    order the modules were first imported in.

    Examples
    --------
    >>> from linsolve.learn.presets import all_presets
    >>> names = list(all_presets())
    >>> {"poisson3d-32", "mg3d"} <= set(names), names.index("poisson2d-64") < names.index("mg3d")
    (True, True)
    """
    for name in PRESET_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    order = {name: rank for rank, name in enumerate(PRESET_MODULES)}

    def family(item):
        trainer = item[1].trainer
        module = getattr(getattr(trainer, "func", trainer), "__module__", "")
        return order.get(module, len(order))

    ordered = sorted(PRESETS.items(), key=family)  # stable: registration order within a family
    PRESETS.clear()
    PRESETS.update(ordered)
    return PRESETS
