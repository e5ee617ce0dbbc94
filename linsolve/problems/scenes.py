"""Free-surface, two-phase and graded-grid scenes for :func:`linsolve.problems.fluid_sequence`.

Small MAC-grid simulations in grid units (dt = 1 frame; lengths in mean cell
widths), vectorised with NumPy/SciPy, whose pressure systems are built by
:func:`~linsolve.problems.pressure_coefficients`:

* ``dam_break``: a liquid column collapses under gravity in a solid-walled tank
  and runs over a solid bump. The free surface is a level set (semi-Lagrangian
  advection, velocity extrapolated into the air, redistanced every few frames);
  the pressure uses ghost-fluid weights ``phi=``; the bump is a cut-cell solid
  (``face_fractions=`` from its signed distance).
* ``rising_bubble``: an air bubble (density 1) in water (density 1000), all
  non-solid cells fluid, face coefficients ``1 / rho`` from the bubble's level
  set; gravity and the variable-density projection make it rise.
* ``moving_sphere_graded``: the ``moving_sphere`` smoke scene on a grid graded
  toward the walls (:func:`~linsolve.problems.graded_widths`).

Each scene object has ``advance(frame)`` (everything up to the projection;
returns the cell types and the :func:`pressure_coefficients` options),
``velocity`` (``u*`` then), ``finish(stencil, p, frame)`` (projection and
post-processing), ``extras()`` and ``context(frame, frames)``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .instance import FLUID, SOLID
from .pressure import _face_sides, graded_widths

__all__: list = []

UP = 1   # axis 1 is "up" in every scene


# ----------------------------------------------------------------------------- grid geometry
class _Grid:
    """Cell and face positions of a tensor-product grid; the domain is ``[-0.5, n - 0.5]`` per axis."""

    def __init__(self, shape, widths=None):
        self.shape = tuple(shape)
        self.ndim = len(shape)
        self.uniform = widths is None
        self.widths = [np.ones(n) for n in shape] if widths is None else [np.asarray(w, float) for w in widths]
        self.faces = [np.concatenate([[-0.5], -0.5 + np.cumsum(w)]) for w in self.widths]
        self.centres = [0.5 * (f[:-1] + f[1:]) for f in self.faces]
        if self.uniform:     # exact integers, as the index coordinates of the smoke scenes
            self.centres = [np.arange(n, dtype=float) for n in shape]
            self.faces = [np.arange(n + 1, dtype=float) - 0.5 for n in shape]
        self._points = {}

    @property
    def spacing(self):
        """The ``h`` argument of :func:`pressure_coefficients` for this grid."""
        return 1.0 if self.uniform else [w.copy() for w in self.widths]

    def points(self, axis=None) -> np.ndarray:
        """Physical coordinates ``(ndim, ...)`` of the cell centres, or of the faces normal to ``axis``."""
        if axis not in self._points:
            axes = [self.faces[d] if d == axis else self.centres[d] for d in range(self.ndim)]
            self._points[axis] = np.stack(np.meshgrid(*axes, indexing="ij"))
        return self._points[axis]

    def _index(self, points, axis):
        if self.uniform:
            coords = points.copy()
            if axis is not None:
                coords[axis] += 0.5
            return coords
        coords = np.empty_like(points)
        for d in range(self.ndim):
            ref = self.faces[d] if d == axis else self.centres[d]
            coords[d] = np.interp(points[d], ref, np.arange(ref.size, dtype=float))
        return coords

    def sample(self, field, points, axis=None) -> np.ndarray:
        """Multilinear interpolation of a cell field (``axis=None``) or a face field at physical points."""
        return ndimage.map_coordinates(field, self._index(points, axis), order=1, mode="nearest")

    def velocity_at(self, velocity, points, own_axis=None) -> np.ndarray:
        """All velocity components at ``points`` (the faces of ``own_axis`` take their own component as is)."""
        out = np.empty_like(points)
        for e in range(self.ndim):
            out[e] = velocity[e] if e == own_axis else self.sample(velocity[e], points, e)
        return out

    def advect_velocity(self, velocity) -> list:
        """Semi-Lagrangian advection of a MAC velocity by itself over one frame."""
        new = []
        for d in range(self.ndim):
            pos = self.points(d)
            new.append(self.sample(velocity[d], pos - self.velocity_at(velocity, pos, own_axis=d), d))
        return new

    def advect_cells(self, velocity, field) -> np.ndarray:
        pos = self.points()
        return self.sample(field, pos - self.velocity_at(velocity, pos))


def _walls(shape) -> np.ndarray:
    """Solid sides and bottom one cell thick; the top (high end of axis 1) stays open."""
    ndim = len(shape)
    walls = np.zeros(shape, dtype=bool)
    for axis in range(ndim):
        sl = [slice(None)] * ndim
        sl[axis] = 0
        walls[tuple(sl)] = True
        if axis != UP:
            sl[axis] = shape[axis] - 1
            walls[tuple(sl)] = True
    return walls


def _solid_faces(solid: np.ndarray, axis: int) -> np.ndarray:
    lo, hi = _face_sides(solid, axis, False)
    return lo | hi


# ----------------------------------------------------------------------------- level sets
def _box_distance(points, lo, hi) -> np.ndarray:
    """Signed distance to an axis-aligned box (negative inside)."""
    centre = [(a + b) / 2 for a, b in zip(lo, hi)]
    half = [(b - a) / 2 for a, b in zip(lo, hi)]
    q = np.stack([np.abs(points[d] - centre[d]) - half[d] for d in range(len(lo))])
    outside = np.sqrt((np.maximum(q, 0.0) ** 2).sum(axis=0))
    return outside + np.minimum(q.max(axis=0), 0.0)


def _sphere_distance(points, centre, radius) -> np.ndarray:
    return np.sqrt(sum((points[d] - centre[d]) ** 2 for d in range(len(centre)))) - radius


def redistance(phi: np.ndarray) -> np.ndarray:
    """Make a level set on a unit grid a signed distance again, keeping its zero crossing.

    Every cell next to the interface (a face neighbour of the other sign)
    gives its closest interface point to first order,
    ``x - phi grad(phi) / |grad(phi)|^2``; every cell then takes the distance
    to the point of its nearest interface cell (a Euclidean distance
    transform), with its own sign. A closest-point reinitialisation: the sign
    of every cell and the interface cells' sub-cell positions are kept.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems.scenes import redistance
    >>> x = np.indices((20, 20), dtype=float)[0]
    >>> phi = 3.0 * (x - 9.4)                    # a plane, but |grad phi| = 3
    >>> bool(np.allclose(redistance(phi), x - 9.4))
    True
    """
    inside = phi < 0
    ndim = phi.ndim
    interface = np.zeros(phi.shape, dtype=bool)
    for d in range(ndim):
        n = phi.shape[d]
        lo = [slice(None)] * ndim
        hi = [slice(None)] * ndim
        lo[d] = slice(0, n - 1)
        hi[d] = slice(1, n)
        change = inside[tuple(lo)] != inside[tuple(hi)]
        interface[tuple(lo)] |= change
        interface[tuple(hi)] |= change
    if not np.any(interface):
        return phi
    grad = np.stack(np.gradient(phi))
    norm2 = np.maximum((grad * grad).sum(axis=0), 1e-2)
    centres = np.indices(phi.shape, dtype=float)
    closest = centres - phi * grad / norm2
    index = ndimage.distance_transform_edt(~interface, return_distances=False, return_indices=True)
    target = closest[(slice(None),) + tuple(index)]
    dist = np.sqrt(((centres - target) ** 2).sum(axis=0))
    # The nearest interface cell is not always the one with the nearest point: let every cell try
    # its face neighbours' points too (two passes of a jump-flooding style relaxation).
    for _ in range(2):
        for d in range(ndim):
            for step in (1, -1):
                shifted = np.roll(target, step, axis=d + 1)
                trial = np.sqrt(((centres - shifted) ** 2).sum(axis=0))
                better = trial < dist
                target = np.where(better, shifted, target)
                dist = np.where(better, trial, dist)
    return np.where(inside, -dist, dist)


def _extrapolate(u: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Copy every invalid face's value from its nearest valid face."""
    if np.all(valid) or not np.any(valid):
        return u
    index = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return u[tuple(index)]


