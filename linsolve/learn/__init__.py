"""Learning: Ritz-vector training data, network architectures (torch), losses, training loops and presets.

Nothing here knows which Krylov method consumes a trained model. ``data``
needs only NumPy/SciPy; ``networks``, ``losses`` and ``train`` import torch,
which this package loads only when one of those names is first used.
"""
from .data import RitzData, lanczos, ritz_dataset, ritz_vectors

__all__ = ["lanczos", "ritz_vectors", "ritz_dataset", "RitzData", "TrainConfig", "train_network", "build_network",
           "register_architecture", "register_preset", "PRESETS", "dcdm_loss", "DCDMNet"]

_LAZY = {
    "TrainConfig": "train", "train_network": "train", "build_network": "networks", "register_architecture": "networks",
    "DCDMNet": "networks", "dcdm_loss": "losses", "register_preset": "presets", "PRESETS": "presets",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        # ``train`` is also the submodule's name, so the function is exported as ``train_network``.
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
