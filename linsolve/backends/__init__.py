"""Array backends: the torch backend (CPU/GPU tensors) and PETSc (petsc4py, MPI).
"""
