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
global matrix: :func:`local_pressure_stencil` computes the stencil on that
ghosted box with the same formula as :func:`linsolve.problems.pressure_matrix`
(outside the box counts as the open domain boundary, which is exact for every
row the rank owns, because the owned cells' neighbours are all inside the
ghosted box or outside the domain).

Zero rows. A FLUID cell whose faces are all closed (SOLID neighbours, or face
fraction 0) has an all-zero row. It is a closed region of one cell: its
pressure is arbitrary and, for a consistent right-hand side, ``b`` is 0 there.
:class:`PressureDMDA` stores such rows as identity rows (and counts them in
``trapped_cells``), so SOR, Galerkin products and the coarse LU never meet a
zero pivot; the solution there is ``x = b = 0``.
"""
from __future__ import annotations

import numbers
from typing import Optional, Sequence

import numpy as np

from ...problems import AIR, FLUID
from ...problems.fluid import check_cell_types
from ._core import _agree, _mpi, get_comm, require_petsc

__all__ = ["PressureDMDA", "local_pressure_stencil", "stencil_matrix", "ghost_box"]


# ----------------------------------------------------------------------------- stencil of a (sub-)grid


def _spacing(h, ndim) -> np.ndarray:
    from ...problems.poisson import _check_spacing

    return _check_spacing(h, ndim)


def _pressure_stencil(types, spacing, density, phi, face_fractions, theta_min):
    """The pressure stencil, vectorised (the rows of ``pressure_matrix`` without building a CSR matrix).

    Faces between two FLUID cells: ``frac / (h_a^2 rho_face)`` with
    ``rho_face = (rho_i + rho_j) / 2`` (the harmonic mean of ``1/rho``).
    Faces from a FLUID cell to AIR or to the open domain boundary: the cell's
    diagonal gains ``frac / (h_a^2 rho_i theta)``, ``theta = phi_i / (phi_i - phi_j)``
    clamped to ``[theta_min, 1]`` (Gibou et al. 2002; 1 at the domain boundary or
    without ``phi``). Faces to SOLID cells carry nothing. Non-fluid cells: identity.
    """
    shape = types.shape
    ndim = types.ndim
    fluid = types == FLUID
    air = types == AIR
    rho = np.ones(shape) if density is None else density
    diag = np.zeros(shape)
    couplings = []
    for axis in range(ndim):
        inv_h2 = 1.0 / spacing[axis] ** 2
        n = shape[axis]
        lo = tuple(slice(0, n - 1) if a == axis else slice(None) for a in range(ndim))
        hi = tuple(slice(1, n) if a == axis else slice(None) for a in range(ndim))
        first = tuple(slice(0, 1) if a == axis else slice(None) for a in range(ndim))
        last = tuple(slice(n - 1, n) if a == axis else slice(None) for a in range(ndim))
        if face_fractions is None:
            frac_int, frac_first, frac_last = 1.0, 1.0, 1.0
        else:
            f = face_fractions[axis]
            frac_int = f[tuple(slice(1, n) if a == axis else slice(None) for a in range(ndim))]
            frac_first, frac_last = f[first], f[tuple(slice(n, n + 1) if a == axis else slice(None)
                                                      for a in range(ndim))]
        w = np.zeros(shape)
        both = fluid[lo] & fluid[hi]
        w[lo] = np.where(both, frac_int * inv_h2 * 2.0 / (rho[lo] + rho[hi]), 0.0)
        diag[lo] += w[lo]
        diag[hi] += w[lo]
        couplings.append(w)
        # Dirichlet faces to AIR neighbours (ghost fluid when phi is given).
        for cell, other in ((lo, hi), (hi, lo)):
            dirichlet = fluid[cell] & air[other]
            if not np.any(dirichlet):
                continue
            theta = np.ones(dirichlet.shape)
            if phi is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    theta = phi[cell] / (phi[cell] - phi[other])
                theta = np.clip(np.nan_to_num(theta, nan=1.0), theta_min, 1.0)
            diag[cell] += np.where(dirichlet, frac_int * inv_h2 / (rho[cell] * theta), 0.0)
        # The open domain boundary (outside the array is air, theta = 1).
        diag[first] += np.where(fluid[first], frac_first * inv_h2 / rho[first], 0.0)
        diag[last] += np.where(fluid[last], frac_last * inv_h2 / rho[last], 0.0)
    diag[~fluid] = 1.0
    return diag, couplings


def local_pressure_stencil(cell_types, h=1.0, *, density=None, phi=None, face_fractions=None,
                           theta_min: float = 0.01):
    """Stencil form of the pressure matrix of a (sub-)grid: ``(diag, [w_0, ..., w_{d-1}])``.

    ``w_a[c]`` is minus the entry coupling cell ``c`` to its ``+1`` neighbour
    along axis ``a`` (0 on the last plane), so row ``c`` of the matrix is
    ``diag[c] x_c - sum_a (w_a[c] x_{c+e_a} + w_a[c-e_a] x_{c-e_a})``.
    Applied to a rank's owned box plus one ghost layer, the rows of the owned
    cells are exactly those of the global matrix (see the module notes).

    Without ``density``/``phi``/``face_fractions`` the rows are exactly those of
    :func:`linsolve.problems.pressure_matrix` (tested). With them: face
    coefficient ``frac / (h^2 rho_face)`` between fluid cells, ``rho_face`` the
    mean of the two cells' densities (the harmonic mean of ``1/rho``); at
    fluid-air faces and the open boundary the fluid cell's diagonal gains
    ``frac / (h^2 rho theta)``, the ghost-fluid ``theta = phi_f / (phi_f - phi_a)``
    clamped to ``[theta_min, 1]`` (1 without ``phi``). This is the one place to
    swap for the generators' ``pressure_coefficients`` once they provide it,
    so that both always build the same rows.

    Parameters
    ----------
    cell_types : int array, 2D or 3D (FLUID=0, SOLID=1, AIR=2)
    h : float or sequence of floats
        Spacing per axis.
    density : float array of the grid's shape, optional
        Cell densities (> 0).
    phi : float array of the grid's shape, optional
        Liquid level set (negative in the liquid).
    face_fractions : sequence of arrays, optional
        Open area fraction in [0, 1] of every face: array ``a`` has the grid's
        shape with one more entry along axis ``a`` (domain boundary faces included).
    theta_min : float
        Lower clamp of the ghost-fluid fraction.

    Returns
    -------
    diag : ndarray of the grid's shape
    couplings : list of ndarrays of the grid's shape

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.backends.petsc import local_pressure_stencil
    >>> cells = np.zeros((4, 4, 4), dtype=np.int8); cells[0] = 1
    >>> diag, (w0, w1, w2) = local_pressure_stencil(cells)
    >>> float(diag[2, 2, 2]), float(w0[0, 1, 1]), float(w0[1, 1, 1]), float(diag[0, 0, 0])
    (6.0, 0.0, 1.0, 1.0)
    """
    types = check_cell_types(cell_types)
    fields = _check_fields(types.shape, density, phi, face_fractions)
    if not (isinstance(theta_min, numbers.Real) and 0 < theta_min <= 1):
        raise ValueError(f"theta_min must lie in (0, 1], got {theta_min!r}")
    return _pressure_stencil(types, _spacing(h, types.ndim), *fields, float(theta_min))


def stencil_matrix(diag, couplings):
    """Symmetric CSR matrix (C order) of a stencil ``(diag, [w_a])`` from :func:`local_pressure_stencil`.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.petsc import local_pressure_stencil
    >>> from linsolve.backends.petsc.dmda import stencil_matrix
    >>> cells = np.zeros((5, 4, 3), dtype=np.int8); cells[2, 1, 1] = 1
    >>> A = stencil_matrix(*local_pressure_stencil(cells))
    >>> float(abs(A - linsolve.problems.pressure_matrix(cells)).max())
    0.0
    """
    import scipy.sparse as sp

    diag = np.asarray(diag, dtype=np.float64)
    shape = diag.shape
    n = diag.size
    strides = np.cumprod((1,) + tuple(shape[::-1]))[:-1][::-1]
    offsets, data = [0], [diag.ravel()]
    for w, stride in zip(couplings, strides):
        if stride < n:
            band = -np.asarray(w, dtype=np.float64).ravel()[:n - int(stride)]
            offsets += [int(stride), -int(stride)]
            data += [band, band]
    A = sp.diags(data, offsets, shape=(n, n), format="csr")
    A.eliminate_zeros()
    return A


def _check_fields(shape, density, phi, face_fractions):
    out = []
    for name, field in (("density", density), ("phi", phi)):
        if field is None:
            out.append(None)
            continue
        arr = np.asarray(field, dtype=np.float64)
        if arr.shape != tuple(shape):
            raise ValueError(f"{name} must have the grid's shape {tuple(shape)}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or Inf")
        if name == "density" and not np.all(arr > 0):
            raise ValueError("density must be > 0 everywhere")
        out.append(arr)
    if face_fractions is None:
        out.append(None)
    else:
        if len(face_fractions) != len(shape):
            raise ValueError(f"face_fractions needs one array per axis ({len(shape)}), got {len(face_fractions)}")
        fracs = []
        for axis, f in enumerate(face_fractions):
            arr = np.asarray(f, dtype=np.float64)
            want = tuple(s + (1 if a == axis else 0) for a, s in enumerate(shape))
            if arr.shape != want:
                raise ValueError(f"face_fractions[{axis}] must have shape {want}, got {arr.shape}")
            if not (np.all(np.isfinite(arr)) and np.all(arr >= 0) and np.all(arr <= 1)):
                raise ValueError(f"face_fractions[{axis}] must lie in [0, 1]")
            fracs.append(arr)
        out.append(fracs)
    return out


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
        self.stencil = None  # (diag, couplings) on the ghosted box after assemble()
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
        this rank's ghosted box (:attr:`ghosted`); see :func:`local_pressure_stencil`.
        Returns :attr:`mat`.
        """
        PETSc = self.PETSc
        stencil, error = None, None
        try:
            types, dens, ph, fr = self._local_fields(cell_types, density, phi, face_fractions)
            stencil = local_pressure_stencil(types, h, density=dens, phi=ph, face_fractions=fr, theta_min=theta_min)
        except (ValueError, TypeError) as exc:
            error = exc
        _agree(self.comm, error)
        diag, couplings = stencil
        diag = np.array(diag, dtype=np.float64)
        trapped = diag == 0.0
        diag[trapped] = 1.0  # zero rows (closed one-cell regions): identity rows, x = b = 0 there
        self.trapped_cells = int(_mpi(self.comm).allreduce(int(np.count_nonzero(trapped[self.inner]))))
        self.stencil = (diag, [np.asarray(w, dtype=np.float64) for w in couplings])
        if self._csr_pattern is None:
            self._csr_pattern = self._pattern()
        indptr, indices, valid = self._csr_pattern
        vals = [diag[self.inner]]
        for axis, w in enumerate(self.stencil[1]):
            lower = tuple(slice(i.start - (1 if a == axis else 0), i.stop - (1 if a == axis else 0))
                          for a, i in enumerate(self.inner))
            low = np.zeros(self.owned_shape)
            # w[c - e_a] couples c to its -1 neighbour; on the grid's first plane there is none.
            src = tuple(slice(max(s.start, 0), s.stop) for s in lower)
            dst = tuple(slice(ss.start - s.start, ss.stop - s.start) for ss, s in zip(src, lower))
            low[dst] = w[src]
            vals.append(-low)
            vals.append(-w[self.inner])
        data = np.stack([v.ravel() for v in vals], axis=1)[valid].astype(PETSc.ScalarType)
        if self.mat is None:
            self.mat = self.da.createMat()
            self.mat.setOption(PETSc.Mat.Option.NEW_NONZERO_ALLOCATION_ERR, True)
        self.mat.setValuesCSR(indptr, indices, data)
        self.mat.assemble()
        return self.mat

    def active_mask(self) -> np.ndarray:
        """Owned cells that couple to a neighbour (the cells multigrid corrects), from the last assembly."""
        diag, couplings = self.stencil
        act = np.zeros(self.ghost_shape, dtype=bool)
        for axis, w in enumerate(couplings):
            nz = w > 0
            act |= nz
            shifted = np.zeros_like(nz)
            n = self.ghost_shape[axis]
            shifted[tuple(slice(1, n) if a == axis else slice(None) for a in range(self.ndim))] = \
                nz[tuple(slice(0, n - 1) if a == axis else slice(None) for a in range(self.ndim))]
            act |= shifted
        return act[self.inner]

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
