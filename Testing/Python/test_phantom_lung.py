"""The lung 4D CT phantom against its calibration (KNOWLEDGE section 4) and its own ground truth.

One default-grid case (128 x 128 x 64, 16 frames) is rendered once for the module; population
statistics (nodule amplitudes per lobe) use the motion model directly, which is what the rendered
landmarks are made of.
"""

import numpy as np
import pytest
from scipy import ndimage

from MoDiffLib.phantom import LUNG_GRID, make_phantom
from MoDiffLib.phantom import waveforms
from MoDiffLib.phantom.lung import LungModel

SEED = 0  # a case with one upper-lobe and one lower-lobe nodule
FRAMES = 16


@pytest.fixture(scope="module")
def case():
    return make_phantom("lung", num_frames=FRAMES, seed=SEED)


def names(case, *wanted):
    return [v for v, n in case.label_names.items() if n in wanted]


def lung_mask(case):
    return np.isin(case.labels.frames, names(case, "lung_right", "lung_left"))


def inhale_frame(case):
    return int(np.argmin(case.landmarks["diaphragm_right"][:, 2]))


def test_geometry_and_tissue_values(case):
    assert case.frames.geometry.is_close(LUNG_GRID)
    f0, l0 = case.frames.frames[0], case.labels.frames[0]
    assert f0[ndimage.binary_erosion(l0 == 0)].max() <= -990.0  # air around the body
    assert np.median(f0[lung_mask(case)[0]]) == pytest.approx(-850.0, abs=40.0)
    assert np.median(f0[np.isin(l0, names(case, "heart", "liver"))]) == pytest.approx(50.0, abs=30.0)
    assert np.median(f0[np.isin(l0, names(case, "ribs", "spine"))]) >= 700.0
    for structure in ("vessels", "ribs", "spine", "heart", "airways", "liver", "nodule_1"):
        assert np.count_nonzero(np.isin(l0, names(case, structure))) > 20, structure


def test_diaphragm_excursion_matches_params_and_images(case):
    a = case.params["amplitude"]
    assert 10.0 <= a <= 30.0
    s = waveforms.breathing(np.array(case.params["frame_phases"]), case.params["waveform_n"],
                            case.params["inhale_fraction"])
    dome = case.landmarks["diaphragm_right"]
    np.testing.assert_allclose(dome[0, 2] - dome[:, 2], a * s, atol=0.05)
    # the lung/liver boundary in the images (sub-voxel, where HU crosses -400) under the dome
    t = inhale_frame(case)
    geom = case.frames.geometry
    i0, j0, _ = np.round(geom.ras_to_ijk_points(dome[0])).astype(int)
    z = geom.voxel_centers_ras()[:, j0, i0, 2]

    def boundary(frame):
        heights = []
        for dj in range(-2, 3):
            for di in range(-2, 3):
                col = case.frames.frames[frame][:, j0 + dj, i0 + di]
                k = np.flatnonzero((col[:-1] > -400) & (col[1:] <= -400))[0]  # liver below, lung above
                heights.append(z[k] + (col[k] + 400) / (col[k] - col[k + 1]) * (z[k + 1] - z[k]))
        return float(np.mean(heights))

    measured = boundary(0) - boundary(t)
    assert measured == pytest.approx(dome[0, 2] - dome[t, 2], abs=1.5)


def test_nodule_amplitude_depends_on_lobe_and_si_dominates():
    """Over many patients at a 20 mm diaphragm: lower lobe 12 +- 2 mm SI, upper lobe 5-6 mm."""
    phases = np.linspace(0.0, 1.0, 101)
    by_kind = {"lower": [], "upper": []}
    ratios = []
    for seed in range(12):
        model = LungModel(seed, amplitude=20.0)
        for nod in model.nodules:
            if nod["lobe_kind"] not in by_kind:
                continue
            c = np.array([nod["center_local"]], np.float32)
            d = np.array([model.displacement(c, p)[0] for p in phases])
            k = int(np.argmax(np.abs(d[:, 2])))
            by_kind[nod["lobe_kind"]].append(abs(d[k, 2]))
            if nod["lobe_kind"] == "lower":
                ratios.append(abs(d[k, 2]) / np.linalg.norm(d[k]))
    lower, upper = np.array(by_kind["lower"]), np.array(by_kind["upper"])
    assert len(lower) >= 5 and len(upper) >= 5
    assert lower.mean() == pytest.approx(12.0, abs=1.5) and lower.min() > 9.0 and lower.max() < 15.0
    assert upper.mean() == pytest.approx(5.5, abs=1.0) and upper.max() < 8.0
    assert lower.min() > upper.max()
    assert 0.80 < np.min(ratios) and np.max(ratios) < 0.99 and 0.85 <= np.mean(ratios) <= 0.95


