"""Model-grid resampling and difference transfer keep the input's exact geometry and values."""

import numpy as np
import pytest

from MoDiffLib import Geometry, InputError, Volume
from MoDiffLib.preprocess import IntensityWindow, model_grid, resample, to_model, transfer_differences, window_for

AXIAL_LPS = np.diag([-1.0, -1.0, 1.0])


def oblique() -> np.ndarray:
    a, b = np.deg2rad(15.0), np.deg2rad(25.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def smooth(ras: np.ndarray) -> np.ndarray:
    """A smooth field of RAS position: linear interpolation reproduces it closely."""
    return 100.0 + 2.0 * ras[..., 0] - 1.5 * ras[..., 1] + 0.5 * ras[..., 2]


def test_resample_is_exact_in_world_coordinates():
    src = Geometry((20, 30, 28), (1.3, 1.1, 2.5), (-12.0, 8.0, 40.0), oblique())
    values = smooth(src.voxel_centers_ras()).astype(np.float32)
    tgt = model_grid(src, (16, 24, 24), (1.5, 1.5, 2.0), AXIAL_LPS)
    out = resample(values, src, tgt, order=1, fill=np.nan)
    expected = smooth(tgt.voxel_centers_ras())
    inside = np.isfinite(out)
    assert inside.mean() > 0.5  # the model grid is centred on the input
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-3, rtol=0)


def test_model_grid_is_centred_on_input():
    src = Geometry((10, 20, 30), (1.0, 1.0, 3.0), (5.0, 6.0, 7.0), oblique())
    tgt = model_grid(src, (8, 8, 8), (2.0, 2.0, 2.0), AXIAL_LPS)
    c_src = src.ijk_to_ras_points((np.array(src.shape_kji[::-1]) - 1) / 2)
    c_tgt = tgt.ijk_to_ras_points((np.array(tgt.shape_kji[::-1]) - 1) / 2)
    np.testing.assert_allclose(c_src, c_tgt, atol=1e-9)
    np.testing.assert_allclose(tgt.direction, AXIAL_LPS)


def test_identity_resample_returns_the_same_voxels():
    g = Geometry((4, 5, 6), (1.0, 2.0, 3.0), (1.0, 2.0, 3.0), oblique())
    a = np.random.default_rng(0).normal(size=g.shape_kji).astype(np.float32)
    np.testing.assert_array_equal(resample(a, g, g), a)


def test_window_normalises_and_inverts():
    w = IntensityWindow(-1000.0, 400.0)
    x = np.array([-2000.0, -1000.0, -300.0, 400.0, 1500.0])
    n = w.normalise(x)
    np.testing.assert_allclose(n, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(w.denormalise(n[1:4]), x[1:4], atol=1e-3)
    with pytest.raises(InputError, match="low < high"):
        IntensityWindow(5.0, 5.0)


def test_percentile_window_rejects_constant_volume():
    v = Volume.from_array(np.full((4, 4, 4), 7.0, np.float32), name="flat.nrrd")
    with pytest.raises(InputError, match="constant"):
        window_for(v, "percentile", 1.0, 99.0)
    with pytest.raises(InputError, match="unknown intensity recipe"):
        window_for(v, "zscore", 0, 1)


def test_difference_transfer_keeps_frame0_and_geometry_and_dtype():
    g = Geometry((12, 16, 16), (1.2, 1.2, 3.0), (3.0, -4.0, 10.0), oblique())
    rng = np.random.default_rng(1)
    ct = rng.integers(-1000, 1200, size=g.shape_kji).astype(np.int16)
    vol = Volume(ct, g, "ct")
    w = IntensityWindow(-1000.0, 400.0)
    grid = model_grid(g, (10, 12, 12), (2.0, 2.0, 4.0), AXIAL_LPS)
    x0 = to_model(vol, grid, w)
    shift = 0.1  # normalised units -> 70 HU
    generated = np.stack([x0, x0 + shift, x0])
    out = transfer_differences(vol, generated, grid, w)
    assert out.dtype == np.int16 and out.shape == (3, *g.shape_kji)
    np.testing.assert_array_equal(out[0], ct)  # frame 0 is the input, bit-exact
    np.testing.assert_array_equal(out[2], ct)  # no change generated -> no change
    # Where the model grid covers the input, the change arrives in HU (bone above the window kept).
    inside = resample(np.ones(grid.shape_kji, np.float32), grid, g, fill=0.0) > 0.999
    assert inside.sum() > 100
    delta = out[1].astype(int) - ct.astype(int)
    np.testing.assert_allclose(delta[inside], 70, atol=1)
    assert np.all(delta[~inside & (np.abs(delta) > 0)] <= 70)
