"""The torch backend: every solver on torch tensors, on a CPU or a GPU.

:func:`linsolve.solve` sends a call here when ``device != "cpu"`` or when ``A``
or ``b`` is a torch tensor. The iterations run on the device; the host only
sees one batch of scalars every ``check_every`` iterations.

Devices and types
-----------------
* The solve runs on ``device`` when it names a non-CPU device (``"cuda"``,
  ``"cuda:1"``). With the default ``device="cpu"`` it runs where the tensor
  inputs live (a CUDA ``b`` solves on that GPU), so the result is always on
  the device of the input. Tensors on two different devices are refused.
* ``x`` is always returned as a **torch tensor** on the solve's device, also
  for NumPy inputs with ``device="cuda"`` (copying it back every call would
  defeat the purpose inside a simulation loop; ``res.x.cpu().numpy()`` when
  wanted).
* float32 when ``A``, ``b`` (and ``x0``) are all float32, float64 otherwise
  (the rule of :func:`linsolve._validation.solve_dtype`); float16/bfloat16
  and complex are refused.

Methods
-------
``"cg"`` (optional ``M``), ``"ssor-cg"`` (CG with the red-black SSOR
preconditioner), ``"sor"`` (red-black SOR/SSOR as a stationary solver),
``"dcdm"`` (Deep Conjugate Direction Method, network on the same device),
``"learned-pcg"``/``"gmg-pcg"`` (CG with the multigrid V-cycle of
:mod:`linsolve.precond.multigrid`, ported to torch), ``"auto"`` (the NumPy
backend's rule where it applies on a device (:func:`linsolve._auto.choose`):
``"learned-pcg"`` (``"gmg-pcg"`` without a shipped model) on a grid stencil
above the multigrid crossover (``GRID_MIN_CELLS``: 3,000 cells in 2D, 12,000 in
3D, or smaller grids whose coefficients jump); ``"cg"`` otherwise, since PyAMG
does not run on a device).
``M`` for ``"cg"`` may be ``"jacobi"``, ``"ssor"`` (red-black), a torch or
SciPy matrix, an object with ``to_torch(device=, dtype=)`` returning a
callable, a :class:`~linsolve.precond.multigrid.GeometricMG`, any callable
(``nn.Module``) mapping an ``(n,)`` tensor to an ``(n,)`` tensor (a module
with ``dims`` gets ``(1, 1, *grid_shape)``), or a SciPy ``LinearOperator``
(through the host each application: correct but slow on a GPU, warned about).
SOR/SSOR use red-black ordering, so ``A`` must be a 5/7-point stencil on a
grid (``grid_shape``, ``cell_types`` or the grid :func:`linsolve.find_grid`
reads off the sparsity pattern); their iterates are those of red-black SOR, not the
natural-order SOR of the NumPy backend.

Options
-------
``check_every`` (default :data:`CHECK_EVERY` = 8): iterations between host
synchronisations; the count stays exact (see
:func:`linsolve.krylov.cg.pcg_loop` for CG, :func:`linsolve.krylov.stationary.stationary_loop`
for SOR and :func:`linsolve.krylov.dcdm.dcdm_loop`): the scalars of a batch stay on the device, when the
batch contains the stopping iteration the loop rewinds to the copy made at
the start of the batch and replays up to it. A ``callback`` forces
``check_every=1``. ``operator``: ``"csr"`` (default, torch sparse CSR) or
``"stencil"`` (matrix-free 5/7-point stencil, needs a grid). ``omega``,
``symmetric`` (SOR), ``model``, ``n_orth`` (DCDM), ``grid_shape``,
``cell_types``.

Convergence is claimed only on the true residual ``||b - A x||``, computed on
the device from ``x`` itself.
"""
from __future__ import annotations

import numbers
import time
import warnings

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from .. import _registry
from .._result import SolveResult
from .._validation import (as_sparse_matrix, as_vector, check_callback, check_grid_shape, check_maxiter,
                           check_omega, check_tolerances, user_stacklevel)

__all__ = ["solve", "CHECK_EVERY", "TorchSystem", "prepare", "torch_preconditioner", "METHODS"]

#: Default number of iterations between two host synchronisations (convergence checks).
CHECK_EVERY = 8



