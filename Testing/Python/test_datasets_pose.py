"""Moving the patient of a 4D case (``MoDiffLib.datasets.pose``): every piece of ground truth follows."""

import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.datasets import PhantomDataset
from MoDiffLib.datasets.pose import PoseChange, change_pose
from MoDiffLib.motion import MotionFields


@pytest.fixture(scope="module")
def case():
    return PhantomDataset("lung", split="test", num_cases=1, num_frames=4, shape_ijk=(40, 40, 20))[0]


def carried_landmark_error(moved) -> float:
    """How far the moved case's own motion carries each frame-0 landmark from its moved track (mm)."""
    fields = MotionFields.from_sequence(moved.meta["motion"])
    errs = [np.linalg.norm(fields.positions(track[0][None])[:, 0] - track, axis=1).mean()
            for track in moved.landmarks.values()]
    return float(np.mean(errs))


@pytest.mark.parametrize("spec", ["shift=0,0,20", "rotate=15", "rotate=-15;shift=20,0,0", "crop=0.8", "spacing=1.5"])
def test_motion_landmarks_and_frames_move_together(case, spec):
    moved = change_pose(case, PoseChange.parse(spec))
    assert moved.meta["pose"] == PoseChange.parse(spec).describe()
    assert moved.frames.geometry == moved.meta["motion"].geometry == moved.labels.geometry
    # the moved truth is still one motion: its field carries frame-0 landmarks onto their tracks
    assert carried_landmark_error(moved) < 0.2
    # and the lungs keep their volume (labels resampled, not lost), up to the field-of-view crop
    unit = np.prod(case.frames.geometry.spacing)
    lungs = lambda c, u: float(np.isin(c.labels.frames[0], (2, 3)).sum()) * u
    assert lungs(moved, np.prod(moved.frames.geometry.spacing)) == pytest.approx(lungs(case, unit), rel=0.08)


def test_a_shift_moves_the_content_and_the_trace_by_the_shift(case):
    up = 2 * case.frames.geometry.spacing[2]  # two slices up (k is S for the lung phantom)
    moved = change_pose(case, PoseChange(shift_mm=(0.0, 0.0, up)))
    np.testing.assert_allclose(moved.frames.frames[0][2:], case.frames.frames[0][:-2], atol=1e-3)
    np.testing.assert_allclose(moved.trace_mm, case.trace_mm + up)
    for name, track in case.landmarks.items():
        np.testing.assert_allclose(moved.landmarks[name], track + [0.0, 0.0, up])


def test_identity_and_bad_changes(case):
    assert change_pose(case, PoseChange()) is case
    for spec, match in (("tilt=3", "unknown pose change"), ("rotate=abc", "needs a number"), ("crop=0.1", "crop"),
                        ("shift=1,2", "three finite"), ("rotate", "needs a value"), ("spacing=9", "spacing scale")):
        with pytest.raises(InputError, match=match):
            PoseChange.parse(spec)
