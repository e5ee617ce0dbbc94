"""Array backends: the same solvers on NumPy arrays or on torch tensors (CPU or GPU).

* :mod:`linsolve.backends.array_api`: the small array interface (``dot``,
  ``norm``, in-place scaled additions, copies, batched host transfer) with a
  NumPy and a torch implementation; :func:`linsolve.krylov.cg.pcg_loop` is
  written once against it.
* :mod:`linsolve.backends.torch_backend`: ``solve(A, b, *, method, x0, rtol,
  atol, maxiter, M, device, callback, **options)``, where
  :func:`linsolve.solve` sends calls with ``device != "cpu"`` or torch tensor
  inputs. CG/PCG, red-black SOR/SSOR, SSOR-CG, DCDM (network on the device)
  and multigrid-preconditioned CG; the convergence check synchronises with
  the host only every ``check_every`` iterations (default 8), with exact
  iteration counts.
* :mod:`linsolve.backends.torch_kernels`: torch sparse CSR products,
  matrix-free 5/7-point stencils, red-black SOR/SSOR, the multigrid V-cycle.

Importing this package does not import torch; the torch modules do, on first use.

Examples
--------
>>> import numpy as np, linsolve
>>> A = linsolve.problems.poisson((16, 16))
>>> import torch
>>> res = linsolve.solve(A, torch.ones(256, dtype=torch.float64), method="cg", rtol=1e-8)
>>> res.converged, type(res.x).__name__
(True, 'Tensor')
"""
