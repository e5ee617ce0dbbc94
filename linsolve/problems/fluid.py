"""Pressure-projection systems from small, real incompressible flow simulations.

Two layers:

* :func:`pressure_matrix` (from :mod:`linsolve.problems.pressure`, re-exported
  here) builds the MAC-grid pressure Poisson matrix for an array of cell types
  (``FLUID=0, SOLID=1, AIR=2``): Neumann across fluid-solid faces, Dirichlet
  ``p = 0`` across fluid-air faces and at the open domain boundary (the faces
  on the outer side of the array); optionally with densities, a ghost-fluid
  free surface, cut-cell face fractions and graded grids.
* :func:`fluid_sequence` runs a semi-Lagrangian simulation (smoke scenes
  here; liquid, two-phase and graded-grid scenes in
  :mod:`linsolve.problems.scenes`) and yields one
  :class:`~linsolve.problems.Instance` per frame.

Grid conventions (shared with every grid generator of :mod:`linsolve.problems`)
----------------------------------------------------------------------------
* Unknowns are *all* grid cells in C order: cell ``(i, j[, k])`` is unknown
  ``numpy.ravel_multi_index((i, j[, k]), shape)``; ``n = prod(shape)`` always.
* Rows and columns of non-fluid cells (SOLID, AIR) are identity rows/columns,
  so they decouple, and ``b`` must be 0 there (:func:`check_rhs_matches_cells`).
  A solver started from ``x0 = 0`` on those cells keeps them at 0.
* Axis 0 is x, axis 1 is y (up: buoyancy acts along +y), axis 2 is z.
* A fluid region (face-connected component of FLUID cells) that touches no
  Dirichlet face (no AIR neighbour, not on the array's edge) is a closed
  container: its block of the matrix is singular with the constants on that
  region as null space. :func:`pressure_matrix` returns that singular SPSD
  matrix unchanged (pinning a cell would change the physics of the solution);
  :func:`pressure_nullspace` returns the null-space basis, and
  ``linsolve.solve(A, b, nullspace=pressure_nullspace(cell_types))`` solves the
  consistent system. :func:`fluid_sequence` does exactly that when needed.
"""
from __future__ import annotations

import inspect
import numbers
import time
import warnings
from typing import Iterator

import numpy as np
from scipy import ndimage

from .._result import SolveResult
from .._validation import user_stacklevel
from .instance import AIR, FLUID, SOLID, Instance
from .poisson import _check_shape
from .pressure import (check_cell_types, check_rhs_matches_cells, divergence, pressure_coefficients,
                       pressure_matrix, pressure_nullspace)

__all__ = ["pressure_matrix", "pressure_nullspace", "check_cell_types", "check_rhs_matches_cells",
           "fluid_sequence", "divergence", "SCENES"]

#: Scene names accepted by :func:`fluid_sequence` with a one-line description.
SCENES = {
    "smoke_plume": "smoke rising from a source in a box open at the top; A is the same every frame",
    "smoke_sphere": "smoke rising around a fixed solid sphere; A is the same every frame",
    "moving_sphere": "a solid sphere sweeping back and forth through the smoke at one cell per "
                     "frame; A changes every frame",
    "dam_break": "a liquid column collapsing under gravity in a walled tank over a cut-cell bump: free "
                 "surface by a level set, ghost-fluid weights (phi=) and face fractions; A changes every frame",
    "rising_bubble": "an air bubble rising in water, density ratio 1000, face coefficients 1/rho from the "
                     "bubble's level set (density=), open top; A changes every frame",
    "moving_sphere_graded": "moving_sphere on a grid graded toward the walls (widths growing 1.15x per cell, "
                            "up to 8x; h= per-axis widths); A changes every frame",
}

#: The scenes built on :mod:`linsolve.problems.scenes` (the others are the original smoke scenes).
_STENCIL_SCENES = ("dam_break", "rising_bubble", "moving_sphere_graded")


