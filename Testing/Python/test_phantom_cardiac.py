"""The cardiac cine phantom against its calibration (KNOWLEDGE section 4) and its ground truth.

One default-grid case (128 x 128 x 16, 20 frames from end-diastole) is rendered for the module.
EF is measured from the rendered LV-blood labels, as an evaluation would.
"""

import numpy as np
import pytest
from scipy import ndimage

from MoDiffLib.phantom import CARDIAC_GRID, make_phantom
from MoDiffLib.phantom import waveforms

SEED = 7
FRAMES = 20


@pytest.fixture(scope="module")
def case():
    return make_phantom("cardiac", num_frames=FRAMES, seed=SEED)


def label(case, name):
    return next(v for v, n in case.label_names.items() if n == name)


def kappas(case):
    p = case.params
    return waveforms.cardiac_contraction(np.array(p["frame_phases"]), p["systole_fraction"], atrial_kick=p["atrial_kick"])


def volumes_ml(case, name):
    vox_ml = float(np.prod(case.frames.geometry.spacing)) / 1000.0
    return np.count_nonzero(case.labels.frames == label(case, name), axis=(1, 2, 3)) * vox_ml


def es_frame(case):
    return int(np.argmax(kappas(case)))


def test_geometry_labels_and_intensities(case):
    assert case.frames.geometry.is_close(CARDIAC_GRID)
    f0, l0 = case.frames.frames[0], case.labels.frames[0]
    for name in ("lv_blood", "rv_blood", "myocardium", "rv_myocardium", "lung"):
        assert np.count_nonzero(l0 == label(case, name)) > 200, name
    blood = np.median(f0[l0 == label(case, "lv_blood")])
    myo = np.median(f0[l0 == label(case, "myocardium")])
    lung = np.median(f0[l0 == label(case, "lung")])
    assert blood > 700 and 150 < myo < 350 and lung < 150
    assert 0.0 <= f0.min() and f0.max() <= 1200.0


def test_ejection_fraction_from_labels_matches_params(case):
    ef = case.params["amplitude"]
    assert 25.0 <= ef <= 65.0
    assert case.params["ef_label_percent"] == pytest.approx(ef, abs=0.5)  # calibrated on this grid
    lv = volumes_ml(case, "lv_blood")
    assert 90.0 <= lv[0] <= 210.0
    k = kappas(case)
    t = es_frame(case)
    assert int(np.argmin(lv)) == t
    measured = 100.0 * (lv[0] - lv[t]) / lv[0]
    assert measured == pytest.approx(ef * k[t], abs=2.0)
    # the whole volume curve follows EDV (1 - EF kappa) up to the thick-slice steps at the base
    model = lv[0] * (1.0 - case.params["ef_model_percent"] / 100.0 * k)
    assert np.max(np.abs(lv - model)) < 0.1 * lv[0]
    rv = volumes_ml(case, "rv_blood")
    assert rv[t] < 0.85 * rv[0]


def test_amplitude_sets_the_ef_of_the_labels():
    small = make_phantom("cardiac", num_frames=2, seed=4, amplitude=35.0, shape_ijk=(64, 64, 16))
    assert small.params["amplitude"] == 35.0
    assert small.params["ef_label_percent"] == pytest.approx(35.0, abs=0.5)


def test_base_descends_towards_a_static_apex(case):
    k = kappas(case)
    t = es_frame(case)
    axis = np.array(case.params["heart_frame_axes_ras"])[2]  # apex -> base
    base = case.landmarks["mitral_center"]
    descent = (base[0] - base) @ axis
    assert descent[t] == pytest.approx(case.params["base_descent_mm"] * k[t], abs=0.05)
    assert 10.0 * k[t] <= descent[t] <= 15.0
    apex = case.landmarks["lv_apex"]
    assert np.abs(apex - apex[0]).max() < 1e-6


