"""XCAT-lite phantoms: public API, input validation, determinism, structure of a case.

Calibration against the physiology (KNOWLEDGE section 4) is in test_phantom_lung.py and
test_phantom_cardiac.py; here small grids keep the cases cheap.
"""

import json

import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.phantom import (
    CARDIAC_GRID,
    LUNG_GRID,
    MAX_PHANTOM_FRAMES,
    PhantomCase,
    cardiac_grid,
    lung_grid,
    make_phantom,
)
from MoDiffLib.phantom import waveforms

SMALL_LUNG = (48, 48, 24)
SMALL_CARDIAC = (48, 48, 8)


def small(kind, **kw):
    shape = SMALL_LUNG if kind == "lung" else SMALL_CARDIAC
    kw.setdefault("num_frames", 4)
    return make_phantom(kind, shape_ijk=shape, **kw)


@pytest.fixture(scope="module")
def lung_small():
    return small("lung", seed=3, num_frames=6)


@pytest.fixture(scope="module")
def cardiac_small():
    return small("cardiac", seed=3, num_frames=6)


# -- grids ------------------------------------------------------------------------------------------
def test_default_grids_are_realistic():
    assert MAX_PHANTOM_FRAMES == 64
    assert LUNG_GRID.shape_kji == (64, 128, 128)
    np.testing.assert_allclose(LUNG_GRID.spacing, (2.7, 2.7, 4.0))
    np.testing.assert_allclose(LUNG_GRID.direction, np.diag([-1.0, -1.0, 1.0]))
    assert np.linalg.norm(LUNG_GRID.origin_ras) > 10.0
    assert CARDIAC_GRID.shape_kji == (16, 128, 128)
    np.testing.assert_allclose(CARDIAC_GRID.spacing, (1.5, 1.5, 8.0))
    d = CARDIAC_GRID.direction
    np.testing.assert_allclose(d.T @ d, np.eye(3), atol=1e-12)
    assert np.linalg.det(d) == pytest.approx(1.0)
    assert np.max(np.abs(np.abs(d) - np.eye(3))) > 0.2  # an oblique short-axis stack


def test_custom_grid_keeps_the_field_of_view():
    g = lung_grid((64, 64, 32))
    np.testing.assert_allclose(g.spacing, (5.4, 5.4, 8.0))
    # same centre as the default grid
    def centre(geom):
        return geom.ijk_to_ras_points((np.array(geom.shape_kji[::-1]) - 1) / 2.0)
    np.testing.assert_allclose(centre(g), centre(LUNG_GRID), atol=1e-9)
    assert cardiac_grid((64, 64, 8)).spacing == pytest.approx((3.0, 3.0, 16.0))


# -- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, words", [
    (dict(kind="liver"), ["unknown phantom kind", "lung", "cardiac"]),
    (dict(kind="lung", num_frames=1), ["num_frames", "2 to 64"]),
    (dict(kind="lung", num_frames=65), ["num_frames", "2 to 64"]),
    (dict(kind="lung", num_frames=2.5), ["num_frames", "[2, 64]"]),
    (dict(kind="lung", seed=-1), ["seed", "non-negative"]),
    (dict(kind="lung", start_phase=1.0), ["start_phase", "[0, 1)"]),
    (dict(kind="lung", start_phase=float("nan")), ["start_phase", "[0, 1)"]),
    (dict(kind="lung", amplitude=45.0), ["amplitude", "diaphragm", "[0, 40]"]),
    (dict(kind="lung", amplitude=-1.0), ["amplitude", "[0, 40]"]),
    (dict(kind="cardiac", amplitude=90.0), ["amplitude", "ejection fraction", "[15, 80]"]),
    (dict(kind="cardiac", amplitude="x"), ["amplitude", "[15, 80]"]),
    (dict(kind="lung", shape_ijk=(4, 128, 64)), ["shape_ijk", "[8, 512]"]),
    (dict(kind="lung", shape_ijk=(128, 128)), ["shape_ijk", "three integers"]),
    (dict(kind="lung", num_frames=64, shape_ijk=(256, 256, 64)), ["too large", "frames x voxels"]),
])
def test_bad_inputs_raise_input_error_naming_problem_and_range(kwargs, words):
    kind = kwargs.pop("kind")
    with pytest.raises(InputError) as info:
        make_phantom(kind, **kwargs)
    for w in words:
        assert w in str(info.value)


# -- determinism ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lung", "cardiac"])
def test_same_seed_is_bit_identical_and_other_seed_differs(kind):
    a, b = small(kind, seed=11), small(kind, seed=11)
    for name in ("frames", "labels", "motion"):
        assert np.array_equal(getattr(a, name).frames, getattr(b, name).frames), name
    assert a.landmarks.keys() == b.landmarks.keys()
    for k in a.landmarks:
        assert np.array_equal(a.landmarks[k], b.landmarks[k])
    assert json.dumps(a.params, sort_keys=True) == json.dumps(b.params, sort_keys=True)
    c = small(kind, seed=12)
    assert not np.array_equal(a.frames.frames, c.frames.frames)
    assert a.params["amplitude"] != c.params["amplitude"]


