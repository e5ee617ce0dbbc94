"""``linsolve train PRESET_OR_CONFIG``: the command line of training.

Looks the preset up in :func:`linsolve.learn.presets.all_presets` (DCDM and
learned-multigrid presets) and calls its trainer with the parsed options;
training itself is :func:`linsolve.learn.train.train` and
:func:`linsolve.learn.multigrid.train_mg`, functions of a config.
"""
from __future__ import annotations

import argparse
import json
import os

from .._argtypes import OneLineParser, positive_float, positive_int
from .._io import MissingFileError
from ..learn._preset_registry import all_presets

__all__ = ["build_parser", "main"]


def _grid(text: str) -> tuple:
    try:
        shape = tuple(int(s) for s in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a grid like 64x64 or 32x32x32, got {text!r}") from None
    if len(shape) not in (2, 3) or any(s < 2 for s in shape):
        raise argparse.ArgumentTypeError(f"expected 2 or 3 sizes >= 2, got {text!r}")
    return shape


def _config_value(parser: argparse.ArgumentParser, config: str, key: str, value):
    """A config-file value converted and checked by the option's own argparse type."""
    action = next((a for a in parser._actions if a.dest == key.replace("-", "_")), None)
    if isinstance(action, argparse._StoreTrueAction):
        if not isinstance(value, bool):
            raise ValueError(f"config file {config}: {key!r} must be true or false, got {value!r}")
        return value
    if key.replace("-", "_") == "grid" and isinstance(value, (list, tuple)):
        value = "x".join(str(v) for v in value)
    if isinstance(value, (dict, list, bool)) or value is None:
        raise ValueError(f"config file {config}: {key!r} has an invalid value {value!r}")
    convert = action.type if action is not None and action.type is not None else str
    try:
        return convert(str(value))
    except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
        raise ValueError(f"config file {config}: {key!r}: {exc}") from None


def _check_writable(path: str) -> None:
    """Refuse an output path that could not be written, before hours of training, not after."""
    target = os.path.abspath(os.fspath(path))
    if os.path.isdir(target):
        raise ValueError(f"--out {path!r} is a directory; give a file name such as {os.path.join(path, 'model.safetensors')!r}")
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise ValueError(f"--out {path!r}: the folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--out {path!r}: the folder {folder!r} is not writable")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="linsolve train",
        description="Train a learned model from a preset name or a JSON config file "
                    "({\"preset\": NAME, ...overrides}). Writes a checkpoint every epoch; --resume continues.")
    parser.add_argument("preset", nargs="?", help="preset name (see --list / `list`) or path to a JSON config")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.add_argument("--out", default=None, help="model file to write (default ./PRESET.safetensors)")
    parser.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default OUT with .ckpt)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--device", default=None, help="torch device (cpu, cuda, cuda:1, mps)")
    parser.add_argument("--seed", type=int, default=None, help="seed of data, initialisation and batch order")
    parser.add_argument("--epochs", type=positive_int, default=None)
    parser.add_argument("--samples", type=positive_int, default=None, help="number of Ritz samples")
    parser.add_argument("--lanczos", type=positive_int, default=None, help="Lanczos steps")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--lr", type=positive_float, default=None)
    parser.add_argument("--grid", type=_grid, default=None, help="training grid, e.g. 64x64")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default 2)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv=None) -> int:
    """Entry point of ``linsolve train`` (``argv`` excludes the word ``train``).

    Examples
    --------
    >>> from linsolve.cli.train import main
    >>> main(["--list"])  # doctest: +ELLIPSIS
    poisson2d-64 ...
    0
    """
    PRESETS = all_presets()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset == "list":  # `linsolve train list` (the top-level parser does not pass a leading --list)
        args.list = True
    if args.list:
        for name, preset in PRESETS.items():
            print(f"{name:16s} {preset.description}")
        return 0
    from .._optional import require_torch

    require_torch("training (linsolve train)")
    if not args.preset:
        parser.error("a preset name or config file is required (see --list)")
    name = args.preset
    if name.endswith(".json") or (os.path.exists(name) and name not in PRESETS):
        if not os.path.exists(name):
            raise MissingFileError(f"config file not found: {name}")
        with open(name) as handle:
            try:
                overrides = json.load(handle)
            except json.JSONDecodeError as exc:
                raise ValueError(f"config file {name} is not valid JSON: {exc}") from None
        if not isinstance(overrides, dict) or "preset" not in overrides:
            raise ValueError(f"config file {name} must be a JSON object with a 'preset' key")
        config_name = name
        name = overrides.pop("preset")
        # The file's values go through the same checks as the command line's (--epochs -5 is refused
        # there, so it is here); options given on the command line win.
        for key, value in overrides.items():
            attr = key.replace("-", "_")
            if not hasattr(args, attr) or attr in ("preset", "list"):
                raise ValueError(f"config file {config_name}: unknown option {key!r}")
            if getattr(args, attr) not in (None, False):
                continue
            setattr(args, attr, _config_value(parser, config_name, key, value))
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    if args.out is None:
        args.out = f"{name}.safetensors"
    _check_writable(args.out)
    args.preset = name
    path = PRESETS[name].trainer(args)
    print(f"model written to {path}")
    return 0
