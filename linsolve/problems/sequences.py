"""Sequences of related SPD systems for online parameter tuning ("Learning to Relax").

* :func:`shifted_laplacian_sequence`: the paper's synthetic setting, a 2D
  5-point Laplacian plus a random diagonal shift per instance.
* :func:`heat_sequence`: a 2D heat equation with time-varying diffusion,
  Crank–Nicolson steps, one system per step.

Both return re-iterable, reproducible sequence objects: every ``iter(seq)``
replays the same instances (same seed), independent of how the caller solves
them.
"""
from __future__ import annotations

import numbers
from typing import Iterator

import numpy as np
import scipy.fft
import scipy.sparse as sp

from .instance import FLUID, Instance
from .poisson import poisson

__all__ = ["shifted_laplacian_sequence", "heat_sequence", "ShiftedLaplacianSequence", "HeatSequence"]

_BETA_PARAMS = {"low": (2.0, 6.0), "high": (0.5, 1.5)}


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _young_omega(beta: float) -> float:
    return float(1.0 + (beta / (1.0 + np.sqrt(1.0 - beta * beta))) ** 2)


class ShiftedLaplacianSequence:
    """Iterable of ``Instance`` with ``A_t = A + c_t I`` (see :func:`shifted_laplacian_sequence`).

    Attributes
    ----------
    n, T, variance, seed : as given
    context_range : (float, float)
        ``(-0.15 s, 0.45)``: every ``c_t`` lies in it (``s`` below).
    negative_scale : float
        ``s = min(1, λ_min(n) / λ_min(10))``: the negative shifts are scaled by
        the smallest eigenvalue of ``A`` relative to the paper's 10 × 10 grid,
        so every ``A_t`` stays positive definite (``c_t >= -0.92 λ_min``); for
        ``n <= 10`` the distribution is the paper's.
    base : csr_matrix
        The unshifted Laplacian ``A``.
    """

    def __init__(self, n: int, T: int, variance: str = "low", seed: int = 0):
        self.n = _check_int(n, "n", 1)
        self.T = _check_int(T, "T", 1)  # as fluid_sequence(frames=0): an empty run is a caller mistake
        if variance not in _BETA_PARAMS:
            raise ValueError(f"variance must be 'low' or 'high', got {variance!r}")
        self.variance = variance
        self.seed = _check_int(seed, "seed", 0)
        self.base = poisson((self.n, self.n))
        self._rho_base = 4.0 * np.cos(np.pi / (self.n + 1))  # largest |eigenvalue| of 4I - A
        # At n = 32 a shift of -0.15 made half the instances indefinite (lambda_min(A) = 0.019 there).
        self.negative_scale = min(1.0, _lambda_min(self.n) / _lambda_min(10))
        self.context_range = (-0.15 * self.negative_scale, 0.45)

    def __len__(self) -> int:
        return self.T

    def jacobi_rho(self, c: float) -> float:
        """Exact ρ(I - D⁻¹A_t) = 4 cos(π/(n+1)) / (4 + c) for the shift ``c``."""
        return float(self._rho_base / (4.0 + c))

    def __iter__(self) -> Iterator[Instance]:
        rng = np.random.default_rng(self.seed)
        a, b = _BETA_PARAMS[self.variance]
        N = self.n * self.n
        eye = sp.identity(N, format="csr")
        cells = np.full((self.n, self.n), FLUID, dtype=np.int8)
        for t in range(self.T):
            c = (12.0 * rng.beta(a, b) - 3.0) / 20.0
            if c < 0:
                c *= self.negative_scale
            while True:  # radially truncated Gaussian by rejection (accepts about half the draws)
                rhs = rng.standard_normal(N)
                if np.linalg.norm(rhs) <= np.sqrt(N):
                    break
            A = (self.base + c * eye).tocsr()
            beta = self.jacobi_rho(c)
            yield Instance(A=A, b=rhs, context=float(c), grid_shape=(self.n, self.n), cell_types=cells,
                           index=t, extras={"jacobi_rho": beta, "omega_opt": _young_omega(beta)})


def _lambda_min(n: int) -> float:
    """Smallest eigenvalue of the unscaled 5-point Dirichlet Laplacian on an ``n x n`` grid."""
    return float(4.0 - 4.0 * np.cos(np.pi / (n + 1)))


