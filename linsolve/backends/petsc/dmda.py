"""Pressure systems on a PETSc DMDA: each rank assembles its own rows from its own sub-box of the fields.

Layout. linsolve orders grid unknowns in C order over ``(axis 0, axis 1[, axis 2])``
(last axis fastest). A DMDA numbers its ``x`` index fastest, so the DMDA is
created with the axes reversed (DMDA ``x`` = our last axis): the block a rank
owns is then, in PETSc's global numbering, exactly the C-ordered sub-box
``owned`` of our grid, and ``vec.getArray().reshape(owned_shape)`` is that box.

Assembly. The pressure matrix couples a cell only to its face neighbours, and
its coefficients depend only on the fields of the cell and of those
neighbours. A rank therefore needs its owned box plus one ghost layer of the
input fields (cell types, density, level set, face fractions) and never the
global matrix: :func:`linsolve.problems.pressure_coefficients` with
``box=GridBox(grid_shape, start, stop)`` returns the stencil of exactly the
owned rows (bit-for-bit the rows of :func:`linsolve.problems.pressure_matrix`),
which the rank inserts with global column numbers.

Zero rows. A FLUID cell whose faces are all closed (SOLID neighbours, or face
fraction 0) has an all-zero row: a closed region of one cell, whose pressure
is arbitrary and where a consistent right-hand side is 0.
:class:`PressureDMDA` stores such rows as identity rows (and counts them in
``trapped_cells``), so SOR, Galerkin products and the coarse LU never meet a
zero pivot; the solution there is ``x = b`` (0 for a consistent ``b``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ...problems import FLUID, GridBox, pressure_coefficients
from ._core import _agree, _mpi, get_comm, require_petsc

__all__ = ["PressureDMDA", "ghost_box"]


# ----------------------------------------------------------------------------- the DMDA


def ghost_box(owned: Sequence[slice], grid_shape: Sequence[int], width: int = 1) -> tuple:
    """The owned box grown by ``width`` cells per side, clipped to the grid (slices in our axis order).

    Examples
    --------
    >>> from linsolve.backends.petsc.dmda import ghost_box
    >>> ghost_box((slice(0, 4), slice(4, 8)), (8, 8))
    (slice(0, 5, None), slice(3, 8, None))
    """
    return tuple(slice(max(0, s.start - width), min(n, s.stop + width)) for s, n in zip(owned, grid_shape))


class PressureDMDA:
    """A DMDA over a 2D/3D cell grid (linsolve's C order) and the pressure matrix assembled on it. Collective.

    Parameters
    ----------
    grid_shape : tuple of 2 or 3 ints
    comm : None, PETSc.Comm or mpi4py communicator
    proc_sizes : tuple, optional
        Ranks per axis (our axis order); PETSc chooses when omitted.
    ownership_ranges : sequence of sequences, optional
        Cells owned per rank along each axis (our axis order), e.g. to match
        a simulation's own decomposition.

    Attributes
    ----------
    da : PETSc.DMDA
        Star stencil of width 1 (the 5/7-point pressure stencil).
    owned : tuple of slices
        This rank's box in global grid coordinates (our axis order).
    ghosted : tuple of slices
        ``owned`` plus one ghost layer, clipped to the grid: the fields a rank needs.
    mat : PETSc.Mat or None
        The assembled matrix (created on the first :meth:`assemble`, then re-used).
    trapped_cells : int
        Number of zero rows (closed one-cell fluid regions) replaced by identity rows, over all ranks.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.petsc import PressureDMDA
    >>> dm = PressureDMDA((8, 8, 8))  # doctest: +SKIP
    >>> A = dm.assemble(np.zeros((8, 8, 8), dtype=np.int8))  # doctest: +SKIP
    >>> A.getSize()  # doctest: +SKIP
    (512, 512)
    """

    def __init__(self, grid_shape, comm=None, *, proc_sizes=None, ownership_ranges=None):
        PETSc = require_petsc()
        self.PETSc = PETSc
        self.comm = get_comm(comm)
        shape = tuple(int(s) for s in grid_shape) if np.ndim(grid_shape) == 1 else None
        error = None
        if shape is None or len(shape) not in (2, 3) or any(s < 1 for s in shape):
            error = ValueError(f"grid_shape must be 2 or 3 positive ints, got {grid_shape!r}")
        _agree(self.comm, error)
        self.grid_shape = shape
        self.ndim = len(shape)
        kwargs = {}
        if proc_sizes is not None:
            kwargs["proc_sizes"] = tuple(int(p) for p in proc_sizes)[::-1]
        if ownership_ranges is not None:
            kwargs["ownership_ranges"] = tuple(tuple(int(c) for c in r) for r in ownership_ranges)[::-1]
        self.da = PETSc.DMDA().create(dim=self.ndim, dof=1, sizes=shape[::-1], stencil_width=1,
                                      stencil_type=PETSc.DMDA.StencilType.STAR, comm=self.comm, setup=True,
                                      **kwargs)
        self.owned = tuple(slice(s, e) for s, e in self.da.getRanges()[::-1])
        self.ghosted = ghost_box(self.owned, shape, 1)
        self.owned_shape = tuple(s.stop - s.start for s in self.owned)
        self.ghost_shape = tuple(s.stop - s.start for s in self.ghosted)
        # Owned box inside the ghosted box.
        self.inner = tuple(slice(o.start - g.start, o.stop - g.start) for o, g in zip(self.owned, self.ghosted))
        self.ownership = self.da.getOwnershipRanges()[::-1]
        self.proc_sizes = self.da.getProcSizes()[::-1]
        self.mat = None
        self.trapped_cells = 0
        self.stencil = None  # PressureStencil of the owned rows after assemble()
        self._csr_pattern = None

    # ------------------------------------------------------------------------- fields

    def local_field(self, field, name: str = "field", *, face_axis: Optional[int] = None) -> np.ndarray:
        """This rank's ghosted box of a field given globally (every rank the same) or already local.

        ``face_axis`` marks a face array (one more entry along that axis).
        """
        arr = np.asarray(field)
        extra = tuple(1 if a == face_axis else 0 for a in range(self.ndim))
        global_shape = tuple(n + e for n, e in zip(self.grid_shape, extra))
        local_shape = tuple(n + e for n, e in zip(self.ghost_shape, extra))
        if arr.shape == global_shape:
            sl = tuple(slice(g.start, g.stop + e) for g, e in zip(self.ghosted, extra))
            return arr[sl]
        if arr.shape == local_shape:
            return arr
        raise ValueError(f"{name} must have the grid's shape {global_shape} or this rank's ghosted box shape "
                         f"{local_shape}, got {arr.shape}")

    def _local_fields(self, cell_types, density, phi, face_fractions):
        types = self.local_field(cell_types, "cell_types")
        dens = None if density is None else self.local_field(density, "density")
        ph = None if phi is None else self.local_field(phi, "phi")
        fr = None
        if face_fractions is not None:
            if len(face_fractions) != self.ndim:
                raise ValueError(f"face_fractions needs one array per axis ({self.ndim}), got {len(face_fractions)}")
            fr = [self.local_field(f, f"face_fractions[{a}]", face_axis=a) for a, f in enumerate(face_fractions)]
        return types, dens, ph, fr

    # ------------------------------------------------------------------------- assembly

    def _pattern(self):
        """Global column indices of the owned rows' stencil entries (fixed, so the Mat pattern never changes)."""
        ltog = np.asarray(self.da.getLGMap().getIndices()).reshape(self.ghost_shape)
        rows = ltog[self.inner]
        cols = [rows]
        valid = [np.ones(self.owned_shape, dtype=bool)]
        for axis in range(self.ndim):
            for step in (-1, 1):
                sl = tuple(slice(i.start + (step if a == axis else 0), i.stop + (step if a == axis else 0))
                           for a, i in enumerate(self.inner))
                ok = np.ones(self.owned_shape, dtype=bool)
                idx = np.arange(self.owned[axis].start, self.owned[axis].stop) + step
                inside = (idx >= 0) & (idx < self.grid_shape[axis])
                shape1 = [1] * self.ndim
                shape1[axis] = -1
                ok &= inside.reshape(shape1)
                # Clip the slice to the ghosted box; outside the grid the entries are masked out anyway.
                safe = tuple(slice(max(s.start, 0), min(s.stop, g)) for s, g in zip(sl, self.ghost_shape))
                col = np.full(self.owned_shape, -1, dtype=ltog.dtype)
                dst = tuple(slice(ss.start - s.start, ss.stop - s.start) for ss, s in zip(safe, sl))
                col[dst] = ltog[safe]
                cols.append(col)
                valid.append(ok)
        cols = np.stack([c.ravel() for c in cols], axis=1)
        valid = np.stack([v.ravel() for v in valid], axis=1)
        counts = valid.sum(axis=1)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(self.PETSc.IntType)
        indices = cols[valid].astype(self.PETSc.IntType)
        return indptr, indices, valid

    def assemble(self, cell_types, *, h=1.0, density=None, phi=None, face_fractions=None,
                 theta_min: float = 0.01):
        """Assemble (or re-assemble, same Mat and pattern) the pressure matrix from this rank's fields. Collective.

        Each field is either the global array (identical on every rank) or
        this rank's ghosted box (:attr:`ghosted`; face arrays one longer
        along their axis); ``h`` describes the global grid (a number, one per
        axis, or 1D arrays of the global cell widths). The arguments are those
        of :func:`linsolve.problems.pressure_matrix`. Returns :attr:`mat`.
        """
        PETSc = self.PETSc
        stencil, error = None, None
        try:
            types, dens, ph, fr = self._local_fields(cell_types, density, phi, face_fractions)
            box = GridBox(self.grid_shape, tuple(s.start for s in self.owned), tuple(s.stop for s in self.owned))
            stencil = pressure_coefficients(types, h, density=dens, phi=ph, face_fractions=fr, theta_min=theta_min,
                                            box=box)
        except (ValueError, TypeError) as exc:
            error = exc
        _agree(self.comm, error)
        diag = np.array(stencil.diag, dtype=np.float64)
        trapped = diag == 0.0
        diag[trapped] = 1.0  # zero rows (closed one-cell regions): identity rows
        mpi = _mpi(self.comm)
        self.trapped_cells = int(mpi.allreduce(int(np.count_nonzero(trapped))))
        if not mpi.allreduce(int(np.any(stencil.cell_types == FLUID))):
            _agree(self.comm, ValueError("the fields leave no FLUID cell: there is no pressure unknown to solve for"))
        self.stencil = stencil
        if self._csr_pattern is None:
            self._csr_pattern = self._pattern()
        indptr, indices, valid = self._csr_pattern
        vals = [diag]
        for axis, c in enumerate(stencil.couplings):
            n = c.shape[axis]
            vals.append(-c[tuple(slice(0, n - 1) if a == axis else slice(None) for a in range(self.ndim))])
            vals.append(-c[tuple(slice(1, n) if a == axis else slice(None) for a in range(self.ndim))])
        data = np.stack([v.ravel() for v in vals], axis=1)[valid].astype(PETSc.ScalarType)
        if self.mat is None:
            self.mat = self.da.createMat()
            self.mat.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
        self.mat.setValuesCSR(indptr, indices, data)
        self.mat.assemble()
        return self.mat

    def active_mask(self) -> np.ndarray:
        """Owned cells coupled to a neighbour (the cells multigrid corrects), from the last assembly."""
        act = np.zeros(self.owned_shape, dtype=bool)
        for axis, c in enumerate(self.stencil.couplings):
            n = c.shape[axis]
            nz = c > 0
            act |= nz[tuple(slice(0, n - 1) if a == axis else slice(None) for a in range(self.ndim))]
            act |= nz[tuple(slice(1, n) if a == axis else slice(None) for a in range(self.ndim))]
        return act

    def local_cell_types(self) -> np.ndarray:
        """Effective cell types of the owned box from the last assembly (with ``phi``: FLUID where phi < 0)."""
        return np.asarray(self.stencil.cell_types, dtype=np.int8)

    # ------------------------------------------------------------------------- vectors

    def create_vec(self):
        return self.da.createGlobalVec()

    def vec_from_array(self, values, *, name: str = "b", vec=None):
        """Fill a global Vec from the global array (every rank the same) or this rank's owned box. Collective."""
        local, error = None, None
        try:
            arr = np.asarray(values, dtype=np.float64)
            n = int(np.prod(self.grid_shape))
            if arr.shape in ((n,), self.grid_shape):
                local = arr.reshape(self.grid_shape)[self.owned]
            elif arr.shape in ((int(np.prod(self.owned_shape)),), self.owned_shape):
                local = arr.reshape(self.owned_shape)
            else:
                raise ValueError(f"{name} must have {n} entries (the grid {self.grid_shape}) or this rank's "
                                 f"{int(np.prod(self.owned_shape))} (owned box {self.owned_shape}), got {arr.shape}")
            if not np.all(np.isfinite(local)):
                raise ValueError(f"{name} contains NaN or Inf")
        except (ValueError, TypeError) as exc:
            error = exc
        _agree(self.comm, error)
        if vec is None:
            vec = self.create_vec()
        vec.setArray(np.ascontiguousarray(local).ravel())
        return vec

    def owned_array(self, vec) -> np.ndarray:
        """Copy of this rank's box of ``vec`` in our axis order."""
        return np.array(vec.getArray(readonly=True), copy=True).reshape(self.owned_shape)

    def gather(self, vec) -> np.ndarray:
        """The whole vector in linsolve's C order, on every rank (all-gather of the owned boxes). Collective."""
        mine = (tuple((s.start, s.stop) for s in self.owned), self.owned_array(vec))
        out = np.empty(self.grid_shape)
        for box, block in _mpi(self.comm).allgather(mine):
            out[tuple(slice(a, b) for a, b in box)] = block
        return out.ravel()

    def destroy(self) -> None:
        if self.mat is not None:
            self.mat.destroy()
            self.mat = None
        self.da.destroy()
