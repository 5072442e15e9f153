"""MoDiffLib: one 3D medical volume in, a 4D cine of its respiratory or cardiac motion out.

The package is importable without Qt and without Slicer. The data flow reads top-down:
``volume``/``io`` -> ``phantom`` -> ``preprocess`` -> ``models`` -> ``pipeline`` -> ``motion`` ->
``planning`` -> ``mrml`` (Slicer nodes).
"""

from .errors import Cancelled, InputError, MoDiffError, OutputError
from .volume import Geometry, Volume, VolumeSequence

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "Geometry",
    "InputError",
    "MoDiffError",
    "OutputError",
    "Volume",
    "VolumeSequence",
    "__version__",
]
