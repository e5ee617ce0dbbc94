"""``Instance``: one system of a sequence (a simulation frame, a tuning episode)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import scipy.sparse as sp

__all__ = ["Instance", "FLUID", "SOLID", "AIR"]

from .._grid import AIR, FLUID, SOLID  # the cell codes, defined once in linsolve._grid


@dataclass
class Instance:
    """One linear system ``A x = b`` of a sequence.

    ``context`` is the scalar feature a contextual tuner sees (or ``None``);
    grid problems also carry ``grid_shape`` and ``cell_types`` (FLUID=0,
    SOLID=1, AIR=2); ``x_prev`` is the previous frame's solution when the
    sequence has one (for warm starts).
    """

    A: sp.csr_matrix
    b: np.ndarray
    context: Optional[float] = None
    grid_shape: Optional[tuple] = None
    cell_types: Optional[np.ndarray] = None
    x_prev: Optional[np.ndarray] = None
    index: int = 0
    extras: Dict[str, Any] = field(default_factory=dict)