def __getattr__(name):
    if name == "METHODS":  # the names with a torch driver, read from the one registry
        return tuple(_registry.available_methods("torch"))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch():
    from .._optional import require_torch

    return require_torch("the torch backend (device=... or torch tensors)")


def _is_torch(obj) -> bool:
    return type(obj).__module__.startswith("torch")


# ----------------------------------------------------------------------------- input handling

def _resolve_device(device, *inputs):
    """The device the solve runs on (see the module docstring)."""
    torch = _torch()
    devices = {str(t.device) for t in inputs if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"A, b and x0 are tensors on different devices ({sorted(devices)}); move them to one")
    try:
        requested = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if requested.type != "cpu":
        target = requested
    elif devices:
        target = torch.device(devices.pop())
    else:
        target = requested
    if target.type not in ("cpu", "cuda"):
        # meta tensors hold no values; mps and the other back-ends lack the sparse kernels the solvers use
        raise ValueError(f"device {str(target)!r} is not supported: linsolve's torch backend runs on 'cpu' or "
                         f"'cuda'" + (" (A, b or x0 is on it)" if devices or requested.type == "cpu" else ""))
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available in this torch installation "
                             f"(torch {torch.__version__}); use device='cpu'")
        if target.index is not None and target.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    from .torch_kernels import normalize_device

    return normalize_device(target)


def _check_torch_dtype(dtype, name):
    torch = _torch()
    if dtype.is_complex:
        raise TypeError(f"{name} has complex dtype {dtype}; linsolve solves real systems only")
    if dtype in (torch.float16, torch.bfloat16):
        raise TypeError(f"{name} has dtype {dtype}; the torch backend solves in float32 or float64 "
                        f"(convert with .float())")
    if dtype == torch.bool or not (dtype.is_floating_point or dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        if dtype != torch.bool:
            raise TypeError(f"{name} has non-numeric dtype {dtype}")


def _is_float32(dtype) -> bool:
    torch = _torch()
    if isinstance(dtype, torch.dtype):
        return dtype == torch.float32
    return np.dtype(dtype) == np.float32


def _tensor_to_scipy(T) -> sp.csr_matrix:
    """A torch matrix (dense or sparse, any device) as a SciPy CSR matrix on the host."""
    torch = _torch()
    T = T.detach()
    if T.layout == torch.strided:
        return sp.csr_matrix(T.cpu().numpy())
    C = T.to_sparse_csr().cpu()
    return sp.csr_matrix((C.values().numpy(), C.col_indices().numpy(), C.crow_indices().numpy()),
                         shape=tuple(C.shape))


def _as_torch_vector(v, n, name, device, dtype):
    torch = _torch()
    if isinstance(v, torch.Tensor):
        _check_torch_dtype(v.dtype, name)
        t = v.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.ndim == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.ndim != 1:
            raise ValueError(f"{name} must have shape ({n},) or ({n}, 1), got {tuple(v.shape)}")
        if t.shape[0] != n:
            raise ValueError(f"{name} has length {t.shape[0]}, expected {n} to match A")
        t = t.to(device=device, dtype=dtype)
        if not bool(torch.isfinite(t).all()):
            bad = int(torch.nonzero(~torch.isfinite(t))[0, 0])
            raise ValueError(f"{name} contains NaN or Inf (first at index {bad})")
        return t
    arr = as_vector(v, n, name)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device=device, dtype=dtype)