def test_rendered_nodules_follow_their_landmarks(case):
    """Warping frame-0 nodule voxels with ``motion`` lands on the frame-t nodule and landmark."""
    geom = case.frames.geometry
    centres = geom.voxel_centers_ras()
    t = inhale_frame(case)
    for value, name in case.label_names.items():
        if not name.startswith("nodule_"):
            continue
        m0 = case.labels.frames[0] == value
        mt = case.labels.frames[t] == value
        warped = (centres[m0] + case.motion.frames[t][m0]).mean(axis=0)
        seen = centres[mt].mean(axis=0)
        track = case.landmarks[name]
        assert np.linalg.norm(centres[m0].mean(axis=0) - track[0]) < 1.0
        assert np.linalg.norm(warped - track[t]) < 1.0
        assert np.linalg.norm(seen - track[t]) < 1.5
        assert np.linalg.norm(track[t] - track[0]) > 3.0  # it did move
        # voxel by voxel: the warped nodule lands on the frame-t nodule
        ijk = np.round(geom.ras_to_ijk_points(centres[m0] + case.motion.frames[t][m0])).astype(int)
        assert np.mean(mt[ijk[:, 2], ijk[:, 1], ijk[:, 0]]) > 0.9


def test_warped_labels_reproduce_the_frame_labels(case):
    geom = case.frames.geometry
    centres = geom.voxel_centers_ras()
    t = inhale_frame(case)
    lab0, labt = case.labels.frames[0], case.labels.frames[t]
    for structure, share in (("lung_right", 0.97), ("lung_left", 0.97), ("heart", 0.95), ("vessels", 0.5),
                             ("liver", 0.95)):
        m0 = lab0 == names(case, structure)[0]
        ijk = np.round(geom.ras_to_ijk_points(centres[m0] + case.motion.frames[t][m0])).astype(int)
        ok = np.all((ijk >= 0) & (ijk < np.array(geom.shape_kji[::-1])), axis=1)
        landed = labt[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]
        assert np.mean(landed == names(case, structure)[0]) > share, structure


def test_motion_field_agrees_with_landmarks(case):
    geom = case.motion.geometry
    checked = 0
    for name, track in case.landmarks.items():
        if not name.startswith(("bifurcation_", "nodule_")):
            continue
        ijk = geom.ras_to_ijk_points(track[0])
        coords = np.array([[ijk[2]], [ijk[1]], [ijk[0]]])
        for t in range(1, FRAMES, 3):
            disp = [ndimage.map_coordinates(case.motion.frames[t][..., c], coords, order=1)[0] for c in range(3)]
            assert np.linalg.norm(track[0] + disp - track[t]) < 0.5, (name, t)
        checked += 1
    assert checked >= 6


def test_chest_wall_ribs_and_spine_do_not_move(case):
    f, lab, mo = case.frames.frames, case.labels.frames, case.motion.frames
    bone = np.isin(lab[0], names(case, "ribs", "spine", "sternum"))
    assert np.count_nonzero(bone) > 1000
    for t in range(1, FRAMES):
        assert np.array_equal(f[t][bone], f[0][bone]) and np.array_equal(lab[t][bone], lab[0][bone])
        assert not np.any(mo[t][bone])
    # every voxel whose neighbourhood has zero motion shows the same image (a handful of voxels at
    # the cavity's concave corners see a sub-voxel sliver of moving tissue)
    still = ndimage.binary_erosion(np.all(np.abs(mo).max(axis=-1) == 0, axis=0), iterations=2)
    assert np.count_nonzero(still) > 0.3 * still.size
    changed = np.abs(f - f[0]).max(axis=0)[still]
    assert np.mean(changed == 0) > 0.9995
    # ... while the lungs slide along the wall: lung voxels next to the wall move
    lung0 = lung_mask(case)[0]
    rim = lung0 & ~ndimage.binary_erosion(lung0, iterations=1)
    t = inhale_frame(case)
    assert np.median(np.linalg.norm(mo[t][rim], axis=-1)) > 2.0


