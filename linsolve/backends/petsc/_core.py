"""PETSc runtime, communicators, partitions and SciPy/NumPy <-> PETSc conversions (collective helpers).

Everything here is *collective*: every rank calls every function in the same
order. Errors detected on one rank are agreed on by all ranks before raising
(:func:`_agree`), so bad input raises the same ``ValueError`` everywhere
instead of leaving the other ranks hanging.
"""
from __future__ import annotations

import numbers
import os
import sys
import threading
import traceback
from contextlib import contextmanager
from typing import List, Optional

import numpy as np
import scipy.sparse as sp

from ..._validation import as_sparse_matrix, as_vector

__all__ = ["available", "require_petsc", "INSTALL_HINT", "get_comm", "row_ranges", "slab_partition", "csr_to_petsc",
           "petsc_to_csr", "numpy_to_vec", "vec_to_numpy", "abort_on_error"]

INSTALL_HINT = (
    "the PETSc backend needs petsc4py and mpi4py: run `make petsc-install` in a linsolve checkout, or see "
    "docs/PETSC.md (apt libopenblas-dev liblapack-dev libopenmpi-dev openmpi-bin; pip install mpi4py; "
    "PETSC_CONFIGURE_OPTIONS='--with-fc=0 --with-cxx=0 --with-cudac=0 --with-x=0 --with-debugging=0 "
    "COPTFLAGS=-O2' pip install petsc==3.26.1; PETSC_DIR=$(python -c 'import petsc;"
    "print(petsc.get_petsc_dir())') pip install petsc4py==3.26.1)")

_PETSC = None

# KSP converged/diverged reasons mapped to linsolve's info codes (negative = breakdown).
_BREAKDOWN_INFO = {
    "DIVERGED_INDEFINITE_MAT": -1,
    "DIVERGED_BREAKDOWN": -1,
    "DIVERGED_BREAKDOWN_BICG": -1,
    "DIVERGED_INDEFINITE_PC": -2,
    "DIVERGED_NANORINF": -3,
    "DIVERGED_NAN": -3,
    "DIVERGED_NONSYMMETRIC": -1,
    "DIVERGED_PCSETUP_FAILED": -2,
}


def available() -> bool:
    """True when petsc4py and mpi4py can be imported.

    Examples
    --------
    >>> from linsolve.backends import petsc
    >>> isinstance(petsc.available(), bool)
    True
    """
    try:
        require_petsc()
    except ImportError:
        return False
    return True


def require_petsc():
    """Import and return ``petsc4py.PETSc`` (initialising MPI), or raise ``ImportError`` with the recipe.

    mpi4py is imported first so that MPI is initialised with thread support
    (the solve watchdog runs in a thread) and so that Python-level
    collectives (``comm.tompi4py()``) are available.

    Examples
    --------
    >>> from linsolve.backends import petsc
    >>> PETSc = petsc.require_petsc()  # doctest: +SKIP
    >>> PETSc.COMM_WORLD.getSize() >= 1  # doctest: +SKIP
    True
    """
    global _PETSC
    if _PETSC is not None:
        return _PETSC
    try:
        import mpi4py  # noqa: F401
        from mpi4py import MPI  # noqa: F401
        import petsc4py
    except ImportError as exc:
        raise ImportError(f"{exc}; {INSTALL_HINT}") from None
    if "petsc4py.PETSc" not in sys.modules:
        # Only the program name: the script's arguments are not PETSc options (and "-c" of `python -c` is not one).
        petsc4py.init([a for a in sys.argv[:1] if not a.startswith("-")])
    from petsc4py import PETSc

    _PETSC = PETSc
    return PETSc


# --------------------------------------------------------------------------- communicators


def get_comm(comm=None):
    """``PETSc.Comm`` from ``None`` (COMM_WORLD), a ``PETSc.Comm`` or an mpi4py communicator.

    Examples
    --------
    >>> from linsolve.backends import petsc
    >>> comm = petsc.get_comm()  # doctest: +SKIP
    >>> comm.getRank() < comm.getSize()  # doctest: +SKIP
    True
    """
    PETSc = require_petsc()
    if comm is None:
        return PETSc.COMM_WORLD
    if isinstance(comm, PETSc.Comm):
        return comm
    try:
        return PETSc.Comm(comm)
    except Exception:
        raise TypeError(f"comm must be None, a PETSc.Comm or an mpi4py communicator, got {type(comm).__name__}") \
            from None


def _mpi(comm):
    return comm.tompi4py()