class TorchSystem:
    """A validated system on one device: operator, vectors, tolerances, grid.

    Attributes: ``A`` (callable ``A @ v``), ``matrix`` (host SciPy CSR, built
    lazily from a tensor ``A`` when a method needs it), ``b``, ``x``,
    ``device``, ``dtype``, ``n``, ``rtol``, ``atol``, ``tol``, ``bnorm``,
    ``maxiter``, ``callback``, ``grid_shape``, ``cell_types``.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def host_matrix(self) -> sp.csr_matrix:
        if self.matrix is None:
            if self.tensor is None:
                raise ValueError("this method needs the matrix of A; pass a matrix or tensor, "
                                 "not a prebuilt operator")
            self.matrix = as_sparse_matrix(_tensor_to_scipy(self.tensor), "A")
        return self.matrix

    def grid(self, required: str = "") -> tuple | None:
        """The grid shape (given, from ``cell_types``, or inferred), checked against A's pattern."""
        from ..structure import find_grid
        from .torch_kernels import is_grid_stencil

        if self._grid_checked:
            if self.grid_shape is None and required:
                raise ValueError(self._grid_error(required))
            return self.grid_shape
        self._grid_checked = True
        checked = getattr(self.A, "grid_checked", None)
        if self.grid_shape is not None and checked is not None and self.grid_shape in checked:
            return self.grid_shape  # validated by an earlier solve with this prebuilt operator
        A = self.host_matrix()
        if self.grid_shape is None:
            found = find_grid(A)
            self.grid_shape = found.shape if found is not None and found.border is None else None
        elif not is_grid_stencil(A, self.grid_shape):
            raise ValueError(f"A is not a 5/7-point stencil on grid_shape={self.grid_shape}: red-black "
                             f"ordering and the stencil operator need couplings between face neighbours only")
        if self.grid_shape is not None and checked is not None:
            checked.add(self.grid_shape)
        if self.grid_shape is None and required:
            raise ValueError(self._grid_error(required))
        return self.grid_shape

    @staticmethod
    def _grid_error(required):
        return (f"{required} needs A to be a 5/7-point stencil on a grid: pass grid_shape=(nx, ny[, nz]) "
                f"or cell_types (A's sparsity pattern is no 5/7-point stencil on any grid)")


def prepare(A, b, x0=None, *, rtol=1e-6, atol=0.0, maxiter=None, callback=None, device="cpu",
            grid_shape=None, cell_types=None, operator="csr", maxiter_factor=10) -> TorchSystem:
    """Validate the inputs and move them to the solve's device (see the module docstring).

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.torch_backend import prepare
    >>> s = prepare(linsolve.problems.poisson((4, 4)), np.ones(16))
    >>> s.device.type, s.dtype, s.n, round(s.bnorm, 6)
    ('cpu', torch.float64, 16, 4.0)
    """
    torch = _torch()
    from .torch_kernels import CSROperator, StencilOperator

    device = _resolve_device(device, A, b, x0)
    prebuilt = isinstance(A, (CSROperator, StencilOperator))
    tensor = None
    matrix = None
    if prebuilt:
        if A.device != device:
            raise ValueError(f"the prebuilt operator A is on {A.device}, the solve runs on {device}")
        a_float32 = A.dtype == torch.float32
        n = A.shape[0]
        matrix = getattr(A, "source", None)
    elif isinstance(A, torch.Tensor):
        _check_torch_dtype(A.dtype, "A")
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square 2-D tensor, got shape {tuple(A.shape)}")
        if A.shape[0] == 0:
            raise ValueError(f"A is empty (shape {tuple(A.shape)})")
        tensor = A.detach()
        if tensor.layout == torch.sparse_coo:
            tensor = tensor.coalesce()
        values = tensor.values() if tensor.layout == torch.sparse_coo else (
            tensor.to_sparse_csr().values() if tensor.layout != torch.strided else tensor)
        if values.dtype.is_floating_point and not bool(torch.isfinite(values).all()):
            raise ValueError("A contains NaN or Inf")
        a_float32 = A.dtype == torch.float32
        n = A.shape[0]
    elif isinstance(A, LinearOperator):
        raise TypeError("the torch backend needs an explicit matrix A (SciPy sparse, ndarray or torch "
                        "tensor), not a LinearOperator")
    else:
        matrix = as_sparse_matrix(A, "A")
        a_float32 = matrix.dtype == np.float32
        n = matrix.shape[0]
    b_float32 = b.dtype == torch.float32 if isinstance(b, torch.Tensor) else _is_float32(np.asarray(b).dtype)
    x_float32 = True
    if x0 is not None:
        x_float32 = x0.dtype == torch.float32 if isinstance(x0, torch.Tensor) else \
            _is_float32(np.asarray(x0).dtype)
    dtype = torch.float32 if (a_float32 and b_float32 and x_float32) else torch.float64
    if prebuilt and A.dtype != dtype:
        raise ValueError(f"the prebuilt operator A is {A.dtype} but b/x0 ask for {dtype}")
    b_t = _as_torch_vector(b, n, "b", device, dtype)
    x_t = torch.zeros(n, dtype=dtype, device=device) if x0 is None else \
        _as_torch_vector(x0, n, "x0", device, dtype).clone()
    rtol, atol = check_tolerances(rtol, atol)
    maxiter = check_maxiter(maxiter, n, maxiter_factor)
    callback = check_callback(callback)
    if cell_types is not None:
        shape = check_grid_shape(np.shape(cell_types), n, "cell_types.shape")
        if grid_shape is not None and tuple(int(s) for s in grid_shape) != shape:
            raise ValueError(f"grid_shape {tuple(grid_shape)} does not match cell_types.shape {shape}")
        grid_shape = shape
    elif grid_shape is not None:
        grid_shape = check_grid_shape(grid_shape, n, "grid_shape")
    if operator not in ("csr", "stencil"):
        raise ValueError(f"operator must be 'csr' or 'stencil', got {operator!r}")
    bnorm = float(torch.linalg.vector_norm(b_t))
    system = TorchSystem(A=None, matrix=matrix, tensor=tensor, b=b_t, x=x_t, device=device, dtype=dtype,
                         n=n, rtol=rtol, atol=atol, tol=max(rtol * bnorm, atol), bnorm=bnorm,
                         maxiter=maxiter, callback=callback, grid_shape=grid_shape, cell_types=cell_types,
                         operator=operator, _grid_checked=prebuilt and getattr(A, "grid_shape", None) is not None)
    if prebuilt:
        system.A = A
        if getattr(A, "grid_shape", None) is not None:
            system.grid_shape = A.grid_shape
    elif operator == "stencil":
        system.A = StencilOperator(system.host_matrix(), system.grid("operator='stencil'"),
                                   device=device, dtype=dtype)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            system.A = CSROperator(matrix if matrix is not None else tensor, device=device, dtype=dtype)
    return system