def shifted_laplacian_sequence(n, T, *, variance="low", seed=0) -> ShiftedLaplacianSequence:
    """The synthetic sequence of "Learning to Relax": ``A_t = A + c_t I``, random ``b_t``.

    ``A`` is the 5-point Laplacian on an ``n × n`` grid (Dirichlet, diagonal 4,
    unscaled), ``c_t = (12 c - 3) / 20`` with ``c ~ Beta(2, 6)`` (``"low"``
    variance) or ``Beta(1/2, 3/2)`` (``"high"``), so ``c_t ∈ [-0.15, 0.45]``
    (negative shifts scaled down on grids finer than the paper's 10 × 10, so
    that every ``A_t`` stays SPD: see ``negative_scale``), and
    ``b_t ~ N(0, I)`` conditioned on ``||b_t|| <= sqrt(n²)``.

    Parameters
    ----------
    n : int
        Grid side (10 gives the paper's 100 unknowns).
    T : int
        Number of instances (at least 1).
    variance : {"low", "high"}
        Distribution of the shift.
    seed : int
        Seed; the sequence is the same on every iteration.

    Returns
    -------
    ShiftedLaplacianSequence
        Iterable of :class:`~linsolve.problems.Instance` with ``context = c_t``
        and ``extras = {"jacobi_rho": β_t, "omega_opt": ω*_t}``, where
        ``β_t = 4 cos(π/(n+1)) / (4 + c_t)`` is exact and ``ω*_t`` is Young's
        optimal SOR ω; ``len(seq) == T`` and ``seq.context_range`` bounds the
        contexts.

    Examples
    --------
    >>> import linsolve
    >>> seq = linsolve.problems.shifted_laplacian_sequence(10, 3, variance="high", seed=1)
    >>> [inst.A.shape for inst in seq]
    [(100, 100), (100, 100), (100, 100)]
    >>> lo, hi = seq.context_range
    >>> all(lo <= inst.context <= hi for inst in seq)
    True
    """
    return ShiftedLaplacianSequence(n, T, variance, seed)


def _bump(x: np.ndarray, y: np.ndarray, center, radius: float) -> np.ndarray:
    """Smooth bump ``exp(1 - 1/(1 - r²/R²))`` inside radius ``R``, 0 outside."""
    r2 = np.minimum(((x - center[0]) ** 2 + (y - center[1]) ** 2) / radius ** 2, 1.0)
    with np.errstate(divide="ignore", over="ignore"):
        return np.where(r2 < 1.0, np.exp(1.0 - 1.0 / (1.0 - r2)), 0.0)


def heat_diffusion(t):
    """κ(t) = max(0.1 sin 2πt, −10 sin 2πt) of the heat sequence (in [0, 10])."""
    s = np.sin(2.0 * np.pi * np.asarray(t, dtype=float))
    return np.maximum(0.1 * s, -10.0 * s)