def _agree(comm, error: Optional[BaseException]) -> None:
    """Collective: if any rank has an error, raise one on every rank (the first failing rank's message).

    A check that fails on one rank only would otherwise leave the other ranks
    waiting forever in the next collective call.
    """
    mpi = _mpi(comm)
    flags = mpi.allgather(None if error is None else (type(error).__name__, str(error)))
    for rank, flag in enumerate(flags):
        if flag is not None:
            if error is not None:
                raise error
            kind, message = flag
            exc_type = {"ValueError": ValueError, "TypeError": TypeError}.get(kind, RuntimeError)
            raise exc_type(f"on rank {rank}: {message}")


def _collective(comm, fn, *args, **kwargs):
    """Run ``fn`` locally; agree on failure across ranks (see :func:`_agree`)."""
    result, error = None, None
    try:
        result = fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        error = exc
    _agree(comm, error)
    return result


# --------------------------------------------------------------------------- partitions


def row_ranges(n: int, comm=None, *, local_rows: Optional[int] = None) -> List[tuple]:
    """``[(start, end)]`` of the rows each rank owns; PETSc's default split unless ``local_rows`` is given.

    Collective. ``local_rows`` is this rank's row count (they must add up to ``n``).

    Examples
    --------
    >>> from linsolve.backends import petsc
    >>> petsc.row_ranges(10)  # one rank  # doctest: +SKIP
    [(0, 10)]
    """
    comm = get_comm(comm)
    size = comm.getSize()
    if local_rows is None:
        counts = [n // size + (1 if r < n % size else 0) for r in range(size)]
    else:
        if isinstance(local_rows, bool) or not isinstance(local_rows, numbers.Integral) or local_rows < 0:
            error = ValueError(f"local_rows must be a non-negative integer, got {local_rows!r}")
        else:
            error = None
        _agree(comm, error)
        counts = _mpi(comm).allgather(int(local_rows))
        if sum(counts) != n:
            raise ValueError(f"local_rows over all ranks add up to {sum(counts)} ({counts}), expected n = {n}")
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    return [(int(starts[r]), int(starts[r + 1])) for r in range(size)]


def slab_partition(grid_shape, comm=None) -> tuple:
    """Split a C-ordered grid into slabs along axis 0, one per rank.

    Returns ``(local_rows, local_grid_shape)`` for this rank: rows stay whole
    grid slabs, so each rank's diagonal block is itself a grid problem of
    shape ``(k, *grid_shape[1:])`` (what a learned, grid-based local
    preconditioner needs). Pass ``local_rows`` to :func:`csr_to_petsc`.

    Examples
    --------
    >>> from linsolve.backends import petsc
    >>> petsc.slab_partition((8, 4, 4))  # one rank  # doctest: +SKIP
    (128, (8, 4, 4))
    """
    comm = get_comm(comm)
    shape = tuple(int(s) for s in grid_shape)
    size, rank = comm.getSize(), comm.getRank()
    if len(shape) < 2 or any(s <= 0 for s in shape):
        raise ValueError(f"grid_shape must have at least 2 positive dimensions, got {grid_shape!r}")
    if shape[0] < size:
        raise ValueError(f"grid_shape[0] = {shape[0]} is smaller than the number of ranks ({size})")
    slabs = shape[0] // size + (1 if rank < shape[0] % size else 0)
    plane = int(np.prod(shape[1:]))
    return slabs * plane, (slabs,) + shape[1:]


# --------------------------------------------------------------------------- conversions


def _local_block(A, comm, local_rows, distributed):
    """This rank's rows of A as CSR with global column indices, plus the global size."""
    if distributed:
        mat = as_sparse_matrix(A, "A", square=False, allow_empty=True)
        return mat, None
    mat = as_sparse_matrix(A, "A")
    return mat, mat.shape[0]


def csr_to_petsc(A, comm=None, *, local_rows: Optional[int] = None, distributed: bool = False):
    """Distributed ``PETSc.Mat`` (AIJ) from a SciPy sparse matrix. Collective.

    Parameters
    ----------
    A : sparse matrix or ndarray
        ``distributed=False``: the whole ``(n, n)`` matrix, identical on every
        rank; each rank keeps its own rows. ``distributed=True``: this rank's
        row block, shape ``(m_local, n)`` with global column indices (rows
        stacked in rank order).
    comm : None, PETSc.Comm or mpi4py communicator
        ``None`` means ``PETSc.COMM_WORLD``.
    local_rows : int, optional
        This rank's number of rows (e.g. from :func:`slab_partition`); PETSc's
        default split when omitted. Ignored when ``distributed=True``.

    Returns
    -------
    PETSc.Mat
        Assembled MPIAIJ (SeqAIJ on one rank), square, with local column size
        equal to local row size (so vectors from ``createVecs`` match).

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.backends import petsc
    >>> A = linsolve.problems.poisson((8, 8))
    >>> M = petsc.csr_to_petsc(A)  # doctest: +SKIP
    >>> M.getSize()  # doctest: +SKIP
    (64, 64)
    """
    PETSc = require_petsc()
    comm = get_comm(comm)
    mat, n = _collective(comm, _local_block, A, comm, local_rows, distributed)
    mpi = _mpi(comm)
    if distributed:
        m_local = mat.shape[0]
        n = mat.shape[1]
        sizes = mpi.allgather((m_local, n))
        total = sum(s[0] for s in sizes)
        widths = {s[1] for s in sizes}
        if len(widths) != 1 or total != n:
            raise ValueError(f"distributed row blocks (rows, cols) per rank {sizes} do not form a square "
                             f"matrix: the rows must add up to the common column count")
        start = sum(s[0] for s in sizes[:comm.getRank()])
        block = mat
    else:
        ns = mpi.allgather(n)
        if len(set(ns)) != 1:
            raise ValueError(f"A has different sizes on different ranks ({ns}); with distributed=False "
                             f"every rank must pass the same global matrix")
        start, end = row_ranges(n, comm, local_rows=local_rows)[comm.getRank()]
        block = mat[start:end]
        m_local = end - start
    int_type = PETSc.IntType
    indptr = np.asarray(block.indptr, dtype=int_type)
    indices = np.asarray(block.indices, dtype=int_type)
    data = np.asarray(block.data, dtype=PETSc.ScalarType)
    M = PETSc.Mat().createAIJ(size=((m_local, n), (m_local, n)), csr=(indptr, indices, data), comm=comm)
    M.assemble()
    return M


def petsc_to_csr(M, *, gather: bool = False) -> sp.csr_matrix:
    """SciPy CSR from a ``PETSc.Mat``: this rank's rows (global columns), or the whole matrix. Collective.

    Parameters
    ----------
    M : PETSc.Mat (AIJ)
    gather : bool
        ``False``: this rank's row block, shape ``(m_local, n)``.
        ``True``: the global matrix on every rank (all-gather; small problems only).

    Examples
    --------
    >>> import linsolve
    >>> from linsolve.backends import petsc
    >>> A = linsolve.problems.poisson((8, 8))
    >>> B = petsc.petsc_to_csr(petsc.csr_to_petsc(A), gather=True)  # doctest: +SKIP
    >>> abs(A - B).max()  # doctest: +SKIP
    0.0
    """
    require_petsc()
    nrows, ncols = M.getSize()
    indptr, indices, data = M.getValuesCSR()
    local = sp.csr_matrix((np.array(data, dtype=np.float64), np.array(indices, dtype=np.int64),
                           np.array(indptr, dtype=np.int64)), shape=(len(indptr) - 1, ncols))
    if not gather:
        return local
    pieces = _mpi(M.getComm()).allgather(local)
    return sp.vstack(pieces, format="csr")


def numpy_to_vec(x, like, *, distributed: bool = False, name: str = "x"):
    """``PETSc.Vec`` laid out like ``like`` (a Mat's columns or a Vec), filled from NumPy. Collective.

    Parameters
    ----------
    x : ndarray
        ``distributed=False``: the whole vector, identical on every rank.
        ``distributed=True``: this rank's part only.
    like : PETSc.Mat or PETSc.Vec
        Source of the parallel layout.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends import petsc
    >>> M = petsc.csr_to_petsc(linsolve.problems.poisson((8, 8)))  # doctest: +SKIP
    >>> v = petsc.numpy_to_vec(np.arange(64.0), M)  # doctest: +SKIP
    >>> float(v.sum())  # doctest: +SKIP
    2016.0
    """
    PETSc = require_petsc()
    if isinstance(like, PETSc.Mat):
        vec = like.createVecRight()
    elif isinstance(like, PETSc.Vec):
        vec = like.duplicate()
    else:
        raise TypeError(f"like must be a PETSc.Mat or PETSc.Vec, got {type(like).__name__}")
    start, end = vec.getOwnershipRange()
    comm = vec.getComm()

    def convert():
        if distributed:
            return as_vector(x, end - start, name, dtype=np.float64)
        return as_vector(x, vec.getSize(), name, dtype=np.float64)[start:end]

    local = _collective(comm, convert)
    vec.setArray(local)
    return vec


def vec_to_numpy(vec, *, gather: bool = True) -> np.ndarray:
    """NumPy copy of a ``PETSc.Vec``: the whole vector on every rank, or this rank's part. Collective.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends import petsc
    >>> M = petsc.csr_to_petsc(linsolve.problems.poisson((8, 8)))  # doctest: +SKIP
    >>> x = petsc.vec_to_numpy(petsc.numpy_to_vec(np.arange(64.0), M))  # doctest: +SKIP
    >>> bool((x == np.arange(64.0)).all())  # doctest: +SKIP
    True
    """
    PETSc = require_petsc()
    if not gather:
        return np.array(vec.getArray(readonly=True), copy=True)
    if vec.getComm().getSize() == 1:
        return np.array(vec.getArray(readonly=True), copy=True)
    scatter, full = PETSc.Scatter.toAll(vec)
    try:
        scatter.scatter(vec, full, addv=PETSc.InsertMode.INSERT_VALUES, mode=PETSc.ScatterMode.FORWARD)
        return np.array(full.getArray(readonly=True), copy=True)
    finally:
        scatter.destroy()
        full.destroy()



# --------------------------------------------------------------------------- watchdog


class _Watchdog:
    """Abort this rank when one solve exceeds ``timeout_s``.

    A dead or stopped rank makes the others wait forever inside an MPI
    collective; most launchers tear the job down when a rank dies, but not
    all of them, and not when a rank is stopped. Exiting makes the launcher
    end the whole job with an error instead of hanging.

    Two mechanisms, because ``KSPSolve`` holds the GIL while it waits in MPI:
    a Python timer prints a linsolve message and exits when the GIL is free;
    :func:`faulthandler.dump_traceback_later` (a C thread that needs no GIL)
    fires 2 s later, prints ``Timeout`` and the Python stack (showing the
    ``ksp.solve`` call in this module) and exits with status 1.
    """

    def __init__(self, timeout_s: Optional[float], rank: int):
        self.timeout_s = timeout_s
        self.rank = rank
        self._timer: Optional[threading.Timer] = None
        self._depth = 0

    def _fire(self, what: str):
        sys.stdout.flush()
        sys.stderr.write(
            f"linsolve.backends.petsc: rank {self.rank}: {what} did not finish within timeout_s="
            f"{self.timeout_s:g} s; another rank has probably died or stopped. Aborting this rank.\n")
        sys.stderr.flush()
        os._exit(17)

    @contextmanager
    def guard(self, what: str):
        if not self.timeout_s or self._depth:  # only the outermost guard times
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._depth += 1
        import faulthandler

        self._timer = threading.Timer(self.timeout_s, self._fire, args=(what,))
        self._timer.daemon = True
        self._timer.start()
        sys.stderr.flush()
        faulthandler.dump_traceback_later(self.timeout_s + 2.0, repeat=False, file=sys.stderr, exit=True)
        try:
            yield
        finally:
            faulthandler.cancel_dump_traceback_later()
            self._timer.cancel()
            self._depth -= 1


@contextmanager
def abort_on_error(comm=None, exit_code: int = 1):
    """Turn an exception on one rank into a job-wide abort (instead of the other ranks hanging).

    Use around the body of an MPI script; ``python -m mpi4py script.py`` does
    the same for the whole script.

    Examples
    --------
    >>> from linsolve.backends import petsc
    >>> with petsc.abort_on_error():  # doctest: +SKIP
    ...     pass
    """
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, SystemExit) and not exc.code:
            raise
        try:
            rank = get_comm(comm).getRank()
        except Exception:  # pragma: no cover
            rank = "?"
        sys.stdout.flush()
        sys.stderr.write(f"linsolve.backends.petsc: rank {rank} failed; aborting all ranks\n")
        traceback.print_exc()
        sys.stderr.flush()
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(exit_code)



def _reason_name(PETSc, reason: int) -> str:
    for name in dir(PETSc.KSP.ConvergedReason):
        if name.isupper() and getattr(PETSc.KSP.ConvergedReason, name) == reason:
            return name
    return str(reason)


def _outcome_message(bnorm: float, info: int, its: int, reason) -> str:
    """The SolveResult message of a KSP solve, from its info code (true residual already checked)."""
    if bnorm == 0.0:
        return "b is zero; x = 0 is exact"
    if info == 0:
        return f"converged (KSP reason {reason}; true residual checked)"
    if info > 0:
        return f"not converged after {its} iterations (KSP reason {reason})"
    return f"breakdown (KSP reason {reason})"