def _diagonal(system):
    torch = _torch()
    d = system.A.diagonal()
    if not bool((d > 0).all()):
        row = int(torch.nonzero(~(d > 0))[0, 0])
        raise ValueError(f"A has a zero or negative diagonal entry in row {row}; Jacobi/SOR/SSOR need a "
                         f"positive diagonal")
    return d


def _red_black(system, omega, what):
    from .torch_kernels import RedBlack, red_mask

    shape = system.grid(what)
    return RedBlack(system.A, _diagonal(system), red_mask(shape), omega)


# ----------------------------------------------------------------------------- preconditioners

def _callable_preconditioner(fn, system, name="M"):
    torch = _torch()
    n = system.n
    shape = system.grid_shape
    dims = getattr(fn, "dims", None)
    if isinstance(fn, torch.nn.Module):
        params = list(fn.parameters())
        if params and params[0].device != system.device:
            raise ValueError(f"{name}'s parameters are on {params[0].device} but the solve runs on "
                             f"{system.device}; move it with {name}.to(device)")
        if dims in (2, 3):
            shape = system.grid(f"{name} (a {dims}-D network)")
            if len(shape) != dims:
                raise ValueError(f"{name} is a {dims}-D network but the grid {shape} is {len(shape)}-D")
    checked = []
    wants_grid = dims in (2, 3) and shape is not None

    def apply(r):
        inp = r.view(1, 1, *shape) if wants_grid else r
        out = fn(inp)
        if not checked:
            if not isinstance(out, torch.Tensor) or out.numel() != n:
                raise ValueError(f"{name}(r) must return a tensor with {n} entries, got "
                                 f"{getattr(out, 'shape', type(out).__name__)}")
            checked.append(True)
        return out.reshape(-1).to(r.dtype)

    return apply