def test_lung_density_follows_the_jacobian(case):
    f = case.frames.frames
    lung = lung_mask(case)
    vox_ml = float(np.prod(case.frames.geometry.spacing)) / 1000.0
    t = inhale_frame(case)
    vol0, volt = lung[0].sum() * vox_ml, lung[t].sum() * vox_ml
    assert volt > 1.05 * vol0
    assert f[t][lung[t]].mean() < f[0][lung[0]].mean() - 5.0
    mass0 = (f[0][lung[0]] + 1000.0).sum() * vox_ml
    masst = (f[t][lung[t]] + 1000.0).sum() * vox_ml
    # conserved within the partial-volume rims (not scaled with the volume)
    assert masst / mass0 == pytest.approx(1.0, abs=0.03)
    assert abs(masst / mass0 - 1.0) < 0.3 * (volt / vol0 - 1.0)


def test_no_folding_in_the_motion_field(case):
    geom = case.motion.geometry
    t = inhale_frame(case)
    u = case.motion.frames[t].astype(np.float64)
    inv = np.linalg.inv(geom.direction * np.asarray(geom.spacing)[None, :])  # RAS -> ijk
    grads = np.stack([np.stack(np.gradient(u[..., c], *([1.0] * 3)), axis=-1) for c in range(3)], axis=-2)
    # grads[..., c, a] = d u_c / d index_a with a in (k, j, i) order -> d u / d RAS
    d_ijk = grads[..., ::-1]
    jac = np.eye(3) + d_ijk @ inv
    det = np.linalg.det(jac)
    lung = ndimage.binary_erosion(lung_mask(case)[0], iterations=2)
    assert np.count_nonzero(lung) > 10000
    assert det[lung].min() > 0.2
    assert np.median(det[lung]) > 1.0  # the lungs expand on inhale


def test_hysteresis_inhale_and_exhale_paths_differ(case):
    model = LungModel(SEED)
    phases = np.linspace(0.0, 1.0, 401)
    lower = [n for n in model.nodules if n["lobe_kind"] == "lower"]
    assert lower
    c = np.array([lower[0]["center_local"]], np.float32)
    d = np.array([model.displacement(c, p)[0] for p in phases])
    si, ap = -d[:, 2], d[:, 1]
    peak = int(np.argmax(si))
    half = 0.5 * si[peak]
    up = np.interp(half, si[:peak + 1], ap[:peak + 1])
    down = np.interp(half, si[peak:][::-1], ap[peak:][::-1])
    assert 1.0 <= abs(up - down) <= 5.0
    # the rendered landmark track is that curve sampled at the frame phases
    track = case.landmarks[lower[0]["name"]]
    sampled = np.array([model.displacement(c, p)[0] for p in case.params["frame_phases"]])
    np.testing.assert_allclose(track - track[0], sampled, atol=1e-4)


def test_heart_moves_with_part_of_the_diaphragm(case):
    heart = np.ptp(case.landmarks["heart_center"][:, 2])
    dome = np.ptp(case.landmarks["diaphragm_right"][:, 2])
    assert heart / dome == pytest.approx(0.6, abs=0.05)


@pytest.mark.parametrize("seed", [1, 5])
def test_motion_stays_invertible_at_the_largest_allowed_amplitude(seed):
    """The renderer inverts the field by fixed-point iteration: it must converge and not fold."""
    model = LungModel(seed, amplitude=40.0)
    geom = LUNG_GRID
    from MoDiffLib.phantom.grids import THORAX_CENTER_RAS

    pts = (geom.voxel_centers_ras()[::2, ::3, ::3].reshape(-1, 3) - THORAX_CENTER_RAS).astype(np.float32)
    t = model.torso
    pts = pts[t.cavity(pts[:, 0], pts[:, 1], pts[:, 2]) < 2.0]
    phase = model.inhale_fraction
    p = model.inverse(pts, phase)
    assert np.abs(p + model.displacement(p, phase) - pts).max() < 0.01
    assert model.jacobian_det(pts, phase).min() > 0.2