class HeatSequence:
    """Iterable of Crank–Nicolson systems of a 2D heat equation (see :func:`heat_sequence`).

    Attributes
    ----------
    nx, T, dt, seed : as given
    shape : (int, int)
        Interior grid ``(nx - 1, nx - 1)``.
    context_range : (float, float)
        ``(0, 10)``: the range of κ.
    """

    context_range = (0.0, 10.0)

    def __init__(self, nx: int, T: int, dt: float = 1e-3, seed: int = 0):
        self.nx = _check_int(nx, "nx", 3)
        self.T = _check_int(T, "T", 1)  # as fluid_sequence(frames=0): an empty run is a caller mistake
        if isinstance(dt, bool) or not isinstance(dt, numbers.Real) or not (np.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        self.dt = float(dt)
        self.seed = _check_int(seed, "seed", 0)
        m = self.nx - 1
        self.shape = (m, m)
        self.h = 1.0 / self.nx
        # -Δ_h with zero Dirichlet values one spacing outside the interior grid.
        self.laplacian = poisson(self.shape, h=self.h)
        k = np.arange(1, m + 1)
        lam1 = 4.0 / self.h ** 2 * np.sin(np.pi * k / (2.0 * self.nx)) ** 2
        self._eig = lam1[:, None] + lam1[None, :]  # eigenvalues of -Δ_h (DST-I modes)
        coords = np.arange(1, m + 1) * self.h
        self._x, self._y = np.meshgrid(coords, coords, indexing="ij")

    def __len__(self) -> int:
        return self.T

    def forcing(self, t: float) -> np.ndarray:
        """f(t) = 32 · bump of radius 1/8 circling the centre at radius 1/4 (8 turns per unit time)."""
        center = (0.5 + np.cos(16.0 * np.pi * t) / 4.0, 0.5 + np.sin(16.0 * np.pi * t) / 4.0)
        return 32.0 * _bump(self._x, self._y, center, 0.125).ravel()

    def initial(self) -> np.ndarray:
        """u(0) = bump of radius 1/4 at the centre."""
        return _bump(self._x, self._y, (0.5, 0.5), 0.25).ravel()

    def _exact_solve(self, s: float, rhs: np.ndarray) -> np.ndarray:
        """Solve ``(I + s(-Δ_h)) u = rhs`` exactly: ``-Δ_h`` is diagonal in the DST-I basis."""
        r = scipy.fft.dstn(rhs.reshape(self.shape), type=1, norm="ortho")
        return scipy.fft.idstn(r / (1.0 + s * self._eig), type=1, norm="ortho").ravel()

    def __iter__(self) -> Iterator[Instance]:
        N = self.shape[0] * self.shape[1]
        eye = sp.identity(N, format="csr")
        cells = np.full(self.shape, FLUID, dtype=np.int8)
        u = self.initial()
        for step in range(self.T):
            t_half = (step + 0.5) * self.dt
            kappa = float(heat_diffusion(t_half))
            s = 0.5 * kappa * self.dt
            A = (eye + s * self.laplacian).tocsr()
            b = u - s * (self.laplacian @ u) + self.dt * self.forcing(t_half)
            u_next = self._exact_solve(s, b)
            yield Instance(A=A, b=b, context=kappa, grid_shape=self.shape, cell_types=cells, x_prev=u,
                           index=step, extras={"t": (step + 1) * self.dt, "x_ref": u_next})
            u = u_next


def heat_sequence(nx, T, *, dt=1e-3, seed=0) -> HeatSequence:
    """Crank–Nicolson systems of ``u_t = κ(t) Δu + f`` on the unit square, one per time step.

    Zero Dirichlet boundary, 5-point differences on the ``(nx-1) × (nx-1)``
    interior grid (spacing ``1/nx``). Step ``k`` solves
    ``(I - ½κΔt Δ_h) u_{k+1} = (I + ½κΔt Δ_h) u_k + Δt f`` with κ and f at
    ``t = (k + ½)Δt``, ``κ(t) = max(0.1 sin 2πt, -10 sin 2πt)``, f a bump
    of height 32 moving on a circle, ``u_0`` a bump at the centre (as in
    "Learning to Relax"). ``context = κ``.

    The right-hand side of step ``k`` needs ``u_k``. So that the sequence is
    reproducible and independent of the solver being tuned, the sequence
    advances itself with the **exact** solution, computed by a fast sine
    transform (``-Δ_h`` is diagonal in the DST-I basis; exact to rounding,
    O(n log n)). Each instance carries ``x_prev = u_k`` (for warm starts)
    and ``extras["x_ref"] = u_{k+1}`` (the exact solution of this system).

    Parameters
    ----------
    nx : int
        Grid intervals per side (unknowns ``(nx - 1)²``).
    T : int
        Number of time steps, at least 1 (``T = 1/dt`` covers one period of κ).
    dt : float
        Time step.
    seed : int
        Accepted for a uniform interface; this sequence is deterministic.

    Returns
    -------
    HeatSequence
        Iterable of :class:`~linsolve.problems.Instance`; ``len(seq) == T``;
        ``seq.context_range == (0, 10)``.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> seq = linsolve.problems.heat_sequence(20, 5)
    >>> inst = list(seq)[-1]
    >>> inst.A.shape, inst.grid_shape
    ((361, 361), (19, 19))
    >>> bool(np.linalg.norm(inst.A @ inst.extras["x_ref"] - inst.b) < 1e-10 * np.linalg.norm(inst.b))
    True
    """
    return HeatSequence(nx, T, dt, seed)