def torch_preconditioner(M, system, omega=1.0):
    """A callable ``r -> M r`` on the system's device for every supported kind of ``M``.

    Returns ``(apply, description)``. See the module docstring for the kinds.

    Examples
    --------
    >>> import numpy as np, linsolve
    >>> from linsolve.backends.torch_backend import prepare, torch_preconditioner
    >>> s = prepare(linsolve.problems.poisson((4, 4)), np.ones(16))
    >>> apply, what = torch_preconditioner("jacobi", s)
    >>> what, float(apply(s.b)[0])
    ('jacobi', 0.25)
    """
    torch = _torch()
    from ..krylov.cg import check_symmetric_preconditioner
    from .torch_kernels import CSROperator

    if M is None:
        return None, "none"
    check_symmetric_preconditioner(M)
    n = system.n
    if isinstance(M, str):
        if M == "jacobi":
            inv = 1.0 / _diagonal(system)
            return (lambda r: r * inv), "jacobi"
        if M in ("ssor", "ssor-rb", "red-black-ssor"):
            return _red_black(system, check_omega(omega), "M='ssor'").ssor_apply, "ssor(red-black)"
        raise ValueError(f"M={M!r} is not a preconditioner name the torch backend knows; "
                         f"use 'jacobi' or 'ssor'")
    to_torch = getattr(M, "to_torch", None)
    if callable(to_torch):
        return to_torch(device=system.device, dtype=system.dtype), type(M).__name__
    if type(M).__name__ == "GeometricMG":
        from .torch_kernels import TorchVCycle

        return TorchVCycle(M, device=system.device, dtype=system.dtype), f"torch-{M.name}"
    if isinstance(M, torch.Tensor) or sp.issparse(M) or isinstance(M, np.ndarray):
        if tuple(M.shape) != (n, n):
            raise ValueError(f"M has shape {tuple(M.shape)}, expected {(n, n)} to match A")
        if isinstance(M, torch.Tensor):
            _check_torch_dtype(M.dtype, "M")
            if M.layout == torch.strided:
                dense = M.detach().to(device=system.device, dtype=system.dtype)
                return (lambda r: torch.mv(dense, r)), "dense matrix"
            mat = M
        else:
            mat = as_sparse_matrix(M, "M")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return CSROperator(mat, device=system.device, dtype=system.dtype), "sparse matrix"
    if isinstance(M, LinearOperator):
        if tuple(M.shape) != (n, n):
            raise ValueError(f"M has shape {tuple(M.shape)}, expected {(n, n)} to match A")
        if system.device.type != "cpu":
            warnings.warn("M is a SciPy LinearOperator: every application copies r to the host and back, "
                          "which synchronises each iteration; give a torch callable for GPU speed",
                          RuntimeWarning, stacklevel=user_stacklevel())
        np_dtype = np.float32 if system.dtype == torch.float32 else np.float64

        def host_apply(r):
            out = np.asarray(M.matvec(r.detach().cpu().numpy()), dtype=np_dtype).reshape(-1)
            return torch.from_numpy(out).to(device=system.device)

        return host_apply, "host LinearOperator"
    if callable(M):
        return _callable_preconditioner(M, system), type(M).__name__
    raise TypeError(f"M must be None, 'jacobi', 'ssor', a matrix, a torch callable or a LinearOperator, "
                    f"got {type(M).__name__}")


# ----------------------------------------------------------------------------- loops