def _face_fractions(grid: _Grid, distance, samples: int = 4) -> list:
    """Open area fraction of every face from a signed distance (positive in the open region).

    Each face is split into ``samples`` pieces per transverse axis; a piece's
    open fraction is ``clip(1/2 + d / s, 0, 1)`` at its centre (``s`` its
    width): the anti-aliased voxelisation of the solid over the face.
    """
    fractions = []
    offsets = (np.arange(samples) + 0.5) / samples - 0.5
    for axis in range(grid.ndim):
        base = grid.points(axis)
        transverse = [d for d in range(grid.ndim) if d != axis]
        total = np.zeros(base.shape[1:])
        grids = np.meshgrid(*([offsets] * len(transverse)), indexing="ij")
        for shift in zip(*(g.ravel() for g in grids)):
            pts = base.copy()
            for d, s in zip(transverse, shift):
                pts[d] = pts[d] + s * grid.widths[d].reshape([-1 if e == d else 1 for e in range(grid.ndim)])
            piece = min(min(grid.widths[d]) for d in transverse) / samples
            total += np.clip(0.5 + distance(pts) / piece, 0.0, 1.0)
        fraction = total / samples ** len(transverse)
        fraction[fraction < 1e-3] = 0.0      # slivers below 0.1 % of a face: closed, as codes do
        fractions.append(fraction)
    return fractions


