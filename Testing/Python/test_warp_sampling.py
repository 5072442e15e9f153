"""The full-resolution warp of the motion models (torch sampling) against SciPy's resampling, and on a GPU."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from MoDiffLib import Geometry, Volume
from MoDiffLib.motion.fields import MotionFields
from MoDiffLib.motion.sampling import slabs
from MoDiffLib.motion.transfer import warp_input

# a fine input grid with a flipped RAS direction, and a coarser field grid that covers part of it
FINE = Geometry((20, 24, 28), (2.0, 2.0, 3.0), (30.0, 40.0, -20.0), ((-1, 0, 0), (0, -1, 0), (0, 0, 1)))
COARSE = Geometry((6, 8, 9), (5.0, 5.0, 7.0), (26.0, 36.0, -17.0), ((-1, 0, 0), (0, -1, 0), (0, 0, 1)))


def _case(seed: int = 0) -> tuple[Volume, MotionFields]:
    rng = np.random.default_rng(seed)
    hu = ndimage.gaussian_filter(rng.normal(0.0, 1.0, FINE.shape_kji), 2.0)
    hu = (hu / hu.std() * 400.0 - 500.0).astype(np.float32)  # lung-like to soft-tissue values
    d = np.zeros((3,) + COARSE.shape_kji + (3,), np.float32)
    for t in (1, 2):
        d[t] = ndimage.gaussian_filter(rng.normal(0.0, 1.0, COARSE.shape_kji + (3,)), (1.5, 1.5, 1.5, 0)) * 6.0 * t
    return Volume(hu, FINE, name="input"), MotionFields(d, COARSE, {})


def _scipy_warp(volume: Volume, fields: MotionFields, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The same warp written with SciPy: fields resampled (border), input sampled at x + v_t(x)."""
    m = fields.geometry.ras_to_ijk() @ volume.geometry.ijk_to_ras()
    perm = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float)

    def on_fine(a):
        return np.stack([ndimage.affine_transform(a[..., c], perm @ m[:3, :3] @ perm, perm @ m[:3, 3],
                                                  output_shape=FINE.shape_kji, order=1, mode="nearest")
                         for c in range(3)], -1)

    step = on_fine(fields.inverse(t)) @ np.linalg.inv(FINE.ijk_to_ras()[:3, :3]).T
    index = np.indices(FINE.shape_kji, dtype=float)
    source = [index[0] + step[..., 2], index[1] + step[..., 1], index[2] + step[..., 0]]
    return ndimage.map_coordinates(volume.array, source, order=1, mode="nearest"), on_fine(fields.displacements[t])


def test_the_warp_matches_scipy_resampling_on_a_rotated_coarser_grid():
    volume, fields = _case()
    frames, fine = warp_input(volume, fields)
    assert np.array_equal(frames[0], volume.array)
    for t in (1, 2):
        expected, expected_field = _scipy_warp(volume, fields, t)
        assert np.abs(frames[t] - volume.array).max() > 50.0  # it moved
        np.testing.assert_allclose(frames[t], expected, atol=0.05)
        np.testing.assert_allclose(fine.displacements[t], expected_field, atol=1e-3)


def test_slabs_cover_the_grid_once_and_give_the_same_frames():
    volume, fields = _case(1)
    ranges = slabs(FINE.shape_kji, max_voxels=3 * 24 * 28 + 5)
    assert ranges[0] == (0, 3) and ranges[-1][1] == 20
    assert sum(k1 - k0 for k0, k1 in ranges) == 20
    whole, _ = warp_input(volume, fields, mass_conservation=True)
    sliced, _ = warp_input(volume, fields, mass_conservation=True, slab_voxels=3 * 24 * 28 + 5)
    np.testing.assert_allclose(sliced, whole, atol=1e-3)


def test_nothing_moves_beyond_the_field_grid_with_zero():
    volume, fields = _case(2)
    frames, fine = warp_input(volume, fields, beyond="zero")
    centres = FINE.voxel_centers_ras().reshape(-1, 3)
    beyond = ~COARSE.contains_ras(centres, margin_voxels=0.01).reshape(FINE.shape_kji)
    covered = COARSE.contains_ras(centres, margin_voxels=-0.01).reshape(FINE.shape_kji)
    assert beyond.sum() > 1000 and covered.sum() > 1000
    assert np.all(fine.displacements[1][beyond] == 0.0)
    assert np.abs(fine.displacements[1][covered]).max() > 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: the GPU warp is not exercised")
def test_the_gpu_warp_gives_the_cpu_frames():
    volume, fields = _case(3)
    cpu, cpu_fields = warp_input(volume, fields, mass_conservation=True)
    gpu, gpu_fields = warp_input(volume, fields, mass_conservation=True, device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=0.05)
    np.testing.assert_allclose(gpu_fields.displacements, cpu_fields.displacements, atol=1e-3)
