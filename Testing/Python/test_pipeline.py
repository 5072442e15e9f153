"""The generation pipeline: exact geometry, determinism, cancel, clear errors, checkpoints.

These run the real networks with small widths on a small model grid (fresh weights): what is
tested here is the plumbing users rely on, not the quality of trained weights.
"""

import dataclasses
import threading

import numpy as np
import pytest
import torch

from MoDiffLib import Cancelled, Geometry, InputError, Volume
from MoDiffLib.models.config import GridConfig, VAEConfig, default_config
from MoDiffLib.pipeline import MoDiffPipeline, default_transfer, normalise_amplitude, resolve_device

TINY_NET = {"channels": [8, 16], "down_factors": [[1, 2, 2]], "attention_levels": [False, True],
            "emb_channels": 32, "num_groups": 4, "num_heads": 2}


def tiny_config(kind: str = "lung"):
    base = default_config(kind)
    return dataclasses.replace(
        base,
        grid=GridConfig(shape_kji=(8, 16, 16), spacing_ijk_mm=(8.0, 8.0, 12.0)),
        vae=VAEConfig(latent_channels=4, down_factors=((1, 2, 2),), channels=(8, 8), num_res_blocks=(0, 1),
                      norm_num_groups=4),
        tddm=dict(TINY_NET),
        i2v={**TINY_NET, "fal_levels": [1]},
        max_frames=6,
        sampling_steps=3,
    )


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    return MoDiffPipeline.from_config(tiny_config())


def oblique_ct() -> Volume:
    a = np.deg2rad(12.0)
    direction = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) @ np.diag([-1, -1, 1])
    rng = np.random.default_rng(3)
    ct = np.full((12, 20, 22), -1000, np.int16)
    ct[2:10, 4:16, 4:18] = rng.integers(-900, 100, size=(8, 12, 14))
    return Volume.from_array(ct, spacing=(7.0, 6.5, 9.0), origin_ras=(30.0, -12.0, 55.0), direction_ras=direction,
                             name="ct")


def test_output_has_input_geometry_dtype_and_frame0(pipeline):
    vol = oblique_ct()
    result = pipeline.generate(vol, 4, seed=1)
    seq = result.sequence
    assert seq.num_frames == 4 and seq.geometry == vol.geometry
    assert seq.frames.dtype == np.int16
    np.testing.assert_array_equal(seq.frames[0], vol.array)
    assert result.provenance["frames"] == 4 and result.provenance["steps"] == 3 and result.provenance["device"] == "cpu"


def test_same_seed_same_cine_different_seed_differs(pipeline):
    vol = oblique_ct()
    a = pipeline.generate(vol, 3, seed=7).sequence.frames
    b = pipeline.generate(vol, 3, seed=7).sequence.frames
    c = pipeline.generate(vol, 3, seed=8).sequence.frames
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[1:], c[1:])


def test_progress_is_monotonic_and_cancel_stops_within_a_step(pipeline):
    events = []
    pipeline.generate(oblique_ct(), 3, progress=events.append)
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {"tddm", "i2v", "decode"} <= {e.stage for e in events}

    cancel = threading.Event()
    seen = []

    def progress(ev):
        seen.append(ev)
        if ev.stage == "tddm" and ev.step == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        pipeline.generate(oblique_ct(), 3, progress=progress, cancel=cancel)
    assert [e.stage for e in seen].count("tddm") == 1 and "i2v" not in {e.stage for e in seen}


@pytest.mark.parametrize("frames", [1, 7])
def test_frame_count_out_of_range(pipeline, frames):
    with pytest.raises(InputError, match="between 2 and 6"):
        pipeline.generate(oblique_ct(), frames)


def test_wrong_modality_and_bad_amplitude_are_refused(pipeline):
    mr = Volume.from_array(np.random.default_rng(0).uniform(0, 900, (8, 16, 16)).astype(np.float32), name="mr.nii.gz")
    with pytest.raises(InputError, match="does not look like CT"):
        pipeline.generate(mr, 3)
    with pytest.raises(InputError, match="outside the range"):
        pipeline.generate(oblique_ct(), 3, amplitude=500.0)
    assert normalise_amplitude(pipeline.config, pipeline.config.amplitude.min) == 0.0
    with pytest.raises(InputError, match="no CUDA GPU"):
        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
        resolve_device("cuda")


def test_amplitude_condition_changes_the_motion(pipeline):
    vol = oblique_ct()
    lo = pipeline.generate(vol, 3, seed=2, amplitude=10.0).sequence.frames
    hi = pipeline.generate(vol, 3, seed=2, amplitude=30.0).sequence.frames
    assert not np.array_equal(lo[1:], hi[1:])


def test_checkpoint_round_trip_reproduces_generation(pipeline, tmp_path):
    path = pipeline.save_pretrained(tmp_path / "tiny-model")
    loaded = MoDiffPipeline.from_pretrained(path)
    assert loaded.config == pipeline.config
    vol = oblique_ct()
    np.testing.assert_array_equal(loaded.generate(vol, 3, seed=4).sequence.frames,
                                  pipeline.generate(vol, 3, seed=4).sequence.frames)
    with pytest.raises(InputError, match="does not exist"):
        MoDiffPipeline.from_pretrained(tmp_path / "missing" / "model")


def test_transfer_defaults_to_the_models_kind_and_is_recorded(pipeline):
    assert default_transfer(tiny_config("lung")) == "warp"
    assert default_transfer(tiny_config("cardiac")) == "difference"
    volume = oblique_ct()
    warped = pipeline.generate(volume, 3, seed=0, device="cpu")
    added = pipeline.generate(volume, 3, seed=0, device="cpu", transfer="difference")
    assert warped.provenance["transfer"] == "warp" and added.provenance["transfer"] == "difference"
    assert not np.array_equal(warped.sequence.frames[1:], added.sequence.frames[1:])
    with pytest.raises(InputError, match="transfer"):
        pipeline.generate(volume, 3, device="cpu", transfer="blend")
