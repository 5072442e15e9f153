"""Landmark (target) error of a cine: where its motion carries the frame-0 landmarks vs where they truly are.

A generated cine has no landmarks of its own. They are located in it by estimating its motion
frame 0 -> t (:func:`MoDiffLib.motion.estimate_motion`) and carrying the true frame-0 positions
with that motion (:meth:`MoDiffLib.motion.MotionFields.positions`); the error of frame t is the
distance (mm) to the true position in frame t. A cine without motion therefore scores exactly the
true landmark displacement, and a perfect cine scores the error of the motion estimation (the
registration floor). Landmarks whose frame-0 position is unknown (NaN) or outside the grid are
left out, and so is every frame where the true position is unknown (DIR-Lab: only T00 and T50).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def usable_landmarks(landmarks: dict[str, np.ndarray] | None, geometry, num_frames: int) -> dict[str, np.ndarray]:
    """The landmark tracks (T, 3) with a finite frame-0 position inside ``geometry``."""
    out = {}
    for name, track in (landmarks or {}).items():
        track = np.asarray(track, dtype=float)
        if track.shape != (num_frames, 3):
            raise InputError(f"landmark '{name}' has shape {track.shape}, expected ({num_frames}, 3)")
        if np.all(np.isfinite(track[0])) and bool(geometry.contains_ras(track[0])):
            out[name] = track
    return out


def truth_tracks(landmarks: dict[str, np.ndarray] | None, geometry, num_frames: int) -> tuple[list[str], np.ndarray | None]:
    """Sorted names of the usable landmarks and their true tracks stacked as (T, L, 3) (None if there are none)."""
    tracks = usable_landmarks(landmarks, geometry, num_frames)
    names = sorted(tracks)
    return names, (np.stack([tracks[n] for n in names], axis=1) if names else None)


def landmark_error_table(fields, landmarks: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Names and errors (T, L) in mm of the landmarks carried by ``fields``; NaN where the truth is unknown."""
    names, truth = truth_tracks(landmarks, fields.geometry, fields.num_frames)
    if not names:
        return [], np.zeros((fields.num_frames, 0))
    estimated = fields.positions(truth[0])  # (T, L, 3)
    return names, np.linalg.norm(estimated - truth, axis=-1)


def landmark_energy_table(samples: list, landmarks: dict[str, np.ndarray], geometry) -> tuple[list[str], np.ndarray]:
    """Energy score (T, L) in mm of K motion samples at every landmark and frame (NaN where the truth is unknown).

    ``ES = mean_k |X_k - y| - 1/(2 K^2) sum_kl |X_k - X_l|`` with ``X_k`` the landmark carried by
    sample k and ``y`` its true position: a proper score of the whole sample distribution, equal to
    the distance for one sample, so a sampler is compared with a point estimate on equal terms
    (the distance of one random sample alone is larger by construction). The landmarks are those
    usable on ``geometry`` (the cine's grid), so the set matches :func:`landmark_error_table`.
    """
    if not samples:
        raise InputError("an energy score needs at least one motion sample")
    names, truth = truth_tracks(landmarks, geometry, samples[0].num_frames)
    if not names:
        return [], np.zeros((samples[0].num_frames, 0))
    carried = np.stack([f.positions(truth[0]) for f in samples])  # (K, T, L, 3)
    error = np.linalg.norm(carried - truth[None], axis=-1).mean(axis=0)
    spread = np.linalg.norm(carried[:, None] - carried[None], axis=-1).mean(axis=(0, 1))
    return names, error - 0.5 * spread


def landmark_displacement_table(landmarks: dict[str, np.ndarray], geometry, num_frames: int) -> tuple[list[str], np.ndarray]:
    """Names and true displacements (T, L) in mm of the landmarks from frame 0 (NaN where unknown)."""
    names, truth = truth_tracks(landmarks, geometry, num_frames)
    if not names:
        return [], np.zeros((num_frames, 0))
    return names, np.linalg.norm(truth - truth[0][None], axis=-1)


def per_frame_mean(table: np.ndarray) -> list[float]:
    """Mean over landmarks per frame (NaN for a frame without a known position)."""
    out = []
    for row in np.asarray(table, dtype=float):
        finite = row[np.isfinite(row)]
        out.append(float(finite.mean()) if finite.size else float("nan"))
    return out


def mean_over(table: np.ndarray, frames) -> float:
    """Mean error over the (frame, landmark) pairs of ``frames`` where the truth is known."""
    rows = np.asarray(table, dtype=float)[list(frames)]
    finite = rows[np.isfinite(rows)]
    return float(finite.mean()) if finite.size else float("nan")