# ----------------------------------------------------------------------------- dam break
class DamBreak:
    """A liquid column collapsing in a tank over a cut-cell floor and bump (free surface, ghost fluid)."""

    REDISTANCE_EVERY = 4
    FLOOR_SLOPE = 0.08

    def __init__(self, shape, rng: np.random.Generator):
        self.grid = _Grid(shape)
        self.shape = self.grid.shape
        self.ndim = self.grid.ndim
        n_up = shape[UP]
        width = (0.3 + 0.04 * rng.uniform(-1, 1)) * shape[0]
        height = (0.6 + 0.05 * rng.uniform(-1, 1)) * n_up
        lo = [-3.0] * self.ndim
        hi = [shape[d] + 2.0 for d in range(self.ndim)]
        hi[0], hi[UP] = width, height
        self.phi = _box_distance(self.grid.points(), lo, hi)
        # Gravity such that sqrt(g H) is one cell per frame: the front runs at about 2 cells per frame.
        self.gravity = 1.0 / height
        # Cut-cell solids: a floor sloping down along x (under the column from frame 0) and a
        # half-buried sphere (a bump) downstream.
        slope = self.FLOOR_SLOPE
        floor_left = 0.5 + slope * shape[0]
        centre = [0.5 * (s - 1) for s in shape]
        centre[0] = 0.68 * (shape[0] - 1)
        centre[UP] = floor_left - slope * centre[0]      # sits on the floor
        radius = max(2.5, 0.2 * min(shape))
        self.obstacle = (np.array(centre), radius)

        def open_distance(p):   # > 0 in the open region: above the floor and outside the bump
            floor = (p[UP] - (floor_left - slope * p[0])) / np.hypot(1.0, slope)
            return np.minimum(floor, _sphere_distance(p, centre, radius))

        self.fractions = _face_fractions(self.grid, open_distance)
        for f in self.fractions:
            f.flags.writeable = False
        walls = _walls(shape)
        # Cells whose every face is closed are inside the bump: SOLID.
        closed = np.ones(shape, dtype=bool)
        for axis, f in enumerate(self.fractions):
            lo_f, hi_f = (np.take(f, np.arange(0, shape[axis]), axis=axis),
                          np.take(f, np.arange(1, shape[axis] + 1), axis=axis))
            closed &= (lo_f == 0) & (hi_f == 0)
        self.solid = walls | closed
        self.base_types = np.where(self.solid, SOLID, FLUID).astype(np.int8)
        self.closed_faces = [_solid_faces(self.solid, d) | (f == 0) for d, f in enumerate(self.fractions)]
        self.velocity = [np.zeros(f.shape) for f in self.fractions]

    def advance(self, frame):
        if frame > 0:
            self.phi = self.grid.advect_cells(self.velocity, self.phi)
            self.velocity = self.grid.advect_velocity(self.velocity)
        self.velocity[UP] = self.velocity[UP] - self.gravity
        for u, closed in zip(self.velocity, self.closed_faces):
            u[closed] = 0.0            # the solid is at rest
        self._phi_used = self.phi.copy()
        return self.base_types, {"h": 1.0, "phi": self._phi_used, "face_fractions": self.fractions}

    def finish(self, stencil, p, frame):
        self.velocity = stencil.project(self.velocity, p)
        self.velocity = [_extrapolate(u, g > 0) for u, g in zip(self.velocity, stencil.gradient)]
        for u, closed in zip(self.velocity, self.closed_faces):
            u[closed] = 0.0
        if (frame + 1) % self.REDISTANCE_EVERY == 0:
            self.phi = redistance(self.phi)

    def extras(self, stencil):
        return {"density": (stencil.cell_types == FLUID).astype(float), "phi": self._phi_used,
                "face_fractions": self.fractions, "spacing": 1.0,
                "obstacle_centre": tuple(float(c) for c in self.obstacle[0])}

    def context(self, frame, frames):
        return frame / max(frames - 1, 1)


