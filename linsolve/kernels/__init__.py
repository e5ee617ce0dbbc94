"""Compiled numba kernels on plain arrays (CSR SpMV, SOR sweeps, structured stencils).

Kernels know nothing of learning, tuning or the Krylov method that calls them.
"""
