"""XCAT-lite 4D phantoms with ground truth: a breathing lung CT and a beating-heart cine MR.

The embedded default data source of MoDiff (no patient data can be shipped): demos, training and
evaluation. ``make_phantom(kind, ...)`` returns a :class:`PhantomCase` with the 4D frames, a label
map per frame, the ground-truth displacement from frame 0, landmark tracks and every drawn
parameter. Anatomy is analytic in RAS millimetres, so any grid samples the same patient.
"""

from .case import KINDS, MAX_PHANTOM_FRAMES, PhantomCase, make_phantom
from .grids import CARDIAC_GRID, LUNG_GRID, cardiac_grid, lung_grid

__all__ = [
    "CARDIAC_GRID",
    "KINDS",
    "LUNG_GRID",
    "MAX_PHANTOM_FRAMES",
    "PhantomCase",
    "cardiac_grid",
    "lung_grid",
    "make_phantom",
]
