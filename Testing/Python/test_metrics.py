"""Image metrics of cines (MoDiffLib.metrics): known values on simple arrays."""

import math

import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.metrics import cine_metrics, nmse, psnr, ssim3d, temporal_consistency_error


def volume(seed=0, shape=(12, 16, 16)):
    """A smooth volume in [-1, 1] with structure (so SSIM has something to compare)."""
    k, j, i = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    return np.clip(np.sin(6 * i + 3 * k) * np.cos(5 * j) + 0.05 * rng.standard_normal(shape), -1, 1)


def test_identical_volumes_score_perfectly():
    v = volume()
    assert psnr(v, v, data_range=2.0) == math.inf
    assert ssim3d(v, v, data_range=2.0) == pytest.approx(1.0)
    assert nmse(v, v) == 0.0
    assert temporal_consistency_error(np.stack([v, v * 0.5]), np.stack([v, v * 0.5])) == 0.0


@pytest.mark.parametrize("sigma, data_range", [(0.1, 2.0), (0.02, 2.0), (5.0, 1600.0)])
def test_psnr_of_known_noise(sigma, data_range):
    rng = np.random.default_rng(1)
    target = np.zeros((32, 32, 32))
    noise = rng.standard_normal(target.shape)
    noise *= sigma / np.sqrt(np.mean(noise**2))  # root mean square exactly sigma: MSE = sigma^2
    expected = 20 * math.log10(data_range / sigma)
    assert psnr(target + noise, target, data_range) == pytest.approx(expected, abs=1e-6)


def test_psnr_depends_on_the_data_range():
    a, b = np.zeros((4, 4, 4)), np.full((4, 4, 4), 0.1)
    assert psnr(b, a, 2.0) - psnr(b, a, 1.0) == pytest.approx(20 * math.log10(2.0))


def test_nmse_known_value_and_scale_invariance():
    v = volume() + 2.0  # away from zero
    assert nmse(1.1 * v, v) == pytest.approx(0.01)
    assert nmse(1.1 * 7 * v, 7 * v) == pytest.approx(0.01)
    assert nmse(np.ones(8), np.zeros(8)) == math.inf


def test_ssim_falls_with_noise_and_is_symmetric():
    v = volume()
    rng = np.random.default_rng(2)
    slightly = v + 0.05 * rng.standard_normal(v.shape)
    strongly = v + 0.5 * rng.standard_normal(v.shape)
    s1, s2 = ssim3d(slightly, v, 2.0), ssim3d(strongly, v, 2.0)
    assert 0.5 < s1 < 1.0
    assert s2 < s1 - 0.3
    assert ssim3d(v, slightly, 2.0) == pytest.approx(s1)


def test_ssim_handles_thin_volumes_and_refuses_too_thin_ones():
    v = volume(shape=(4, 16, 16))  # window shrinks to 3
    assert ssim3d(v, v, 2.0) == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least 3 voxels"):
        ssim3d(v[:2], v[:2], 2.0)


def test_temporal_consistency_error_measures_differences_of_differences():
    frames = np.stack([volume(s) for s in range(3)])
    # A constant offset on every frame moves nothing: zero error, though PSNR is finite.
    assert temporal_consistency_error(frames + 0.3, frames) == pytest.approx(0.0, abs=1e-12)
    # A static prediction misses every change: the error is the mean absolute change.
    static = np.repeat(frames[:1], 3, axis=0)
    expected = np.mean(np.abs(np.diff(frames, axis=0)))
    assert temporal_consistency_error(static, frames) == pytest.approx(expected)


def test_cine_metrics_skip_frame_zero():
    truth = np.stack([volume(s) for s in range(3)])
    made = truth.copy()
    made[0] += 1.0  # frame 0 is the given input: its error must not count
    scores = cine_metrics(made, truth, data_range=2.0)
    assert scores["psnr"] == math.inf and scores["nmse"] == 0.0 and scores["ssim"] == pytest.approx(1.0)
    made = truth.copy()
    made[2] += 0.1
    scores = cine_metrics(made, truth, data_range=2.0)
    assert scores["psnr"] == math.inf  # frame 1 exact -> its PSNR is inf, the mean too
    made[1] += 0.1
    scores = cine_metrics(made, truth, data_range=2.0)
    assert scores["psnr"] == pytest.approx(20 * math.log10(2.0 / 0.1))
    assert scores["tce"] == pytest.approx(0.1 / 2)  # change 0->1 off by 0.1, change 1->2 exact


@pytest.mark.parametrize("call, match", [
    (lambda: psnr(np.zeros(3), np.zeros(4), 1.0), "shape"),
    (lambda: psnr(np.zeros(3), np.zeros(3), 0.0), "data_range"),
    (lambda: nmse(np.array([np.nan]), np.zeros(1)), "NaN"),
    (lambda: ssim3d(np.zeros((5, 5)), np.zeros((5, 5)), 1.0), "3D"),
    (lambda: temporal_consistency_error(np.zeros((1, 3)), np.zeros((1, 3))), "2 frames"),
    (lambda: cine_metrics(np.zeros((3, 4, 4)), np.zeros((3, 4, 4)), 2.0), "T, K, J, I"),
])
def test_bad_inputs_are_refused(call, match):
    with pytest.raises(InputError, match=match):
        call()