# -- structure of a case -----------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["lung_small", "cardiac_small"])
def test_case_structure(fixture, request):
    case = request.getfixturevalue(fixture)
    assert isinstance(case, PhantomCase)
    t = 6
    k, j, i = case.frames.geometry.shape_kji
    assert case.frames.frames.shape == (t, k, j, i) and case.frames.frames.dtype == np.float32
    assert case.labels.frames.shape == (t, k, j, i) and case.labels.frames.dtype == np.uint8
    assert case.motion.frames.shape == (t, k, j, i, 3) and case.motion.frames.dtype == np.float32
    g = case.frames.geometry
    assert case.labels.geometry.is_close(g) and case.motion.geometry.is_close(g)
    # motion is defined from frame 0: nothing moves at frame 0; later frames do move
    assert not np.any(case.motion.frames[0])
    assert np.abs(case.motion.frames[1:]).max() > 1.0
    present = set(np.unique(case.labels.frames).tolist()) - {0}
    assert present <= set(case.label_names)
    for name, track in case.landmarks.items():
        assert track.shape == (t, 3) and np.all(np.isfinite(track)), name
    json.dumps(case.params)  # JSON-serialisable
    assert case.params["amplitude"] == pytest.approx(
        case.params["diaphragm_si_excursion_mm"] if case.kind == "lung" else case.params["ef_percent"])
    assert case.params["seed"] == 3 and case.params["num_frames"] == t
    np.testing.assert_allclose(case.params["frame_phases"], waveforms.frame_phases(t), atol=1e-6)


def test_landmarks_of_frame_0_are_the_drawn_positions(lung_small):
    for nod in lung_small.params["nodules"]:
        np.testing.assert_allclose(lung_small.landmarks[nod["name"]][0], nod["center_ras"], atol=1e-3)


def test_amplitude_override_changes_motion_not_anatomy():
    a = small("lung", seed=5, num_frames=5)
    b = small("lung", seed=5, num_frames=5, amplitude=12.5)
    assert b.params["amplitude"] == 12.5 and b.params["drawn_amplitude"] == a.params["amplitude"]
    assert np.array_equal(a.frames.frames[0], b.frames.frames[0])  # same end-exhale anatomy
    dia_a = np.ptp(a.landmarks["diaphragm_right"][:, 2])
    dia_b = np.ptp(b.landmarks["diaphragm_right"][:, 2])
    assert dia_b / dia_a == pytest.approx(12.5 / a.params["amplitude"], rel=1e-3)
    zero = small("lung", seed=5, num_frames=3, amplitude=0.0)
    assert not np.any(zero.motion.frames)
    assert np.array_equal(zero.frames.frames[0], zero.frames.frames[2])


def sample_motion(case, t, point_ras):
    """Trilinear interpolation of the motion of frame ``t`` at a RAS point."""
    from scipy import ndimage

    ijk = case.motion.geometry.ras_to_ijk_points(np.asarray(point_ras, float))
    coords = np.array([[ijk[2]], [ijk[1]], [ijk[0]]])
    return np.array([ndimage.map_coordinates(case.motion.frames[t][..., c], coords, order=1)[0] for c in range(3)])


@pytest.mark.parametrize("kind", ["lung", "cardiac"])
def test_start_phase_shifts_the_cycle(kind):
    n = 4  # phases are exact binary fractions, so both cases evaluate identical phases
    base = small(kind, seed=2, num_frames=n)
    shifted = small(kind, seed=2, num_frames=n, start_phase=0.5)
    assert not np.any(shifted.motion.frames[0])
    for t in range(n):
        src = (t + n // 2) % n
        assert np.array_equal(shifted.frames.frames[t], base.frames.frames[src])
        for name in base.landmarks:
            np.testing.assert_allclose(shifted.landmarks[name][t], base.landmarks[name][src], atol=1e-9)
    # motion from a non-reference frame 0: a landmark at frame 0 moves to its frame-t position
    name = "nodule_1" if kind == "lung" else "mitral_center"
    p0 = shifted.landmarks[name][0]
    expected = shifted.landmarks[name][n // 2] - p0
    assert np.linalg.norm(expected) > 2.0
    assert np.linalg.norm(sample_motion(shifted, n // 2, p0) - expected) < 1.0


def test_waveforms_shape():
    phase = np.linspace(0, 1, 401)
    for n in (1, 2, 3):
        s = waveforms.breathing(phase, n, 0.4)
        assert s[0] == 0.0 and s.max() == pytest.approx(1.0) and phase[np.argmax(s)] == pytest.approx(0.4, abs=0.01)
        # larger n dwells longer near end-exhale
        assert np.mean(s < 0.1) > (0.2 if n > 1 else 0.1)
    lag = waveforms.breathing_lagged(phase, 2, 0.4, 0.08)
    assert lag[0] == 0.0 and phase[np.argmax(lag)] == pytest.approx(0.48, abs=0.01)
    kappa = waveforms.cardiac_contraction(phase, 0.35, atrial_kick=0.07)
    assert kappa[0] == 0.0 and phase[np.argmax(kappa)] == pytest.approx(0.35, abs=0.005)
    assert kappa[np.searchsorted(phase, 0.8)] == pytest.approx(0.07)  # diastasis before the kick
    assert kappa[-2] < 0.01
