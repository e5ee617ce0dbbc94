"""Optional dependencies: one place that says how to install what is missing.

``pip install linsolve`` covers the solvers, preconditioners (the learned
multigrid included: its weights are read with NumPy), problems, tuning and
the SciPy drop-ins. PyTorch is the ``[torch]`` extra: DCDM, network models,
training and the torch backend need it and call :func:`require_torch`.
"""
from __future__ import annotations

__all__ = ["require_torch", "TORCH_EXTRA"]

#: What to tell a user whose installation lacks PyTorch.
TORCH_EXTRA = "pip install 'linsolve[torch]'"


def require_torch(feature: str):
    """Import and return ``torch``, or raise ``ImportError`` naming ``feature`` and the extra to install.

    Examples
    --------
    >>> from linsolve._optional import require_torch
    >>> require_torch("DCDM").__name__
    'torch'
    """
    try:
        import torch
    except ImportError:
        raise ImportError(f"{feature} needs PyTorch, which is not installed here; {TORCH_EXTRA}") from None
    return torch
