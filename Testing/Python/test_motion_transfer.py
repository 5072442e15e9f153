"""transfer_motion: generated coarse frames -> the fine input, warped by their measured motion."""

import numpy as np

from MoDiffLib import Geometry, Volume
from MoDiffLib.motion import transfer_motion
from MoDiffLib.preprocess import transfer_differences, window_for


def blob(geometry: Geometry, centre_ras, radius_mm: float = 12.0) -> np.ndarray:
    """A bright sphere with a sharp edge, in HU-like units on ``geometry``."""
    k, j, i = np.indices(geometry.shape_kji)
    ras = geometry.ijk_to_ras_points(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)).reshape(*k.shape, 3)
    inside = np.linalg.norm(ras - np.asarray(centre_ras), axis=-1) < radius_mm
    return np.where(inside, 40.0, -800.0).astype(np.float32)


def test_the_input_moves_sharply_by_the_generated_motion():
    fine = Geometry((24, 48, 48), (1.0, 1.0, 2.0), (-24.0, -24.0, -24.0))
    coarse = Geometry((12, 24, 24), (2.0, 2.0, 4.0), (-23.5, -23.5, -22.0))
    volume = Volume(blob(fine, (0.0, 0.0, 0.0)), fine, "input")
    window = window_for(volume, "fixed", -1000.0, 200.0)
    shifts = [0.0, 0.0, 4.0]  # frame 1 does not move, frame 2 moves 4 mm towards superior
    generated = np.stack([window.normalise(blob(coarse, (0.0, 0.0, s))) for s in shifts])

    frames, fields = transfer_motion(volume, generated, coarse)
    assert frames.shape == (3, 24, 48, 48) and frames.dtype == volume.array.dtype
    assert np.array_equal(frames[0], volume.array)
    assert np.abs(frames[1] - volume.array).max() < 1.0  # no motion generated, none added
    truth = blob(fine, (0.0, 0.0, 4.0))
    warped_error = np.abs(frames[2] - truth).mean()
    assert warped_error < 0.25 * np.abs(volume.array - truth).mean()  # it moved, by about 4 mm
    # Sharp: the warped sphere keeps (almost) only the two tissue values; the difference transfer
    # leaves a ghost of intermediate values along the coarse edge.
    ghost = transfer_differences(volume, generated, coarse, window)[2]
    intermediate = lambda a: np.mean((a > -700) & (a < -60))  # noqa: E731
    assert intermediate(frames[2]) < 0.5 * intermediate(ghost)
    assert abs(float(fields.displacement_at(2, [[0.0, 0.0, 0.0]])[0, 2]) - 4.0) < 1.0
