"""Compiled numba kernels on plain arrays, the compute core under ``krylov`` and ``precond``.

* :mod:`.spmv`: CSR ``A @ x`` and ``b - A x`` (serial and ``prange``-parallel);
* :mod:`.sor`: forward / backward / symmetric SOR sweeps on CSR (PyAMG's
  conventions), the fused sweep-plus-true-residual SOR solve loop, the SSOR
  preconditioner application and multicolour (red-black) sweeps;
* :mod:`.stencil`: matrix-free 5-point / 7-point Laplacian apply and red-black
  SOR on structured grids (the CPU reference for the torch kernels).

Other kernel modules (:mod:`.ic`, :mod:`.multigrid`) sit beside these and are
imported by their own path.

Kernels take arrays (``indptr, indices, data, x, b, ...``), work in place where
that saves memory, validate nothing and know nothing of learning, tuning or the
method calling them. Every kernel is ``@njit(cache=True)``: the first call
compiles once per signature and later processes load the cached machine code.
"""
from .sor import (diagonal_positions, red_black_rows, sor_backward, sor_forward, sor_forward_residual,
                  sor_solve, sor_sweep, sor_sweep_rows, sor_symmetric, ssor_apply)
from .spmv import (PARALLEL_MIN_NNZ, csr_matvec, csr_matvec_parallel, csr_matvec_serial, csr_max_asymmetry,
                   csr_residual, csr_residual_parallel, csr_residual_serial)
from .stencil import (rb_sor_2d, rb_sor_2d_color, rb_sor_3d, rb_sor_3d_color, rb_sor_sweep,
                      stencil5_apply, stencil7_apply, stencil_apply)

__all__ = ["csr_matvec", "csr_matvec_serial", "csr_matvec_parallel", "csr_residual", "csr_residual_serial",
           "csr_residual_parallel", "csr_max_asymmetry", "PARALLEL_MIN_NNZ",
           "diagonal_positions", "sor_forward", "sor_backward", "sor_symmetric", "sor_sweep",
           "sor_forward_residual", "sor_solve", "ssor_apply", "sor_sweep_rows", "red_black_rows",
           "stencil5_apply", "stencil7_apply", "stencil_apply", "rb_sor_2d", "rb_sor_3d",
           "rb_sor_2d_color", "rb_sor_3d_color", "rb_sor_sweep"]
