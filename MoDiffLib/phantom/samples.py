"""Training samples for motion models: frame 0 of a phantom and its true motion at many cycle phases.

A motion model learns displacement fields, so its training data is frame 0 (the one input it will
ever see) and the ground-truth displacement from frame 0 at the phases of a cycle. Rendering a
whole phantom cine for that would cost one full image per phase; the phantoms' motion is analytic,
so :func:`motion_sample` renders frame 0 only and evaluates the displacement of every frame-0 voxel
at each phase directly (the same expressions :meth:`LungRenderer.render` and
:meth:`CardiacRenderer.render` use for their ``motion`` output, so the two agree exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..volume import Volume
from .case import check_phantom_request
from .grids import cardiac_grid, lung_grid


@dataclass
class MotionSample:
    """Frame 0 of one phantom and its motion at ``phases``.

    Attributes:
        frame0: the end-exhale / end-diastole image (HU for lung, MR units for cardiac).
        phases: (P,) cycle phases in [0, 1) (0 = frame 0).
        motion: (P, K, J, I, 3) float32 RAS mm displacement from frame 0 at the frame-0 voxel
            centres (zero at phase 0).
        amplitude: the motion strength (diaphragm SI excursion mm, or EF %).
        descent_mm: (P,) lung only: the true breathing trace as diaphragm descent from phase 0
            (mm, positive on inhale; see :meth:`LungModel.diaphragm_trace`), else None.
    """

    frame0: Volume
    phases: np.ndarray
    motion: np.ndarray
    amplitude: float
    descent_mm: np.ndarray | None = None


def motion_sample(kind: str, seed: int, phases: np.ndarray, shape_ijk: tuple[int, int, int] | None = None,
                  amplitude: float | None = None) -> MotionSample:
    """Frame 0 and the exact motion at ``phases`` of the phantom ``kind`` drawn from ``seed``."""
    phases = np.mod(np.asarray(phases, dtype=float), 1.0)
    kind, _, seed, _, amplitude = check_phantom_request(kind, 2, seed, 0.0, amplitude)
    if kind == "lung":
        from .lung import LungModel, LungRenderer

        model = LungModel(seed, amplitude)
        geometry = lung_grid(shape_ijk)
        renderer = LungRenderer(model, geometry)
        frame0 = renderer.render(np.zeros(1))[0][0]
        motion = renderer.motion(phases)
        strength = model.amplitude
        trace = model.diaphragm_trace(np.concatenate([[0.0], phases]))
        descent = trace[0] - trace[1:]
    else:
        from .cardiac import CardiacModel, CardiacRenderer

        model = CardiacModel(seed, amplitude)
        geometry = cardiac_grid(shape_ijk)
        renderer = CardiacRenderer(model, geometry)
        frame0 = renderer.render(np.zeros(1))[0][0]
        motion = renderer.motion(phases)
        strength = float(renderer.params()["amplitude"])
        descent = None
    volume = Volume(frame0, geometry, f"{kind}_phantom_seed{seed}_frame0")
    return MotionSample(volume, phases, motion, float(strength), descent)