# ----------------------------------------------------------------------------- simulation
class _SmokeSimulation:
    """A minimal MAC-grid smoke solver in grid units (h = 1, dt = 1, density 1).

    Pressure is scaled so that one projection is ``u = u* - grad p`` with
    ``A p = -div u*`` (``A`` from :func:`pressure_matrix`): the physical
    pressure is ``p * rho * h^2 / dt``.
    """

    UP = 1

    def __init__(self, shape, scene: str, rng: np.random.Generator):
        self.shape = shape
        self.ndim = len(shape)
        self.scene = scene
        self.rng = rng
        n_up = shape[self.UP]
        # Velocities in cells per frame; scaled with the grid so the flow looks
        # the same at every resolution.
        self.inflow = 0.02 * n_up
        self.buoyancy = 0.002 * n_up
        self.velocity = [np.zeros(tuple(s + (1 if d == axis else 0) for d, s in enumerate(shape)))
                         for axis in range(self.ndim)]
        self.density = np.zeros(shape)
        self.walls = np.zeros(shape, dtype=bool)
        for axis in range(self.ndim):
            sl = [slice(None)] * self.ndim
            sl[axis] = 0
            self.walls[tuple(sl)] = True
            if axis != self.UP:  # the top stays open (Dirichlet p = 0 beyond it)
                sl[axis] = shape[axis] - 1
                self.walls[tuple(sl)] = True
        self.centres = np.indices(shape, dtype=np.float64)
        # Face positions in cell-centre coordinates, per face grid.
        self.face_positions = []
        for axis in range(self.ndim):
            pos = np.indices(self.velocity[axis].shape, dtype=np.float64)
            pos[axis] -= 0.5
            self.face_positions.append(pos)
        mid = [0.5 * (s - 1) for s in shape]
        src = list(mid)
        src[self.UP] = 1.0 + 0.08 * n_up
        self.source_centre = np.array(src)
        self.source_radius = max(1.0, 0.08 * min(shape))
        self.sphere_radius = max(1.5, 0.14 * min(shape))
        centre = list(mid)
        centre[self.UP] = 0.45 * n_up
        if scene == "moving_sphere":
            # Dyadic positions moved by exactly one cell per frame: the voxelised
            # sphere shifts by one cell, so A changes every frame.
            centre[0] = float(np.floor(0.3 * shape[0])) + 0.25
            lo = 1.0 + self.sphere_radius
            hi = max(shape[0] - 2.0 - self.sphere_radius, lo + 1.0)
            self.sweep = (lo, hi)
            self.direction = 1.0
        self.sphere_centre = np.array(centre) if scene != "smoke_plume" else None
        self.solid_velocity = np.zeros(self.ndim)

    # -- geometry
    def move_obstacle(self, frame: int) -> None:
        if self.scene != "moving_sphere" or frame == 0:
            return
        lo, hi = self.sweep
        nxt = self.sphere_centre[0] + self.direction
        if nxt > hi or nxt < lo:
            self.direction = -self.direction
            nxt = self.sphere_centre[0] + self.direction
        self.sphere_centre[0] = nxt
        self.solid_velocity = np.zeros(self.ndim)
        self.solid_velocity[0] = self.direction

    def cell_types(self) -> np.ndarray:
        types = np.full(self.shape, FLUID, dtype=np.int8)
        types[self.walls] = SOLID
        if self.sphere_centre is not None:
            r2 = sum((self.centres[d] - self.sphere_centre[d]) ** 2 for d in range(self.ndim))
            types[r2 <= self.sphere_radius ** 2] = SOLID
        return types

    def _face_sides(self, types: np.ndarray, axis: int):
        # Cells on the low and high side of every face normal to ``axis``;
        # outside the array counts as AIR (open boundary).
        pad = [(1, 1) if d == axis else (0, 0) for d in range(self.ndim)]
        padded = np.pad(types, pad, constant_values=AIR)
        n = self.shape[axis]
        return np.take(padded, np.arange(0, n + 1), axis=axis), np.take(padded, np.arange(1, n + 2), axis=axis)

    def face_masks(self, types):
        """Per axis: (solid faces, faces the projection updates)."""
        masks = []
        for axis in range(self.ndim):
            lo, hi = self._face_sides(types, axis)
            solid = (lo == SOLID) | (hi == SOLID)
            active = ~solid & ((lo == FLUID) | (hi == FLUID))
            masks.append((solid, active))
        return masks

    # -- dynamics
    def _sample_velocity(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty_like(positions)
        for d in range(self.ndim):
            coords = positions.copy()
            coords[d] += 0.5
            out[d] = ndimage.map_coordinates(self.velocity[d], coords, order=1, mode="nearest")
        return out

    def advect(self) -> None:
        new_velocity = []
        for axis in range(self.ndim):
            pos = self.face_positions[axis]
            back = pos - self._sample_velocity(pos)
            back[axis] += 0.5
            new_velocity.append(ndimage.map_coordinates(self.velocity[axis], back, order=1, mode="nearest"))
        back = self.centres - self._sample_velocity(self.centres)
        self.density = ndimage.map_coordinates(self.density, back, order=1, mode="nearest")
        self.velocity = new_velocity

    def add_sources_and_forces(self) -> None:
        r2 = sum((self.centres[d] - self.source_centre[d]) ** 2 for d in range(self.ndim))
        source = r2 <= self.source_radius ** 2
        self.density[source] = 1.0
        # Buoyancy: smoke rises in proportion to its density (face average).
        up = self.UP
        rho = np.pad(self.density, [(1, 1) if d == up else (0, 0) for d in range(self.ndim)])
        n = self.shape[up]
        rho_face = 0.5 * (np.take(rho, np.arange(0, n + 1), axis=up) + np.take(rho, np.arange(1, n + 2), axis=up))
        self.velocity[up] += self.buoyancy * rho_face
        # Inflow jitter drawn from the seeded generator: different seeds give different flows.
        jitter = self.rng.standard_normal(self.ndim)
        for axis in range(self.ndim):
            lo, hi = self._face_sides(source.astype(np.int8), axis)
            at_source = (lo == 1) | (hi == 1)
            if axis == up:
                self.velocity[axis][at_source] = self.inflow * (1.0 + 0.2 * jitter[axis])
            else:
                self.velocity[axis][at_source] = 0.3 * self.inflow * jitter[axis]

    def enforce_solids(self, types, masks) -> None:
        for axis in range(self.ndim):
            self.velocity[axis][masks[axis][0]] = 0.0
        if self.sphere_centre is not None and np.any(self.solid_velocity):
            # Faces of the moving sphere carry its velocity; walls stay at rest.
            r2 = sum((self.centres[d] - self.sphere_centre[d]) ** 2 for d in range(self.ndim))
            sphere = (r2 <= self.sphere_radius ** 2).astype(np.int8)
            for axis in range(self.ndim):
                lo, hi = self._face_sides(sphere, axis)
                on_sphere = ((lo == 1) | (hi == 1)) & masks[axis][0]
                self.velocity[axis][on_sphere] = self.solid_velocity[axis]
        self.density[types == SOLID] = 0.0

    def project(self, p: np.ndarray, masks) -> None:
        grid_p = p.reshape(self.shape)
        for axis in range(self.ndim):
            padded = np.pad(grid_p, [(1, 1) if d == axis else (0, 0) for d in range(self.ndim)])
            n = self.shape[axis]
            grad = np.take(padded, np.arange(1, n + 2), axis=axis) - np.take(padded, np.arange(0, n + 1), axis=axis)
            active = masks[axis][1]
            self.velocity[axis][active] -= grad[active]


def _check_frames(frames) -> int:
    if isinstance(frames, bool) or not isinstance(frames, numbers.Integral):
        raise TypeError(f"frames must be an int, got {type(frames).__name__}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return int(frames)


def _fluid_shape(shape) -> tuple:
    shape = _check_shape(shape)
    if any(s < 8 for s in shape):
        raise ValueError(f"fluid_sequence needs at least 8 cells per axis, got {shape}")
    return shape


#: What a frame tells its pressure solver (passed to ``solver.solve`` when its signature takes them).
_FRAME_HINTS = ("context", "cell_types", "nullspace")
_START_HINTS = ("x0", "rtol")


def _solve_hints(solve_method, hints: dict) -> dict:
    """The hints ``solve_method`` takes: those its signature names, and the frame hints for ``**options``."""
    try:
        params = inspect.signature(solve_method).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return {}
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in hints.items()
            if v is not None and (k in params or (var_kw and k in _FRAME_HINTS))}


def _run_solver(solver, A, b, x0, rtol, nullspace, context, cell_types):
    """Solve one projection with the solver protocol; return (x, SolveResult or None).

    ``solver`` is an object with ``solve(A, b, **hints)`` (it gets the hints
    its signature names among ``x0, rtol, nullspace, context, cell_types``; a
    ``**options`` catch-all gets the frame's ``context, cell_types,
    nullspace``, not the start and tolerance, which such a solver keeps
    itself, e.g. :class:`~linsolve.SequenceSolver`), or a callable
    ``f(A, b, x0)``. Either may return a SolveResult or the solution.
    """
    hints = {"x0": x0, "rtol": rtol, "nullspace": nullspace, "context": context, "cell_types": cell_types}
    if hasattr(solver, "solve") and callable(solver.solve):
        res = solver.solve(A, b, **_solve_hints(solver.solve, hints))
    elif callable(solver):
        res = solver(A, b, x0)
    else:  # pragma: no cover - checked by fluid_sequence
        raise TypeError(_SOLVER_TYPE_ERROR.format(type(solver).__name__))
    if isinstance(res, SolveResult):
        return res.x, res
    return np.asarray(res, dtype=float).ravel(), None


_SOLVER_TYPE_ERROR = ("solver must be a linsolve method name, an object with .solve(A, b, **hints) "
                      "(e.g. SequenceSolver) or a callable f(A, b, x0); got {}")


def _as_solver(solver):
    """A method name becomes a solver object (resolved by the solve layer through the method registry)."""
    if isinstance(solver, str):
        from .._registry import named_solver

        return named_solver(solver)
    if not (callable(solver) or hasattr(solver, "solve")):
        raise TypeError(_SOLVER_TYPE_ERROR.format(type(solver).__name__))
    return solver


def fluid_sequence(shape, frames, *, scene="smoke_plume", seed=0, solver="auto", rtol=None,
                   check=True) -> Iterator[Instance]:
    """Pressure systems of small incompressible flow simulations, one :class:`Instance` per frame.

    Smoke scenes (``smoke_plume``, ``smoke_sphere``, ``moving_sphere``): each
    frame moves the obstacle (``moving_sphere``), advects velocity and smoke
    density semi-Lagrangian, adds the smoke source and buoyancy, sets the
    solid boundary velocities, then solves the pressure projection
    ``A p = b`` with ``solver`` and sets ``u <- u* - grad p``. The other
    scenes (see :data:`SCENES` and :mod:`linsolve.problems.scenes`) build
    their systems with :func:`~linsolve.problems.pressure_coefficients`:

    * ``dam_break``: free surface (ghost fluid, ``phi``) and a cut-cell bump
      (``face_fractions``); only liquid cells are unknowns.
    * ``rising_bubble``: two-phase water/air (density ratio 1000, ``density``).
    * ``moving_sphere_graded``: ``moving_sphere`` on a graded grid (``h``).

    The instance is yielded after its own projection (the simulation needs
    ``p`` to continue).

    Parameters
    ----------
    shape : tuple of 2 or 3 ints (each >= 8)
        Grid cells per axis; axis 1 is "up". Solid walls (one cell thick) line
        the sides and the bottom; the top is open (Dirichlet ``p = 0``).
    frames : int
        Number of frames (systems) to generate.
    scene : str
        One of :data:`SCENES`.
    seed : int
        Seeds the inflow jitter (smoke) or the initial liquid column / bubble;
        the same ``(shape, frames, scene, seed, solver)`` gives the same frames.
    solver : str, object with ``.solve(A, b, **hints)``, or callable
        How the projection is solved (this module imports no solver): a
        method name (resolved by :func:`linsolve.solve.method_solver`; warm-started
        from the previous frame's pressure), an object whose ``solve`` takes
        the hints its signature names among ``x0, rtol, nullspace, context,
        cell_types`` (a :class:`~linsolve.SequenceSolver` gets the frame's
        ``context, cell_types, nullspace`` and keeps its own rtol, warm start
        and tuning), or ``f(A, b, x0)``; each returns a SolveResult or the
        solution.
        The default ``"auto"`` takes multigrid where it pays (rising_bubble
        at 128^2, 5 frames: 0.1 s, against 4.6 s with plain ``"cg"``, which
        needs ~10^4 iterations at 64^3 on a density ratio of 1000).
    rtol : float, optional
        Relative residual of the pressure solve for method names. The
        divergence left after projection is the residual ``b - A p`` (scaled
        by ``V_ref / V_i <= 1`` on graded grids), so ``max|div u| <= ||b - A
        p||_2``. The default guarantees ``max|div u| <= 1e-6 max|div u*|``:
        ``1e-6 / sqrt(n_fluid)`` for the smoke scenes (as it always was) and
        ``1e-6 max|div u*| / ||b||_2`` (looser, equally sufficient) for the
        others.
    check : bool
        Warn (``RuntimeWarning``) when a projection solve did not converge.

    Yields
    ------
    Instance
        ``A`` (this frame's pressure matrix), ``b`` (minus the volume-weighted
        divergence of ``u*`` on fluid cells, 0 elsewhere, consistent with A's
        scaling: :meth:`PressureStencil.rhs`), ``grid_shape``, ``cell_types``
        (the effective ones: AIR where the liquid's ``phi >= 0``),
        ``x_prev`` (previous frame's pressure, ``None`` on frame 0), ``index``
        (frame number), ``context`` (a scalar in ``[0, 1]`` for contextual
        tuners: the sphere's x position for the moving spheres, the frame
        fraction ``index / (frames - 1)`` otherwise), and ``extras``:

        ``"matrix_options"``: the keyword arguments that rebuild ``A`` exactly,
        ``pressure_matrix(cell_types, **extras["matrix_options"])``;
        ``"spacing"``: ``h`` (1.0, or per-axis cell widths on the graded grid);
        ``"phi"``: the liquid level set (``dam_break``) or the bubble's
        (``rising_bubble``, < 0 in the air); ``"face_fractions"``: open face
        fractions (``dam_break``);
        ``"density"``: the field :func:`~linsolve.problems.render.render_frame`
        shows: smoke density (smoke scenes), the mass density ``rho`` of the
        matrix (``rising_bubble``: 1 in air, 1000 in water), the liquid
        indicator (``dam_break``);
        ``"pressure"``: this frame's solution ``p`` (length n);
        ``"velocity"``: list of face arrays after projection (MAC, ``velocity[d]``
        has one more entry along axis d); ``"divergence_before"`` /
        ``"divergence_after"``: ``max |div u|`` over fluid cells before / after
        projection (:func:`divergence` with ``spacing`` and ``face_fractions``);
        ``"solve"``: dict with ``iterations``, ``method``, ``converged``,
        ``time_s``, ``rtol``; ``"step_seconds"``: time of the frame outside the
        pressure solve; ``"nullspace"``: basis of closed regions or ``None``;
        ``"obstacle_centre"``: sphere centre (cell coordinates) or ``None``;
        ``"scene"``, ``"seed"``, ``"context_range"`` ``(0.0, 1.0)``.

    Examples
    --------
    >>> import numpy as np
    >>> from linsolve.problems import fluid_sequence, pressure_matrix
    >>> frames = list(fluid_sequence((24, 24), 3, scene="moving_sphere", seed=1))
    >>> len(frames), frames[0].A.shape
    (3, (576, 576))
    >>> all(f.extras["divergence_after"] <= 1e-6 * f.extras["divergence_before"] for f in frames)
    True
    >>> dam = list(fluid_sequence((24, 20), 2, scene="dam_break"))
    >>> A = pressure_matrix(dam[1].cell_types, **dam[1].extras["matrix_options"])
    >>> bool((A != dam[1].A).nnz == 0), bool((dam[0].A != dam[1].A).nnz > 0)
    (True, True)
    """
    shape = _fluid_shape(shape)
    frames = _check_frames(frames)
    if scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; choose one of {sorted(SCENES)}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if rtol is not None:
        from .._validation import check_tolerances

        rtol, _ = check_tolerances(rtol, 0.0)
        if rtol == 0:
            raise ValueError("rtol must be > 0")
    solver = _as_solver(solver)
    if scene in _STENCIL_SCENES:
        return _generate_stencil_scene(shape, frames, scene, int(seed), solver, rtol, check)
    return _generate(shape, frames, scene, int(seed), solver, rtol, check)


def _generate(shape, frames, scene, seed, solver, rtol, check):
    sim = _SmokeSimulation(shape, scene, np.random.default_rng(seed))
    p_prev = None
    previous_types = None
    A = None
    for frame in range(frames):
        t0 = time.perf_counter()
        sim.move_obstacle(frame)
        types = sim.cell_types()
        if previous_types is None or not np.array_equal(types, previous_types):
            A = pressure_matrix(types)
            nullspace = pressure_nullspace(types)
        previous_types = types
        masks = sim.face_masks(types)
        sim.advect()
        sim.add_sources_and_forces()
        sim.enforce_solids(types, masks)
        fluid = types == FLUID
        div_star = divergence(sim.velocity)
        b = np.where(fluid, -div_star, 0.0).ravel()
        if nullspace is not None:  # a closed region: keep b consistent (compatible) with A
            b -= nullspace @ (nullspace.T @ b)
        x0 = None
        if p_prev is not None:
            x0 = np.where(fluid.ravel(), p_prev, 0.0)
        frame_rtol = rtol if rtol is not None else float(1e-6 / np.sqrt(max(int(fluid.sum()), 1)))
        step = time.perf_counter() - t0
        p, res, solve_seconds = _solve_frame(solver, A, b, x0, frame_rtol, nullspace,
                                             _context(sim, scene, frame, frames), types)
        t2 = time.perf_counter()
        sim.project(p, masks)
        div_after = divergence(sim.velocity)
        step += time.perf_counter() - t2
        info = _solve_info(res, solve_seconds, frame_rtol, frame, check)
        yield Instance(
            A=A, b=b, context=_context(sim, scene, frame, frames), grid_shape=shape, cell_types=types,
            x_prev=None if p_prev is None else p_prev.copy(), index=frame,
            extras={
                "pressure": p.copy(),
                "velocity": [u.copy() for u in sim.velocity],
                "density": sim.density.copy(),
                "divergence_before": float(np.abs(div_star[fluid]).max()),
                "divergence_after": float(np.abs(div_after[fluid]).max()),
                "solve": info,
                "step_seconds": step,
                "nullspace": nullspace,
                "obstacle_centre": None if sim.sphere_centre is None else tuple(float(c) for c in sim.sphere_centre),
                "scene": scene,
                "seed": seed,
                "context_range": (0.0, 1.0),
                "matrix_options": {"h": 1.0},
                "spacing": 1.0,
            })
        p_prev = p


def _solve_frame(solver, A, b, x0, frame_rtol, nullspace, context, types):
    """One frame's projection solve: (pressure, SolveResult or None, seconds); b = 0 gives p = 0 unsolved."""
    t1 = time.perf_counter()
    if np.any(b):
        p, res = _run_solver(solver, A, b, x0, frame_rtol, nullspace, context, types)
    else:
        p, res = np.zeros(b.shape), None
    solve_seconds = time.perf_counter() - t1
    p = np.asarray(p, dtype=float)
    if p.shape != b.shape or not np.all(np.isfinite(p)):
        raise ValueError(f"the projection solver returned an invalid pressure (shape {p.shape}, "
                         f"finite: {bool(np.all(np.isfinite(p)))})")
    return p, res, solve_seconds


def _solve_info(res, solve_seconds, frame_rtol, frame, check) -> dict:
    info = {"iterations": 0, "method": "none (b = 0)", "converged": True, "time_s": solve_seconds,
            "rtol": frame_rtol}
    if res is not None:
        info.update(iterations=int(res.iterations), method=res.method, converged=bool(res.converged))
        if check and not res.converged:
            warnings.warn(f"frame {frame}: the pressure solve did not converge ({res.message}); "
                          "the velocity keeps some divergence", RuntimeWarning, stacklevel=user_stacklevel())
    return info


def _generate_stencil_scene(shape, frames, scene, seed, solver, rtol, check):
    from .pressure import stencil_nullspace
    from .scenes import make_scene

    sim = make_scene(scene, shape, np.random.default_rng(seed))
    p_prev = None
    for frame in range(frames):
        t0 = time.perf_counter()
        types, options = sim.advance(frame)
        stencil = pressure_coefficients(types, **options)
        A = stencil.matrix()
        nullspace = stencil_nullspace(stencil)
        types = stencil.cell_types
        fluid = types == FLUID
        fractions = options.get("face_fractions")
        u_star = sim.velocity
        b = stencil.rhs(u_star, fractions)
        if nullspace is not None:  # a closed region: keep b consistent (compatible) with A
            b -= nullspace @ (nullspace.T @ b)
        div_before = float(np.abs(divergence(u_star, options["h"], face_fractions=fractions)[fluid]).max())
        x0 = None if p_prev is None else np.where(fluid.ravel(), p_prev, 0.0)
        b_norm = float(np.linalg.norm(b))
        if rtol is not None:
            frame_rtol = rtol
        else:
            frame_rtol = float(min(1e-6 * div_before / b_norm, 1e-6)) if b_norm > 0 else 1e-6
        context = sim.context(frame, frames)
        step = time.perf_counter() - t0
        p, res, solve_seconds = _solve_frame(solver, A, b, x0, frame_rtol, nullspace, context, types)
        t2 = time.perf_counter()
        sim.finish(stencil, p, frame)
        div_after = float(np.abs(divergence(sim.velocity, options["h"], face_fractions=fractions)[fluid]).max())
        extras = sim.extras(stencil)
        step += time.perf_counter() - t2
        info = _solve_info(res, solve_seconds, frame_rtol, frame, check)
        matrix_options = {key: value for key, value in options.items() if value is not None}
        extras.update({
            "pressure": p.copy(),
            "velocity": [u.copy() for u in sim.velocity],
            "divergence_before": div_before,
            "divergence_after": div_after,
            "solve": info,
            "step_seconds": step,
            "nullspace": nullspace,
            "scene": scene,
            "seed": seed,
            "context_range": (0.0, 1.0),
            "matrix_options": matrix_options,
        })
        yield Instance(A=A, b=b, context=context, grid_shape=shape, cell_types=types,
                       x_prev=None if p_prev is None else p_prev.copy(), index=frame, extras=extras)
        p_prev = p


def _context(sim, scene, frame, frames) -> float:
    if scene == "moving_sphere":
        lo, hi = sim.sweep
        return float(np.clip((sim.sphere_centre[0] - lo) / (hi - lo), 0.0, 1.0))
    return frame / max(frames - 1, 1)
