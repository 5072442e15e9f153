"""Is this input like the data a motion model was trained on? A warning before motion is invented.

A motion model maps any frame 0 to motion: given a brain MR, the cardiac model would still make
"a heart beat" somewhere in it. What it learned only holds near its training inputs, so a model
keeps a summary of them and measures each new input against it:

* the **prompt distance**: RMS over the anatomy grid of the per-voxel z-score of the prompt (frame
  0 normalised and its anatomy mask, :func:`MoDiffLib.motion_pipeline.motion_prompt`) against the
  training prompts' mean and standard deviation;
* the **anatomy box size** (mm per grid axis) against the training boxes' range.

The prompt measured is always the anti-aliased one (:func:`MoDiffLib.motion_pipeline.typicality_prompt`),
whatever the network reads, and the summary is fitted on phantoms drawn at several resolutions, so
a finer or coarser scan of a trained-on anatomy stays typical. An input beyond
:data:`DISTANCE_FACTOR` times the largest training distance, or with a box outside the training
range widened by :data:`BOX_FACTOR`, gets a warning that names the measure; the caller decides
(the pipeline reports it in the provenance and the command line prints it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

#: An input farther than this times the farthest training input is atypical.
DISTANCE_FACTOR = 1.5
#: A box smaller than min / BOX_FACTOR or larger than max * BOX_FACTOR (per axis) is atypical.
BOX_FACTOR = 1.5
#: Floor of the per-voxel standard deviation (normalised units, 1/8 of the [-1, 1] range): phantoms
#: vary little voxel by voxel (the median training spread is below 0.05), so without it a mask
#: boundary one voxel off in a finer scan of the same anatomy would look as strange as a brain.
STD_FLOOR = 0.25


@dataclass
class Typicality:
    """Summary of a model's training inputs (see the module docstring).

    Attributes:
        mean, std: (C, K, J, I) float32 per-voxel mean and standard deviation of the training prompts.
        distances: (3,) the training prompts' own distances: median, 99th percentile, largest.
        box_min_mm, box_max_mm: (3,) smallest and largest training anatomy box per grid axis (i, j, k).
        cases: training inputs summarised.
    """

    mean: np.ndarray
    std: np.ndarray
    distances: np.ndarray
    box_min_mm: np.ndarray
    box_max_mm: np.ndarray
    cases: int

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float32)
        self.std = np.maximum(np.asarray(self.std, dtype=np.float32), STD_FLOOR)
        self.distances = np.asarray(self.distances, dtype=np.float64).reshape(3)
        self.box_min_mm = np.asarray(self.box_min_mm, dtype=np.float64).reshape(3)
        self.box_max_mm = np.asarray(self.box_max_mm, dtype=np.float64).reshape(3)
        if self.mean.shape != self.std.shape or self.mean.ndim != 4:
            raise InputError(f"typicality needs mean and std of one (C, K, J, I) shape, got {self.mean.shape} "
                             f"and {self.std.shape}")

    def distance(self, prompt: np.ndarray) -> float:
        """RMS per-voxel z-score of ``prompt`` (C, K, J, I) against the training prompts."""
        p = np.asarray(prompt, dtype=np.float32)
        if p.shape != self.mean.shape:
            raise InputError(f"prompt of shape {p.shape} does not match the model's {self.mean.shape}")
        return float(np.sqrt(np.mean(((p - self.mean) / self.std) ** 2)))

    def assess(self, prompt: np.ndarray, box_size_mm) -> dict:
        """``{"distance", "training_distance_max", "box_mm", "warnings": [...]}`` for one input."""
        d = self.distance(prompt)
        size = np.asarray(box_size_mm, dtype=float).reshape(3)
        warnings = []
        limit = DISTANCE_FACTOR * float(self.distances[2])
        if d > limit:
            warnings.append(f"frame 0 is unlike the model's training inputs (prompt distance {d:.2f}, the training "
                            f"inputs reach {self.distances[2]:.2f}); the motion may be wrong for it")
        low, high = self.box_min_mm / BOX_FACTOR, self.box_max_mm * BOX_FACTOR
        odd = [axis for axis, v, lo, hi in zip("ijk", size, low, high) if not lo <= v <= hi]
        if odd:
            box = " x ".join(f"{v:.0f}" for v in size)
            seen = " x ".join(f"{a:.0f}-{b:.0f}" for a, b in zip(self.box_min_mm, self.box_max_mm))
            warnings.append(f"the anatomy found in frame 0 spans {box} mm, outside what the model was trained on "
                            f"({seen} mm) along {', '.join(odd)}; is this the anatomy the model is for?")
        return {"distance": round(d, 3), "training_distance_max": round(float(self.distances[2]), 3),
                "box_mm": [round(float(v), 1) for v in size], "warnings": warnings}

    @classmethod
    def fit(cls, prompts: np.ndarray, box_sizes_mm: np.ndarray) -> "Typicality":
        """Summary of ``prompts`` (S, C, K, J, I) and their anatomy box sizes (S, 3)."""
        p = np.asarray(prompts, dtype=np.float32)
        sizes = np.asarray(box_sizes_mm, dtype=float)
        if p.ndim != 5 or len(p) < 2 or sizes.shape != (len(p), 3):
            raise InputError("typicality needs at least two prompts (S, C, K, J, I) and their box sizes (S, 3)")
        mean, std = p.mean(axis=0), p.std(axis=0)
        draft = cls(mean, std, np.zeros(3), sizes.min(axis=0), sizes.max(axis=0), len(p))
        own = np.array([draft.distance(x) for x in p])
        draft.distances = np.array([np.median(own), np.percentile(own, 99), own.max()])
        return draft
