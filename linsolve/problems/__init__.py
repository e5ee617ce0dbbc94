"""Problem generators: Poisson and pressure-projection matrices, sequences of systems, matrix files.

Every grid generator numbers unknowns in C order over the grid
(``numpy.ravel_multi_index(cell, shape)``) and uses the cell codes
``FLUID=0, SOLID=1, AIR=2``.
"""
from .demo import demo_problem
from .fluid import SCENES, fluid_sequence
from .pressure import (GridBox, PressureStencil, check_rhs_matches_cells, divergence, graded_widths,
                       pressure_coefficients, pressure_matrix, pressure_nullspace)
from .instance import AIR, FLUID, SOLID, Instance
from .io import load_matrix
from .poisson import poisson
from .porous import porous_cells
from .sequences import heat_sequence, shifted_laplacian_sequence

__all__ = ["demo_problem", "poisson", "load_matrix", "Instance", "FLUID", "SOLID", "AIR", "shifted_laplacian_sequence",
           "heat_sequence", "fluid_sequence", "pressure_matrix", "pressure_coefficients", "PressureStencil",
           "GridBox", "pressure_nullspace", "check_rhs_matches_cells", "divergence", "graded_widths", "porous_cells",
           "SCENES"]