def test_torsion(case):
    p = case.params
    a_ax, b_ax, _ = np.array(p["heart_frame_axes_ras"])
    origin = np.array(p["heart_origin_ras"])

    def angle(track):
        q = track - origin
        return np.degrees(np.arctan2(q @ b_ax, q @ a_ax))

    t = es_frame(case)
    k = kappas(case)[t]
    base = angle(case.landmarks["mitral_lateral"])
    apex = angle(case.landmarks["lv_apical_lateral"])
    rot_base, rot_apex = base[t] - base[0], apex[t] - apex[0]
    assert rot_base * rot_apex < 0  # base and apex counter-rotate
    # the apical landmark sits at 10 % of the LV height: it sees 90 % of the net twist
    assert rot_apex - rot_base == pytest.approx(0.9 * p["torsion_deg"] * k, abs=0.1)
    assert 10.0 <= p["torsion_deg"] <= 15.0


def test_wall_thickening(case):
    g = case.frames.geometry
    area = g.spacing[0] * g.spacing[1]
    lv, myo = label(case, "lv_blood"), label(case, "myocardium")
    lab = case.labels.frames
    slices = [k for k in range(lab.shape[1]) if np.count_nonzero(lab[0, k] == lv) > 300]
    mid = slices[len(slices) // 2]

    def thickness(t):
        blood = np.count_nonzero(lab[t, mid] == lv) * area
        wall = np.count_nonzero(lab[t, mid] == myo) * area
        return np.sqrt((blood + wall) / np.pi) - np.sqrt(blood / np.pi)

    t = es_frame(case)
    ed = thickness(0)
    assert ed == pytest.approx(case.params["wall_thickness_mm"], abs=1.5)
    thickening = 100.0 * (thickness(t) / ed - 1.0)
    assert thickening > 15.0
    assert thickening == pytest.approx(case.params["wall_thickening_percent"], abs=8.0)


def test_motion_carries_labels_and_landmarks(case):
    geom = case.motion.geometry
    centres = geom.voxel_centers_ras()
    t = es_frame(case)
    lab0, labt = case.labels.frames[0], case.labels.frames[t]
    for name, allowed, share in (("lv_blood", ("lv_blood", "myocardium"), 0.95), ("myocardium", ("myocardium",), 0.8)):
        m0 = lab0 == label(case, name)
        moved = centres[m0] + case.motion.frames[t][m0]
        ijk = np.round(geom.ras_to_ijk_points(moved)).astype(int)
        inside = np.all((ijk >= 0) & (ijk < np.array(geom.shape_kji[::-1])), axis=1)
        landed = labt[ijk[inside, 2], ijk[inside, 1], ijk[inside, 0]]
        hit = np.isin(landed, [label(case, a) for a in allowed])
        assert hit.mean() > share, name
    # trilinear interpolation of the field between 8 mm slices is exact away from the kinks of the
    # map (the mitral plane, the endocardium, the apex), where these landmarks sit: allow 15 % of
    # the displacement plus a tenth of the slice thickness
    for name, track in case.landmarks.items():
        ijk = geom.ras_to_ijk_points(track[0])
        coords = np.array([[ijk[2]], [ijk[1]], [ijk[0]]])
        disp = [ndimage.map_coordinates(case.motion.frames[t][..., c], coords, order=1)[0] for c in range(3)]
        moved = np.linalg.norm(track[t] - track[0])
        assert np.linalg.norm(track[0] + disp - track[t]) < 0.1 * max(geom.spacing) + 0.15 * moved, name


@pytest.mark.parametrize("ef", [15.0, 80.0])
def test_cardiac_map_is_exactly_invertible_at_the_extremes(ef):
    from MoDiffLib.phantom.cardiac import CardiacModel

    model = CardiacModel(2, amplitude=ef)
    rng = np.random.default_rng(0)
    pts = np.stack([rng.uniform(-100, 100, 50000), rng.uniform(-100, 100, 50000),
                    rng.uniform(-80, 90, 50000)], axis=1).astype(np.float32)
    moved = model.forward(pts, 1.0)
    assert np.abs(moved - pts).max() > 5.0
    back = model.inverse(moved, 1.0)[0]
    assert np.abs(back - pts).max() < 1e-3
