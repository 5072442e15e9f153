"""Geometry and volume types: the RAS convention and input validation users rely on."""

import numpy as np
import pytest

from MoDiffLib import Geometry, InputError, Volume, VolumeSequence


def oblique_direction() -> np.ndarray:
    a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def test_ijk_to_ras_matches_definition_and_inverts():
    g = Geometry((5, 6, 7), (0.7, 0.9, 2.5), (10.0, -20.0, 30.0), oblique_direction())
    m = g.ijk_to_ras()
    # Voxel (i, j, k) = (1, 0, 0) lies one i-spacing along the first direction column.
    np.testing.assert_allclose(m @ [1, 0, 0, 1], [*(np.array(g.origin_ras) + 0.7 * g.direction[:, 0]), 1])
    pts = np.array([[0.0, 0.0, 0.0], [3.2, 4.1, 1.5], [6.0, 5.0, 4.0]])
    np.testing.assert_allclose(g.ras_to_ijk_points(g.ijk_to_ras_points(pts)), pts, atol=1e-12)
    g2 = Geometry.from_ijk_to_ras(g.shape_kji, m)
    assert g2.is_close(g, atol_mm=1e-12)


def test_voxel_centres_follow_array_index_order():
    g = Geometry((2, 3, 4), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0))
    c = g.voxel_centers_ras()
    assert c.shape == (2, 3, 4, 3)
    # array[k, j, i] -> RAS = origin + (i*si, j*sj, k*sk) for an identity direction
    np.testing.assert_allclose(c[1, 2, 3], [5 + 3 * 1.0, 6 + 2 * 2.0, 7 + 1 * 3.0])


def test_contains_ras_flags_points_outside():
    g = Geometry((10, 10, 10), (1.0, 1.0, 1.0))
    inside = g.contains_ras(np.array([[0.0, 0.0, 0.0], [9.0, 9.0, 9.0], [-3.0, 0.0, 0.0], [0.0, 12.0, 0.0]]))
    assert inside.tolist() == [True, True, False, False]


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 4)), "3D volume"),
        (np.zeros((2, 3, 4, 5, 6)), "3D volume"),
        (np.zeros((0, 3, 4)), "empty"),
        (np.array([[[1.0, np.nan]]]), "NaN"),
        (np.array([[[1.0, np.inf]]]), "NaN or infinite"),
        (np.array([[["a"]]], dtype=object), "numbers"),
    ],
)
def test_bad_volumes_are_rejected_with_a_clear_message(array, message):
    with pytest.raises(InputError, match=message):
        Volume.from_array(array)


def test_bad_geometry_is_rejected():
    with pytest.raises(InputError, match="spacing"):
        Geometry((2, 2, 2), (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="orthonormal"):
        Geometry((2, 2, 2), direction_ras=np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="does not match"):
        Volume(np.zeros((2, 2, 3)), Geometry((2, 2, 2)))


def test_sequence_requires_shared_geometry_and_index_per_frame():
    g = Geometry((2, 3, 4), (1.0, 1.0, 2.0))
    v0 = Volume(np.zeros((2, 3, 4), np.float32), g)
    v1 = Volume(np.ones((2, 3, 4), np.float32), Geometry((2, 3, 4), (1.0, 1.0, 2.5)))
    with pytest.raises(InputError, match="frame 1 has geometry"):
        VolumeSequence.from_volumes([v0, v1])
    seq = VolumeSequence.from_volumes([v0, v0.with_array(np.ones((2, 3, 4), np.float32))])
    assert seq.num_frames == 2 and seq.index_values == ["0", "1"]
    assert float(seq.frame(1).array.mean()) == 1.0
    with pytest.raises(InputError, match="frame 5 does not exist"):
        seq.frame(5)
    with pytest.raises(InputError, match="index values"):
        VolumeSequence(seq.frames, g, index_values=["0"])
    nan_frames = seq.frames.copy()
    nan_frames[1, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="frame 1 contains 1 NaN"):
        VolumeSequence(nan_frames, g)


def test_vector_volume_needs_three_components():
    g = Geometry((2, 3, 4))
    assert Volume(np.zeros((2, 3, 4, 3), np.float32), g).is_vector
    with pytest.raises(InputError, match="3 components"):
        Volume(np.zeros((2, 3, 4, 2), np.float32), g)


def test_skewed_direction_with_unit_columns_is_rejected():
    skew = np.deg2rad(1.0)
    d = np.array([[1.0, np.sin(skew), 0.0], [0.0, np.cos(skew), 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(InputError, match="orthonormal"):
        Geometry((2, 2, 2), direction_ras=d)