# ----------------------------------------------------------------------------- rising bubble
class RisingBubble:
    """An air bubble rising in water: density ratio 1000, face coefficients 1 / rho."""

    RHO_WATER = 1000.0
    RHO_AIR = 1.0
    SMEAR = 1.0           # half-width of the smoothed density jump, in cells
    REDISTANCE_EVERY = 4

    def __init__(self, shape, rng: np.random.Generator):
        self.grid = _Grid(shape)
        self.shape = self.grid.shape
        self.ndim = self.grid.ndim
        n_up = shape[UP]
        centre = [0.5 * (s - 1) + 0.5 * rng.uniform(-1, 1) for s in shape]
        centre[UP] = 0.3 * n_up
        radius = max(2.5, (0.15 + 0.01 * rng.uniform(-1, 1)) * min(shape))
        self.psi = _sphere_distance(self.grid.points(), centre, radius)    # < 0 inside the bubble
        self.gravity = 1.0 / n_up
        self.solid = _walls(shape)
        self.types = np.where(self.solid, SOLID, FLUID).astype(np.int8)
        self.solid_faces = [_solid_faces(self.solid, d) for d in range(self.ndim)]
        self.velocity = [np.zeros(tuple(s + (1 if e == d else 0) for e, s in enumerate(shape)))
                         for d in range(self.ndim)]

    def density(self) -> np.ndarray:
        """Cell densities from the bubble's level set with a smoothed Heaviside (Sussman et al. 1994)."""
        x = np.clip(self.psi / self.SMEAR, -1.0, 1.0)
        heaviside = 0.5 * (1.0 + x + np.sin(np.pi * x) / np.pi)
        return self.RHO_AIR + (self.RHO_WATER - self.RHO_AIR) * heaviside

    def advance(self, frame):
        if frame > 0:
            self.psi = self.grid.advect_cells(self.velocity, self.psi)
            self.velocity = self.grid.advect_velocity(self.velocity)
        self.velocity[UP] = self.velocity[UP] - self.gravity
        for u, solid in zip(self.velocity, self.solid_faces):
            u[solid] = 0.0
        self._rho = self.density()
        self._psi_used = self.psi.copy()
        return self.types, {"h": 1.0, "density": self._rho}

    def finish(self, stencil, p, frame):
        self.velocity = stencil.project(self.velocity, p)
        if (frame + 1) % self.REDISTANCE_EVERY == 0:
            self.psi = redistance(self.psi)

    def extras(self, stencil):
        return {"density": self._rho, "phi": self._psi_used, "spacing": 1.0, "obstacle_centre": None}

    def context(self, frame, frames):
        return frame / max(frames - 1, 1)


# ----------------------------------------------------------------------------- graded moving sphere
def _graded_smoke(shape, rng):
    from .fluid import _SmokeSimulation

    class GradedSmoke(_SmokeSimulation):
        """``moving_sphere`` on a grid graded toward the walls (positions in physical units)."""

        RATIO = 1.15
        MAX_STRETCH = 8.0

        def __init__(self):
            # Physical domain [-0.5, n - 0.5] per axis, as the uniform scene's: the source, the sphere
            # and its sweep keep their positions and sizes.
            super().__init__(shape, "moving_sphere", rng)
            self.grid = _Grid(shape, [graded_widths(n, ratio=self.RATIO, max_stretch=self.MAX_STRETCH)
                                      for n in shape])
            self.centres = self.grid.points()
            self.face_positions = [self.grid.points(d) for d in range(self.ndim)]
            # The widest cells are wider than the uniform scene's source: keep cell centres inside it.
            self.source_radius = max(self.source_radius, max(w.max() for w in self.grid.widths))

        def _sample_velocity(self, positions):
            return self.grid.velocity_at(self.velocity, positions)

        def advect(self):
            new_velocity = self.grid.advect_velocity(self.velocity)
            self.density = self.grid.advect_cells(self.velocity, self.density)
            self.velocity = new_velocity

        # -- the scene protocol
        def advance(self, frame):
            self.move_obstacle(frame)
            types = self.cell_types()
            masks = self.face_masks(types)
            self.advect()
            self.add_sources_and_forces()
            self.enforce_solids(types, masks)
            return types, {"h": self.grid.spacing}

        def finish(self, stencil, p, frame):
            self.velocity = stencil.project(self.velocity, p)

        def extras(self, stencil):
            return {"density": self.density.copy(), "spacing": self.grid.spacing,
                    "obstacle_centre": tuple(float(c) for c in self.sphere_centre)}

        def context(self, frame, frames):
            lo, hi = self.sweep
            return float(np.clip((self.sphere_centre[0] - lo) / (hi - lo), 0.0, 1.0))

    return GradedSmoke()


def make_scene(scene: str, shape, rng: np.random.Generator):
    if scene == "dam_break":
        return DamBreak(shape, rng)
    if scene == "rising_bubble":
        return RisingBubble(shape, rng)
    if scene == "moving_sphere_graded":
        return _graded_smoke(shape, rng)
    raise ValueError(f"no such scene {scene!r}")
