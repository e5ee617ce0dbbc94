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
import threading

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


_LOCK = threading.Lock()
_ACTIVE = {"depth": 0, "limiter": None}


@contextlib.contextmanager
def limit_blas():
    """A context manager that runs its block with one BLAS thread (a no-op without threadpoolctl).

    The BLAS thread count is a process setting that other threads read too,
    so only the main thread sets it: calls from worker threads run with
    whatever the process has (limits set and restored from several threads
    at once left the process at one thread after them). Nested blocks share
    one limit, restored by the outermost. Callers that solve from several
    threads should limit BLAS themselves (``OPENBLAS_NUM_THREADS=1`` or
    ``threadpoolctl.threadpool_limits(1)`` around their pool): OpenBLAS's
    threads then contend on a small machine, for SciPy's own ``cg`` as for
    ours (8 solves on 2 cores from 4 threads: 0.3 s one by one, 2-3 s).

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve._threads import limit_blas
    >>> with limit_blas():
    ...     float(np.dot(np.ones(4), np.ones(4)))
    4.0
    """
    controller = _controller() if threading.current_thread() is threading.main_thread() else None
    if controller is None:
        yield
        return
    with _LOCK:
        if _ACTIVE["depth"] == 0:
            try:
                _ACTIVE["limiter"] = controller.limit(limits=1, user_api="blas")
            except Exception:  # pragma: no cover - a BLAS that refuses to be limited
                _ACTIVE["limiter"] = None
        _ACTIVE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE["depth"] -= 1
            if _ACTIVE["depth"] == 0 and _ACTIVE["limiter"] is not None:
                limiter, _ACTIVE["limiter"] = _ACTIVE["limiter"], None
                limiter.restore_original_limits()
