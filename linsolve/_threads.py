"""One BLAS thread around the Krylov loops.

CG's vector work (dot products, norms, axpys on vectors of 10^4 - 10^7
entries) is bound by memory bandwidth, so a second BLAS thread gains little;
on a busy CPU it loses badly: OpenBLAS threads spin after each call and fight
the compiled kernels and the caller's own threads for the cores. Measured on
the 2-core machine with another process busy: ``auto_cg`` on a 64^3 dam break
took 340 ms per solve with OpenBLAS's default threads, 80 ms with one.

``threadpoolctl`` walks the loaded libraries on every ``threadpool_limits``
(about 1 ms, as much as a whole small solve); the controller is built once and
reused (rebuilt when new modules were imported since), which makes entering the limit
cost microseconds.
"""
from __future__ import annotations

import contextlib
import sys

__all__ = ["limit_blas"]

_CONTROLLER = {}


def _controller():
    # A library loaded later (torch brings its own BLAS) comes with new Python modules: rebuild then.
    key = len(sys.modules)
    if _CONTROLLER.get("key") != key:
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl missing or failing on an odd BLAS
            controller = None
        _CONTROLLER.update(key=len(sys.modules), controller=controller)
    return _CONTROLLER["controller"]


def limit_blas():
    """A context manager that runs its block with one BLAS thread (a no-op without threadpoolctl).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._threads import limit_blas
    >>> with limit_blas():
    ...     float(np.dot(np.ones(4), np.ones(4)))
    4.0
    """
    controller = _controller()
    if controller is None:  # pragma: no cover - threadpoolctl missing
        return contextlib.nullcontext()
    try:
        return controller.limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - a BLAS that refuses to be limited
        return contextlib.nullcontext()