def _check_every(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"check_every must be a positive int, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- methods

def _result(system, out, method, t0, kind, extras, setup=0.0):
    x, info, its, norms, true_norm, message = out
    if info == 0 and system.dtype == _torch().float32:
        info, true_norm, message = _confirmed_in_double(system, x, its, true_norm, message)
    return SolveResult(x=x, converged=info == 0, info=int(info), iterations=int(its),
                       residual_norms=list(norms), method=method, time_s=time.perf_counter() - t0,
                       setup_time_s=setup, true_residual_norm=float(true_norm), b_norm=system.bnorm,
                       residual_kind=kind, message=message, extras=extras)




def _confirmed_in_double(system, x, its, true_norm, message):
    """A float32 verdict checked as the NumPy path takes it: the residual of the float32 data in double.

    float32's own rounding of ``b - A x`` hid 15 % of the tolerance (red-black SOR on a two-phase box:
    9.9e-7 in float32, 1.14e-6 in double). Where A's entries are on the host (a SciPy matrix, a CPU tensor);
    a GPU tensor is not copied back for it.
    """
    if system.matrix is None and (system.tensor is None or system.device.type != "cpu"):
        return 0, true_norm, message
    host = system.host_matrix().astype(np.float64)
    xs = x.detach().to("cpu", _torch().float64).numpy()
    bs = system.b.detach().to("cpu", _torch().float64).numpy()
    wide = float(np.linalg.norm(bs - host @ xs))
    if wide <= system.tol:
        return 0, wide, message
    return max(int(its), 1), wide, (f"not converged: the residual in double precision, {wide:.3e}, is above the "
                                    f"tolerance {system.tol:.3e} (float32 rounding of b - A x showed "
                                    f"{true_norm:.3e})")


def _run_cg(system, psolve, check_every):
    from ..krylov.cg import pcg_loop
    from .array_api import torch_ops

    return pcg_loop(torch_ops(), system.A, psolve, system.b, system.x, tol=system.tol,
                    maxiter=system.maxiter, callback=system.callback, check_every=check_every)


def _method_cg(system, M, check_every, omega=1.0):
    t_setup = time.perf_counter()
    psolve, what = torch_preconditioner(M, system, omega=omega)
    setup = time.perf_counter() - t_setup
    out = _run_cg(system, psolve, check_every)
    return out, ("cg" if psolve is None else f"pcg[{what}]"), "recurrence", {"preconditioner": what}, setup


def _method_ssor_cg(system, M, check_every, omega=1.0):
    if M is not None:
        raise ValueError("method='ssor-cg' builds its own preconditioner; do not pass M")
    omega = check_omega(omega)
    rb = _red_black(system, omega, "method='ssor-cg' (red-black SSOR)")
    out = _run_cg(system, rb.ssor_apply, check_every)
    return out, "ssor-cg(red-black)", "recurrence", {"omega": omega, "ordering": "red-black"}, 0.0


def _method_sor(system, M, check_every, omega=1.0, symmetric=False):
    from ..krylov.stationary import stationary_loop
    from .array_api import torch_ops

    if M is not None:
        raise ValueError("method='sor' takes no preconditioner M")
    omega = check_omega(omega)
    if not isinstance(symmetric, (bool, np.bool_)):
        raise TypeError(f"symmetric must be True or False, got {symmetric!r}")
    rb = _red_black(system, omega, "method='sor' (red-black SOR)")

    def sweep(x, b, res):
        rb.sweep(x, b, symmetric=bool(symmetric), residual=res)

    out = stationary_loop(torch_ops(), sweep, system.A, system.b, system.x, tol=system.tol,
                          maxiter=system.maxiter, callback=system.callback, check_every=check_every)
    name = "ssor(red-black)" if symmetric else "sor(red-black)"
    return out, name, "true", {"omega": omega, "symmetric": bool(symmetric), "ordering": "red-black"}, 0.0


def _method_dcdm(system, M, check_every, model=None, n_orth=2, patience=3, min_gain=0.25, fallback=True,
                 fallback_precond="auto", deflation="auto"):
    """DCDM with the network on the solve's device: :func:`linsolve.krylov.dcdm.run_dcdm` on tensors.

    The fallback PCG runs on the device; ``fallback_precond="auto"`` takes the
    red-black SSOR preconditioner when ``A`` is a grid stencil (Jacobi
    otherwise), so from the fallback on the iterates differ from the NumPy
    driver's (natural-order SSOR); ``"amg"`` applies a PyAMG V-cycle through
    the host.
    """
    from ..krylov.dcdm import build_deflation, check_dcdm_options, run_dcdm
    from ..precond.learned import NetworkDirection, resolve_grid_shape, resolve_model
    from .array_api import torch_ops

    check_dcdm_options(M, n_orth, patience, min_gain, fallback_precond)
    t_setup = time.perf_counter()
    matrix = system.host_matrix()
    shape = resolve_grid_shape(system.grid_shape, system.n, matrix, model)
    system.grid_shape = tuple(shape)
    net = resolve_model(model, len(shape))
    direction = NetworkDirection(net, shape, matrix, system.cell_types, device=system.device)
    coarse = build_deflation(deflation, matrix, shape, direction.fluid)
    extras = {"model": getattr(net, "source_path", None) or type(net).__name__, "grid_shape": tuple(shape),
              "n_orth": int(n_orth), "network_optimized": direction.optimized,
              "deflation_block": coarse.block if coarse else None,
              "deflation_coarse_size": coarse.n_coarse if coarse else 0}
    if coarse is not None:
        coarse = coarse.on_device(system.device, system.dtype)
    setup = time.perf_counter() - t_setup

    def fallback_preconditioner():
        kind = fallback_precond
        if kind in ("auto", "ssor"):
            try:
                return torch_preconditioner("ssor", system)
            except ValueError:
                if kind == "ssor":
                    raise
            kind = "jacobi"
        if kind == "amg":
            from ..precond.amg import amg

            apply, _ = torch_preconditioner(amg(matrix), system)
            return apply, "amg"
        return torch_preconditioner(kind, system) if kind == "jacobi" else (None, "none")

    x, info, its, norms, true_norm, message, name, more = run_dcdm(
        torch_ops(), system.A, direction, system.b, system.x, tol=system.tol, maxiter=system.maxiter,
        n_orth=n_orth, patience=patience, min_gain=min_gain, fallback=fallback,
        fallback_preconditioner=fallback_preconditioner, coarse=coarse, callback=system.callback,
        check_every=check_every)
    extras.update(more, network_calls=direction.calls)
    return (x, info, its, norms, true_norm, message), name, "true", extras, setup


def _method_gmg_pcg(system, M, check_every, **mg_options):
    """The classical twin of :func:`_method_learned_pcg` (``method="gmg-pcg"``)."""
    return _method_learned_pcg(system, M, check_every, learned=False, **mg_options)


def _method_learned_pcg(system, M, check_every, learned=True, preconditioner=None, **mg_options):
    """CG with the (learned) geometric multigrid V-cycle: hierarchy built on the host, cycle in torch.

    ``preconditioner`` reuses a :class:`~linsolve.precond.multigrid.GeometricMG`
    or a :class:`~linsolve.backends.torch_kernels.TorchVCycle` built earlier
    (A fixed across frames); otherwise ``mg_options`` go to
    :func:`~linsolve.precond.multigrid.fast_learned` (``model``, ``coarse_size``)
    or :func:`~linsolve.precond.multigrid.geometric_mg`.
    """
    from .torch_kernels import TorchVCycle

    name = "learned-pcg" if learned else "gmg-pcg"
    if M is not None:
        raise ValueError(f"method={name!r} builds its own preconditioner; do not pass M "
                         f"(reuse one with preconditioner=...)")
    t_setup = time.perf_counter()
    if isinstance(preconditioner, TorchVCycle):
        if preconditioner.device != system.device or preconditioner.dtype != system.dtype:
            raise ValueError(f"preconditioner is on {preconditioner.device}/{preconditioner.dtype}, "
                             f"the solve runs on {system.device}/{system.dtype}")
        vcycle = preconditioner
    else:
        if preconditioner is not None:
            if type(preconditioner).__name__ != "GeometricMG":
                raise TypeError("preconditioner must be a GeometricMG (linsolve.precond.multigrid) or a "
                                "TorchVCycle")
            gmg = preconditioner
        else:
            from ..precond import multigrid

            shape = system.grid(f"method={name!r}")
            if learned:
                gmg = multigrid.fast_learned(system.host_matrix(), system.cell_types, grid_shape=shape,
                                             **mg_options)
            else:
                gmg = multigrid.geometric_mg(system.host_matrix(), system.cell_types, grid_shape=shape,
                                             **mg_options)
        fine = system.A if getattr(system.A, "kind", "") == "csr" else None
        vcycle = TorchVCycle(gmg, device=system.device, dtype=system.dtype, fine_operator=fine)
    if tuple(vcycle.shape) != (system.n, system.n):
        raise ValueError(f"preconditioner has shape {vcycle.shape}, expected {(system.n, system.n)}")
    setup = time.perf_counter() - t_setup
    out = _run_cg(system, vcycle, check_every)
    return out, name, "recurrence", {"levels": len(vcycle.levels), "preconditioner": vcycle}, setup


def _refuse_asymmetric(system, method: str) -> None:
    """The NumPy path's refusal of an A that CG cannot take, where A's entries are on the host (a SciPy
    matrix, or a tensor on the CPU); a GPU tensor is not copied back for it (the true residual still
    decides convergence)."""
    from .._validation import CG_SYMMETRY_RTOL
    from ..structure import require_symmetric

    if system.matrix is None and (system.tensor is None or system.device.type != "cpu"):
        return
    try:
        require_symmetric(system.host_matrix(), "A", CG_SYMMETRY_RTOL)
    except ValueError as exc:
        raise ValueError(f"{exc} (method={method!r} on the torch backend); for an unsymmetric system use "
                         f"method='sor' where A is diagonally dominant") from None


def _choose_auto(A, grid_shape, cell_types, M) -> str:
    """``method="auto"`` on the torch backend: :func:`linsolve._auto.choose` among the methods with a torch driver."""
    if M is not None:
        return "cg"
    from .._auto import choose

    torch = _torch()
    try:
        host = _tensor_to_scipy(A) if isinstance(A, torch.Tensor) else sp.csr_matrix(A)
    except (TypeError, ValueError):
        return "cg"  # e.g. a LinearOperator: no entries to look at
    options = {k: v for k, v in (("grid_shape", grid_shape), ("cell_types", cell_types)) if v is not None}
    try:
        return choose(host, options, backend="torch")[0]
    except Exception:  # a matrix auto cannot judge (e.g. not square) is left to the validation below
        return "cg"


def solve(A, b, *, method="auto", x0=None, rtol=1e-6, atol=0.0, maxiter=None, M=None, device="cpu",
          callback=None, **options) -> SolveResult:
    """Solve ``A x = b`` with the torch backend; same contract as :func:`linsolve.solve`.

    Parameters
    ----------
    A : SciPy sparse matrix, ndarray, torch tensor (sparse or dense), or a prebuilt
        :class:`~linsolve.backends.torch_kernels.CSROperator` /
        :class:`~linsolve.backends.torch_kernels.StencilOperator` (reused across calls).
    b, x0 : ndarray or torch tensor
    method : str
        A method with a torch driver in the registry (:data:`METHODS`,
        :func:`linsolve.available_methods` ``("torch")``), or ``"auto"``.
    rtol, atol, maxiter, callback
        As in :func:`linsolve.cg`; ``callback(xk)`` receives a tensor copy.
    M : see the module docstring (``"cg"`` only).
    device : str or torch.device
        See the module docstring: the solve runs on a non-CPU ``device`` when
        given, otherwise on the tensors' device.
    **options
        ``check_every`` (default :data:`CHECK_EVERY`), ``operator``
        (``"csr"``/``"stencil"``), ``grid_shape``, ``cell_types``, ``omega``,
        ``symmetric``, ``model``, ``n_orth``.

    Returns
    -------
    SolveResult
        ``x`` is a torch tensor on the solve's device; ``residual_norms`` are
        host floats (recurrence residuals for the CG methods, true residuals
        for SOR and DCDM, see ``residual_kind``); ``extras["device"]``,
        ``extras["check_every"]``, ``extras["operator"]``.

    Examples
    --------
    >>> import torch, linsolve
    >>> A = linsolve.problems.poisson((16, 16))
    >>> b = torch.ones(256, dtype=torch.float64)
    >>> res = linsolve.solve(A, b, method="cg", rtol=1e-8)
    >>> res.converged, res.x.device.type, bool(torch.linalg.norm(b - torch.from_numpy(A @ res.x.numpy())) <= 1e-8 * 16)
    (True, 'cpu', True)
    """
    torch = _torch()
    t0 = time.perf_counter()
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if method != "auto":
        driver = _registry.get_driver(method, "torch")
    if options.pop("nullspace", None) is not None:
        raise ValueError("nullspace= is not supported by the torch backend; project b yourself")
    check_every = _check_every(options.pop("check_every", CHECK_EVERY))
    operator = options.pop("operator", "csr")
    grid_shape = options.pop("grid_shape", None)
    cell_types = options.pop("cell_types", None)
    if method == "auto":
        _resolve_device(device, A, b, x0)  # an unusable device is said before auto reads A's entries
        method = _choose_auto(A, grid_shape, cell_types, M)
        driver = _registry.get_driver(method, "torch")
    _registry.check_options(method, options, "torch")
    with torch.no_grad():
        system = prepare(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, callback=callback, device=device,
                         grid_shape=grid_shape, cell_types=cell_types, operator=operator)
        if method not in ("sor", "gmg-pcg", "learned-pcg"):  # the multigrid checks its stencil itself
            _refuse_asymmetric(system, method)
        extras = {"backend": "torch", "device": str(system.device), "check_every": check_every,
                  "operator": system.A.kind, "dtype": str(system.dtype).replace("torch.", "")}
        if system.bnorm == 0.0:
            x = torch.zeros_like(system.b)
            return _result(system, (x, 0, 0, [0.0], 0.0, "b is zero; x = 0 is exact"), method, t0, "true",
                           extras)
        out, name, kind, more, setup = driver(system, M, check_every, **options)
        if system.device.type == "cuda":
            torch.cuda.synchronize(system.device)
    extras.update(more)
    return _result(system, out, name, t0, kind, extras, setup)
