"""Motion of a 4D cine: displacement fields from frame 0 to every frame, and what moves with them.

* :mod:`.fields` -- :class:`MotionFields` (Lagrangian displacements in RAS mm at the frame-0 voxel
  centres, the convention of the phantoms' ground truth), inverse fields, Jacobian and folding.
* :mod:`.registration` -- :func:`estimate_motion`: multi-resolution diffeomorphic demons, one
  registration frame 0 -> frame t per frame, warm-started, with progress and cancel.
* :mod:`.propagate` -- points, markups and label maps of frame 0 carried into every frame.
* :mod:`.transfer` -- :func:`transfer_motion`: generated coarse frames -> the input warped at full
  resolution; :func:`warp_input`: the input moved by given (coarse) fields, with mass conservation.
* :mod:`.anatomy` -- the anatomy box of an input and its coarse anatomy grid.
* :mod:`.population` -- :class:`PopulationMotion`, the population motion linear in the strength.
* :mod:`.evaluation` -- accuracy against a phantom's ground truth and :func:`benchmark_motion`.
"""

from .evaluation import MOTION_TARGETS, benchmark_motion, evaluate_against_phantom, landmark_errors, nodule_dice
from .fields import MotionFields
from .propagate import (
    LABEL_MODES,
    check_inside,
    dice,
    propagate_labels,
    propagate_markups,
    propagate_points,
    warp_labels,
    warp_probability,
    warp_volume,
)
from .registration import METHODS, RegistrationSettings, estimate_motion, intensity_window
from .transfer import transfer_motion, warp_input

__all__ = [
    "LABEL_MODES",
    "METHODS",
    "MOTION_TARGETS",
    "MotionFields",
    "RegistrationSettings",
    "benchmark_motion",
    "check_inside",
    "dice",
    "estimate_motion",
    "evaluate_against_phantom",
    "intensity_window",
    "landmark_errors",
    "nodule_dice",
    "propagate_labels",
    "propagate_markups",
    "propagate_points",
    "transfer_motion",
    "warp_input",
    "warp_labels",
    "warp_probability",
    "warp_volume",
]
