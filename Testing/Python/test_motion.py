"""Motion estimation: field conventions, propagation, and accuracy against the lung phantom's ground truth.

The accuracy test runs at the phantom's default grid (128 x 128 x 64, 2.7 x 2.7 x 4 mm) with 6 frames
(about 15 s); the 10-frame speed target is measured by ``benchmark_motion`` (``modiff bench``), not here.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from MoDiffLib.errors import Cancelled, InputError
from MoDiffLib.motion import (
    MotionFields,
    RegistrationSettings,
    benchmark_motion,
    estimate_motion,
    evaluate_against_phantom,
    intensity_window,
    landmark_errors,
    nodule_dice,
    propagate_labels,
    propagate_markups,
    propagate_points,
    warp_labels,
    warp_probability,
    warp_volume,
)
from MoDiffLib.motion.evaluation import DICE_MIN_VOLUME_MM3
from MoDiffLib.phantom import make_phantom
from MoDiffLib.volume import Geometry, Volume, VolumeSequence


def oblique_geometry(shape_kji=(24, 30, 28)) -> Geometry:
    a = np.deg2rad(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    direction = rz @ np.diag([-1.0, -1.0, 1.0])  # LPS-like axes, rotated: any sign slip shows
    return Geometry(shape_kji, spacing=(1.5, 1.2, 2.0), origin_ras=(40.0, -12.0, -80.0), direction_ras=direction)


def blobs(points_ras: np.ndarray, shift_ras=(0.0, 0.0, 0.0)) -> np.ndarray:
    """A smooth image in RAS: a few Gaussian blobs, moved by ``shift_ras``."""
    centre = points_ras.reshape(-1, 3).mean(axis=0)
    offsets = [(0, 0, 0), (8, -6, 5), (-7, 5, -6), (5, 8, -8), (-6, -7, 7)]
    image = np.zeros(points_ras.shape[:-1], np.float32)
    for n, o in enumerate(offsets):
        d = points_ras - (centre + np.asarray(o, float) + np.asarray(shift_ras, float))
        image += (100.0 + 30 * n) * np.exp(-np.sum(d * d, axis=-1) / (2 * 3.5**2))
    return image


def affine_fields(geometry: Geometry, frames: int = 4) -> MotionFields:
    centres = geometry.voxel_centers_ras()
    a = np.array([[0.03, 0.01, 0.0], [0.0, -0.02, 0.01], [0.02, 0.0, 0.05]])
    b = np.array([1.0, -0.5, 3.0])
    base = (centres - centres.reshape(-1, 3).mean(axis=0)) @ a.T + b
    scale = np.linspace(0.0, 1.0, frames)
    return MotionFields((scale[:, None, None, None, None] * base[None]).astype(np.float32), geometry, {})


# -- conventions ----------------------------------------------------------------------------------------
def test_estimated_translation_is_the_rigid_shift_in_ras_on_an_oblique_grid():
    """Content moved by d (RAS mm) between frames gives u = d: Lagrangian, RAS, right signs on an LPS-like,
    rotated, anisotropic grid."""
    g = oblique_geometry()
    points = g.voxel_centers_ras()
    shifts = [(0.0, 0.0, 0.0), (1.5, -1.0, 2.0), (3.0, -2.0, 4.0)]
    seq = VolumeSequence(np.stack([blobs(points, s) for s in shifts]), g, name="blobs")
    fields = estimate_motion(seq, RegistrationSettings(level_voxel_mm=(6.0, 3.0, 1.5), iterations=(40, 40, 10)))
    assert fields.num_frames == 3 and np.all(fields.displacements[0] == 0)
    structure = seq.frames[0] > 40.0  # where the image has contrast
    for t in (1, 2):
        median = np.median(fields.displacements[t][structure], axis=0)
        np.testing.assert_allclose(median, shifts[t], atol=0.35)
    # a point on a blob follows it
    track = fields.positions(points.reshape(-1, 3).mean(axis=0))
    np.testing.assert_allclose(track[2, 0] - track[0, 0], shifts[2], atol=0.35)


def test_points_inverse_and_back_mapping_agree_on_an_affine_field():
    g = oblique_geometry((12, 14, 16))
    fields = affine_fields(g)
    p0 = g.ijk_to_ras_points(np.array([[4.0, 5.5, 6.2], [10.3, 2.0, 3.7]]))
    track = fields.positions(p0)
    centre = g.voxel_centers_ras().reshape(-1, 3).mean(axis=0)
    a = np.array([[0.03, 0.01, 0.0], [0.0, -0.02, 0.01], [0.02, 0.0, 0.05]])
    exact = p0 + (p0 - centre) @ a.T + np.array([1.0, -0.5, 3.0])
    np.testing.assert_allclose(track[-1], exact, atol=1e-4)  # affine: trilinear interpolation is exact
    np.testing.assert_allclose(fields.back_to_frame0(3, track[-1]), p0, atol=1e-3)
    # the Eulerian inverse field brings frame-t voxel centres back to frame 0
    inverse = fields.inverse(3)
    x = g.voxel_centers_ras()[3:9, 3:11, 3:13].reshape(-1, 3)
    came_from = x + inverse[3:9, 3:11, 3:13].reshape(-1, 3)
    np.testing.assert_allclose(came_from + fields.displacement_at(3, came_from), x, atol=0.02)
    # det J of an affine map is det(I + A) everywhere
    det = fields.jacobian_determinant(3)
    np.testing.assert_allclose(det[2:-2, 2:-2, 2:-2], np.linalg.det(np.eye(3) + a), rtol=1e-4)
    assert fields.folding_fraction() == 0.0
    amplitude = fields.target_amplitude_mm(p0[0])
    np.testing.assert_allclose([amplitude["LR"], amplitude["AP"], amplitude["SI"]], np.abs(exact[0] - p0[0]), atol=1e-4)


def test_folding_is_detected():
    g = oblique_geometry((10, 10, 10))
    d = np.zeros((2,) + g.shape_kji + (3,), np.float32)
    ras_per_k = g.direction[:, 2] * g.spacing[2]
    k = np.arange(10, dtype=np.float32)
    d[1, ..., :] = (-2.0 * k)[:, None, None, None] * ras_per_k[None, None, None, :]  # k -> -k: a mirror
    fields = MotionFields(d, g, {})
    assert fields.folding_fraction(1) > 0.5


def test_motion_fields_are_validated():
    g = oblique_geometry((4, 5, 6))
    with pytest.raises(InputError, match="displacements"):
        MotionFields(np.zeros((2, 4, 5, 6)), g, {})
    with pytest.raises(InputError, match="grid"):
        MotionFields(np.zeros((2, 4, 5, 7, 3)), g, {})
    bad = np.zeros((2, 4, 5, 6, 3))
    bad[1, 0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        MotionFields(bad, g, {})
    fields = MotionFields(np.zeros((2, 4, 5, 6, 3)), g, {})
    for frame in (2, -1, 1.0, True):
        with pytest.raises(InputError, match="frame"):
            fields.displacement_at(frame, [0, 0, 0])
    with pytest.raises(InputError, match="scalar"):
        MotionFields.from_sequence(VolumeSequence(np.zeros((2, 4, 5, 6), np.float32), g))


def test_registration_inputs_are_checked():
    g = oblique_geometry((8, 8, 8))
    with pytest.raises(InputError, match="one frame"):
        estimate_motion(VolumeSequence(np.zeros((1, 8, 8, 8), np.float32), g))
    with pytest.raises(InputError, match="vector"):
        estimate_motion(VolumeSequence(np.zeros((2, 8, 8, 8, 3), np.float32), g))
    with pytest.raises(InputError, match="constant"):
        estimate_motion(VolumeSequence(np.full((2, 8, 8, 8), 7.0, np.float32), g))
    with pytest.raises(InputError, match="method"):
        RegistrationSettings(method="bspline")
    with pytest.raises(InputError, match="iteration"):
        RegistrationSettings(iterations=(0, 0, 0))
    with pytest.raises(InputError, match="smoothing"):
        RegistrationSettings(smoothing_voxels=(1.0, 2.0))
    with pytest.raises(InputError, match="window"):
        RegistrationSettings(window=(5.0, 5.0))
    assert intensity_window(np.array([-1000.0, 0.0, 300.0])) == (-1000.0, 200.0)  # CT in HU: lung window


def test_progress_and_cancel_between_frames():
    case = make_phantom("lung", num_frames=4, seed=1, shape_ijk=(32, 32, 16))
    calls = []
    fields = estimate_motion(case.frames, progress=lambda event: calls.append((event.stage, event.step, event.total)))
    assert calls == [("motion", 1, 3), ("motion", 2, 3), ("motion", 3, 3)]
    assert fields.info["method"] == "demons-symmetric" and len(fields.info["frame_seconds"]) == 3

    stop = threading.Event()

    def stop_after_first(event):
        stop.set()

    with pytest.raises(Cancelled):
        estimate_motion(case.frames, progress=stop_after_first, cancel=stop)
    with pytest.raises(Cancelled):
        estimate_motion(case.frames, cancel=lambda: True)


# -- propagation ------------------------------------------------------------------------------------------
def test_points_and_markups_outside_or_nan_are_refused():
    g = oblique_geometry((6, 7, 8))
    fields = affine_fields(g, frames=2)
    inside = g.ijk_to_ras_points(np.array([3.0, 3.0, 2.0]))
    assert propagate_points(fields, inside).shape == (2, 1, 3)
    tracks = propagate_markups(fields, {"entry": [inside], "targets": [inside, inside + 0.5]})
    assert tracks["targets"].shape == (2, 2, 3)
    with pytest.raises(InputError, match="outside"):
        propagate_points(fields, inside + 500.0)
    with pytest.raises(InputError, match="NaN"):
        propagate_points(fields, [np.nan, 0.0, 0.0])
    with pytest.raises(InputError, match="three coordinates"):
        propagate_points(fields, [1.0, 2.0])
    with pytest.raises(InputError, match="mapping"):
        propagate_markups(fields, [inside])


def test_label_propagation_with_true_motion_follows_the_phantom_labels():
    """Carried by the phantom's TRUE fields, frame-0 labels match the phantom's own labels of each frame
    (checks the inverse field, the index conventions and both modes)."""
    case = make_phantom("lung", num_frames=3, seed=3, shape_ijk=(64, 64, 32))
    fields = MotionFields.from_sequence(case.motion)
    labels0 = Volume(case.labels.frames[0], case.frames.geometry, "labels")
    linear = propagate_labels(fields, labels0, mode="linear")
    assert linear.num_frames == 3 and linear.frames.dtype == np.uint8
    names = {v: n for v, n in case.label_names.items()}
    lung = [v for v, n in names.items() if n.startswith("lung")]
    heart = [v for v, n in names.items() if n == "heart"][0]
    t = 2
    truth = case.labels.frames[t]
    still = case.labels.frames[0]

    def dice(a, b):
        return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))

    for values in (lung, [heart]):
        carried = dice(np.isin(linear.frames[t], values), np.isin(truth, values))
        unmoved = dice(np.isin(still, values), np.isin(truth, values))
        assert carried > 0.95 and carried > unmoved + 0.01, (values, carried, unmoved)
    nearest = warp_labels(fields, labels0, t, mode="nearest")
    assert dice(np.isin(nearest, lung), np.isin(truth, lung)) > 0.95
    probability = warp_probability(fields, Volume(np.isin(labels0.array, [heart]).astype(np.float32), labels0.geometry), t)
    assert probability.dtype == np.float32 and 0.0 <= probability.min() and probability.max() <= 1.0
    assert dice(probability >= 0.5, truth == heart) > 0.95
    with pytest.raises(InputError, match="probabilities"):
        warp_probability(fields, Volume(labels0.array.astype(np.float32), labels0.geometry), t)
    # the image warps the same way: frame 0 carried into frame t resembles frame t more than frame 0 does
    warped = warp_volume(fields, case.frames.frame(0), t)
    frame_t = case.frames.frames[t]
    assert np.abs(warped - frame_t).mean() < 0.7 * np.abs(case.frames.frames[0] - frame_t).mean()
    with pytest.raises(InputError, match="mode"):
        warp_labels(fields, labels0, 1, mode="cubic")
    other = Volume(labels0.array, Geometry(labels0.geometry.shape_kji, (3.0, 3.0, 3.0)), "elsewhere")
    with pytest.raises(InputError, match="grid"):
        propagate_labels(fields, other)
    with pytest.raises(InputError, match="whole numbers"):
        propagate_labels(fields, Volume(labels0.array + 0.5, labels0.geometry, "fractional"))


# -- accuracy on the lung phantom (the targets) ---------------------------------------------------------
@pytest.fixture(scope="module")
def lung_case_and_fields():
    case = make_phantom("lung", num_frames=6, seed=0)  # default grid 128 x 128 x 64
    fields = estimate_motion(case.frames)
    return case, fields, evaluate_against_phantom(fields, case)


def test_motion_accuracy_on_a_lung_phantom(lung_case_and_fields):
    """Median landmark error <= 1.5 mm, nodule Dice >= 0.85 after propagation, folding < 0.1 %."""
    case, fields, report = lung_case_and_fields
    assert report["landmarks"] >= 10
    assert report["landmark_motion_median_mm"] > 4.0  # the landmarks really move: the error below means something
    assert report["landmark_error_median_mm"] <= 1.5, report
    assert report["landmark_error_median_mm"] < 0.25 * report["landmark_motion_median_mm"]
    assert report["nodules_held_to_dice_target"], "no nodule large enough for the Dice target in this case"
    assert report["nodule_dice_mean"] >= 0.85, report["nodule_dice"]
    # single frames: within 0.1 of what the TRUE motion gives (voxelisation alone costs up to ~0.1)
    assert report["nodule_dice_worst_frame"] >= report["nodule_dice_truth_worst_frame"] - 0.1, report
    assert report["folding_percent"] < 0.1, report["folding_percent"]


def test_no_motion_fails_the_accuracy_targets(lung_case_and_fields):
    """Not vacuous: zero fields (no motion estimated) miss the landmark and Dice targets on the same case."""
    case, fields, _ = lung_case_and_fields
    still = MotionFields(np.zeros_like(fields.displacements), fields.geometry, {})
    errors = landmark_errors(still, case.landmarks)
    assert np.median(np.concatenate([e[1:] for e in errors.values()])) > 1.5
    assert max(e.max() for e in errors.values()) > 10.0
    dice = nodule_dice(still, case.labels, case.label_names)
    assert min(np.mean(v) for v in dice.values()) < 0.85


def test_dice_target_only_holds_nodules_of_reasonable_size(lung_case_and_fields):
    case, fields, report = lung_case_and_fields
    for name in report["nodules_held_to_dice_target"]:
        assert report["nodule_volume_mm3"][name] >= DICE_MIN_VOLUME_MM3


def test_benchmark_motion_reports_time_and_accuracy():
    result = benchmark_motion(num_frames=3, seed=1, shape_ijk=(32, 32, 16))
    assert result["benchmark"] == "motion" and result["phantom"]["grid_ijk"] == [32, 32, 16]
    assert result["seconds"] > 0 and result["seconds_per_frame"] > 0
    assert set(result["passed"]) == {"seconds", "landmark_error_median_mm", "nodule_dice_mean", "folding_percent"}
    assert result["targets"]["seconds"] == 20.0
    assert np.isfinite(result["landmark_error_median_mm"])
