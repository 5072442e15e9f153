"""The phantom result type and the dispatcher :func:`make_phantom`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..volume import VolumeSequence
from . import waveforms
from .grids import cardiac_grid, lung_grid

#: Most frames one phantom case may have (one cycle).
MAX_PHANTOM_FRAMES = 64
#: Upper bound of frames x voxels (the default lung grid at 64 frames), to keep memory bounded.
MAX_PHANTOM_FRAME_VOXELS = 64 * 128 * 128 * 64
KINDS = ("lung", "cardiac")


@dataclass
class PhantomCase:
    """One synthetic 4D case with its ground truth.

    Attributes:
        kind: ``"lung"`` (CT in HU: air -1000, lung about -850, soft tissue about 40, bone >= 700)
            or ``"cardiac"`` (bSSFP cine-MR-like intensities on a 0..1000 scale: blood ~850,
            fat ~700, myocardium ~220, lung ~40, air ~0).
        frames: (T, K, J, I) float32 images, one breathing or cardiac cycle.
        labels: (T, K, J, I) uint8 label maps of every frame (names in ``label_names``).
        label_names: label value -> structure name.
        motion: (T, K, J, I, 3) float32 displacement in RAS mm from frame 0 to frame t at the
            frame-0 voxel centres: point ``p`` of frame 0 is at ``p + motion[t]`` in frame t.
        landmarks: name -> (T, 3) RAS mm position in every frame.
        params: JSON-serialisable drawn parameters; ``params["amplitude"]`` is the diaphragm SI
            excursion in mm (lung) or the ejection fraction in % (cardiac). Lung cases also hold
            the true breathing trace, ``params["trace_mm"]`` (S in RAS mm of the diaphragm dome per
            frame, see :mod:`MoDiffLib.trace`) and ``params["trace_definition"]``.
    """

    kind: str
    frames: VolumeSequence
    labels: VolumeSequence
    label_names: dict[int, str]
    motion: VolumeSequence
    landmarks: dict[str, np.ndarray]
    params: dict

    @property
    def trace_mm(self) -> np.ndarray | None:
        """The true breathing trace (S of the diaphragm dome, RAS mm, per frame); ``None`` for cardiac."""
        trace = self.params.get("trace_mm")
        return None if trace is None else np.asarray(trace, dtype=float)


def check_phantom_request(kind, num_frames, seed, start_phase, amplitude) -> tuple[str, int, int, float, float | None]:
    """Validate the arguments of :func:`make_phantom` (InputError naming the problem); return them normalised."""
    if not isinstance(kind, str) or kind not in KINDS:
        raise InputError(f"unknown phantom kind {kind!r}; choose one of {', '.join(KINDS)}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral):
        raise InputError(f"num_frames must be an integer in [2, {MAX_PHANTOM_FRAMES}], got {num_frames!r}")
    if not 2 <= int(num_frames) <= MAX_PHANTOM_FRAMES:
        raise InputError(f"num_frames {num_frames} out of range: a phantom has 2 to {MAX_PHANTOM_FRAMES} frames")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        start_phase = float(start_phase)
    except (TypeError, ValueError):
        raise InputError(f"start_phase must be a number in [0, 1), got {start_phase!r}") from None
    if not (math.isfinite(start_phase) and 0.0 <= start_phase < 1.0):
        raise InputError(f"start_phase {start_phase} out of range: it must be in [0, 1) (fraction of the cycle)")
    if amplitude is not None:
        from .cardiac import EF_RANGE
        from .lung import AMPLITUDE_RANGE

        lo, hi = AMPLITUDE_RANGE if kind == "lung" else EF_RANGE
        what = "diaphragm SI excursion (mm)" if kind == "lung" else "ejection fraction (%)"
        try:
            amplitude = float(amplitude)
        except (TypeError, ValueError):
            raise InputError(f"amplitude must be a number: the {what} in [{lo:g}, {hi:g}]") from None
        if not (math.isfinite(amplitude) and lo <= amplitude <= hi):
            raise InputError(f"amplitude {amplitude:g} out of range: the {kind} {what} must be in [{lo:g}, {hi:g}]")
    return kind, int(num_frames), int(seed), start_phase, amplitude


def make_phantom(kind: str, num_frames: int = 10, seed: int = 0, start_phase: float = 0.0,
                 shape_ijk: tuple[int, int, int] | None = None, amplitude: float | None = None) -> PhantomCase:
    """Draw and render one XCAT-lite 4D phantom case (deterministic: same arguments, same bits).

    Args:
        kind: ``"lung"`` (4D CT of free breathing) or ``"cardiac"`` (short-axis cine MR).
        num_frames: frames evenly spanning one cycle, 2..MAX_PHANTOM_FRAMES.
        seed: non-negative integer; every drawn parameter derives from it.
        start_phase: cycle phase of frame 0 in [0, 1); 0 is end-exhale (lung) or end-diastole
            (cardiac).
        shape_ijk: grid size (i, j, k); the field of view stays that of the default grid
            (:data:`LUNG_GRID`, :data:`CARDIAC_GRID`) and the spacing adapts.
        amplitude: motion strength instead of the drawn one: diaphragm SI excursion in mm
            (lung, allowed 0-40) or ejection fraction in % (cardiac, allowed 15-80).

    Raises:
        InputError: an argument is out of its allowed range (the message names it and the range).
    """
    kind, num_frames, seed, start_phase, amplitude = check_phantom_request(kind, num_frames, seed, start_phase, amplitude)
    geometry = lung_grid(shape_ijk) if kind == "lung" else cardiac_grid(shape_ijk)
    voxels = int(np.prod(geometry.shape_kji))
    if voxels * num_frames > MAX_PHANTOM_FRAME_VOXELS:
        raise InputError(
            f"{num_frames} frames of {geometry.describe()} is too large: frames x voxels must be at most "
            f"{MAX_PHANTOM_FRAME_VOXELS} (the default lung grid at {MAX_PHANTOM_FRAMES} frames)"
        )
    phases = waveforms.frame_phases(num_frames, start_phase)
    if kind == "lung":
        from .lung import LABELS, NODULE_LABEL0, TRACE_DEFINITION, LungModel, LungRenderer

        model = LungModel(seed, amplitude)
        renderer = LungRenderer(model, geometry)
        frames, labels, motion = renderer.render(phases)
        landmarks = renderer.landmarks(phases)
        label_names = dict(LABELS)
        for i, nod in enumerate(model.nodules, start=1):
            label_names[NODULE_LABEL0 + i] = nod["name"]
        params = model.params()
        params["trace_mm"] = [round(float(v), 4) for v in model.diaphragm_trace(phases)]
        params["trace_definition"] = TRACE_DEFINITION
        times = phases * model.period_s
    else:
        from .cardiac import LABELS as CARDIAC_LABELS
        from .cardiac import CardiacModel, CardiacRenderer

        model = CardiacModel(seed, amplitude)
        renderer = CardiacRenderer(model, geometry)
        frames, labels, motion = renderer.render(phases)
        landmarks = renderer.landmarks(phases)
        label_names = dict(CARDIAC_LABELS)
        params = renderer.params()
        times = phases * model.period_s
    params.update({
        "kind": kind,
        "num_frames": num_frames,
        "start_phase": start_phase,
        "frame_phases": [round(float(p), 6) for p in phases],
        "frame_times_s": [round(float(t), 6) for t in times],
        "grid_shape_ijk": [int(s) for s in geometry.shape_kji[::-1]],
        "grid_spacing_mm": [float(s) for s in geometry.spacing],
    })
    name = f"{kind}_phantom_seed{seed}"
    return PhantomCase(
        kind=kind,
        frames=VolumeSequence(frames, geometry, name=f"{name}_frames"),
        labels=VolumeSequence(labels, geometry, name=f"{name}_labels"),
        label_names=label_names,
        motion=VolumeSequence(motion, geometry, name=f"{name}_motion"),
        landmarks=landmarks,
        params=params,
    )
