"""Training data (training/data.py): frame choices, caches, and a batch order that is a function
of (seed, stage, step) and shards like DistributedSampler."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from MoDiffLib import InputError  # noqa: E402
from MoDiffLib.datasets import PhantomDataset  # noqa: E402
from MoDiffLib.phantom import make_phantom  # noqa: E402
from MoDiffLib.pipeline import MoDiffPipeline  # noqa: E402
from MoDiffLib.preprocess import to_model  # noqa: E402
from training.config import load_config  # noqa: E402
from training.data import (  # noqa: E402
    CachedCase,
    LatentCache,
    build_frame_cache,
    draw_frame_batch,
    draw_sequence_batch,
    frame_cache_key,
    frame_indices,
    sequence_choices,
)

TINY = REPO / "training" / "configs" / "tiny-lung-phantom.toml"


def test_sequence_choices():
    assert sequence_choices(12, "cycle", 16) == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2)]
    assert sequence_choices(12, "cycle", 6) == [(2, 6), (3, 4), (4, 3), (6, 2)]
    assert sequence_choices(7, "interval", 16) == [(1, 7), (2, 4), (3, 3), (6, 2)]
    assert sequence_choices(4, "prefix", 16) == [(1, 2), (1, 3), (1, 4)]
    assert sequence_choices(20, "none", 16) == []
    assert sequence_choices(7, "cycle", 16) == [(1, 7)]  # 7 frames: only the whole cycle
    assert frame_indices(3, 4) == [0, 3, 6, 9]


def test_a_cycle_subsequence_is_the_phantom_with_fewer_frames():
    """The meaning of N the trainer teaches: N frames span one whole cycle from frame 0."""
    six = make_phantom("lung", num_frames=6, seed=5, shape_ijk=(32, 32, 16)).frames.frames
    three = make_phantom("lung", num_frames=3, seed=5, shape_ijk=(32, 32, 16)).frames.frames
    stride, n = 2, 3
    assert (stride, n) in sequence_choices(6, "cycle", 16)
    np.testing.assert_array_equal(six[frame_indices(stride, n)], three)


@pytest.fixture(scope="module")
def tiny_pipeline():
    return MoDiffPipeline.from_config(load_config(TINY).model)


def test_frame_cache_holds_exactly_what_inference_preprocessing_makes(tmp_path, tiny_pipeline):
    data = PhantomDataset("lung", num_cases=2, num_frames=(3, 4), shape_ijk=(32, 32, 16))
    key = frame_cache_key("phantom:lung:2", {}, tiny_pipeline, "float32")
    cache = build_frame_cache(data, tiny_pipeline, tmp_path / "frames", key, "cycle", "float32", say=lambda s: None)
    assert len(cache) == 2 and cache.shape_kji == (16, 32, 32)
    case = data[1]
    first = case.frames.frame(0)
    grid, window = tiny_pipeline.grid_for(first), tiny_pipeline.window(first)
    for t in range(case.num_frames):
        np.testing.assert_array_equal(cache.frames(1)[t], to_model(case.frames.frame(t), grid, window))
    assert cache.cases[1] == CachedCase(case.case_id, case.num_frames, case.amplitude)
    # reused when the key matches (no rebuild: the file is not rewritten)
    stamp = (tmp_path / "frames" / "case-00000.npy").stat().st_mtime_ns
    build_frame_cache(data, tiny_pipeline, tmp_path / "frames", key, "cycle", "float32", say=lambda s: None)
    assert (tmp_path / "frames" / "case-00000.npy").stat().st_mtime_ns == stamp
    # ... but its frame counts are checked against the sequence rule again
    small = MoDiffPipeline.from_config(replace(tiny_pipeline.config, max_frames=3))
    assert [c.num_frames for c in cache.cases] == [3, 4]
    with pytest.raises(InputError, match="phantom_lung_1 has 4 frames, which give no sequence of 2..3 frames"):
        build_frame_cache(data, small, tmp_path / "frames", key, "none", "float32", say=lambda s: None)


def test_a_cardiac_case_for_a_ct_model_is_refused(tmp_path, tiny_pipeline):
    data = PhantomDataset("cardiac", num_cases=1, num_frames=3, shape_ijk=(32, 32, 16))
    with pytest.raises(InputError, match="training case phantom_cardiac_0.*does not look like CT"):
        build_frame_cache(data, tiny_pipeline, tmp_path / "f", "k", "cycle", say=lambda s: None)


def fake_latents(tmp_path, counts, channels=2, size=(2, 2, 2)):
    folder = tmp_path / "latents"
    folder.mkdir()
    for i, n in enumerate(counts):
        z = np.arange(n * channels * np.prod(size), dtype=np.float32).reshape(n, channels, *size) + 1000 * i
        np.save(folder / f"latent-{i:05d}.npy", z)
    (folder / "index.json").write_text(json.dumps({"key": "k", "num_cases": len(counts)}))
    return LatentCache(folder), [CachedCase(f"c{i}", n, 10.0 + i) for i, n in enumerate(counts)]


def draw(latents, cases, step, rank=0, world=1, seed=3, batch=6):
    return draw_sequence_batch(
        "tddm", latents, cases, [0.1, None, 0.7], mode="cycle", max_frames=6, latent_scale=0.5,
        num_train_timesteps=1000, amplitude_dropout=0.2, has_amplitude=True, seed=seed, step=step,
        global_batch=batch, rank=rank, world=world, device=torch.device("cpu"))


def test_the_batch_of_a_step_depends_on_seed_and_step_only(tmp_path):
    latents, cases = fake_latents(tmp_path, [6, 4, 3])
    a, b = draw(latents, cases, step=5), draw(latents, cases, step=5)
    for name in ("latents", "num_frames", "timesteps", "noise"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.amplitude.isnan(), b.amplitude.isnan())
    other = draw(latents, cases, step=6)
    assert not torch.equal(a.timesteps, other.timesteps)
    assert not torch.equal(a.timesteps, draw(latents, cases, step=5, seed=4).timesteps)


def test_a_batch_holds_scaled_sub_cycles_and_masked_amplitudes(tmp_path):
    latents, cases = fake_latents(tmp_path, [6, 4, 3])
    amps = {0: 0.1, 1: None, 2: 0.7}
    seen_dropped = seen_given = False
    for step in range(20):
        b = draw(latents, cases, step)
        for s in range(b.latents.shape[0]):
            n = int(b.num_frames[s])
            z = b.latents[s, :, :n].transpose(0, 1) / 0.5  # (N, C, ...) unscaled
            case = int(z[0, 0, 0, 0, 0]) // 1000
            full = torch.from_numpy(np.array(latents.latents(case)))
            stride = cases[case].num_frames // n
            assert cases[case].num_frames % n == 0 and torch.equal(z, full[::stride])
            assert torch.all(b.latents[s, :, n:] == 0) and torch.all(b.noise[s, :, n:] == 0)
            a = float(b.amplitude[s])
            if amps[case] is None:
                assert np.isnan(a)
            elif np.isnan(a):
                seen_dropped = True
            else:
                assert a == pytest.approx(amps[case])
                seen_given = True
    assert seen_dropped and seen_given
    fields = b.fields(2.0)
    n = int(b.num_frames[0])
    assert torch.allclose(fields[0, :, 1], (b.latents[0, :, 1] - b.latents[0, :, 0]) * 2.0)
    assert torch.all(fields[0, :, 0] == 0) and torch.all(fields[0, :, n:] == 0)


def test_i2v_steps_on_tddm_fields_are_drawn_per_step(tmp_path):
    latents, cases = fake_latents(tmp_path, [6, 4, 3])

    def uses(prob):
        return [draw_sequence_batch(
            "i2v", latents, cases, [None] * 3, mode="cycle", max_frames=6, latent_scale=1.0,
            num_train_timesteps=1000, amplitude_dropout=0.2, has_amplitude=False, seed=0, step=k, global_batch=2,
            rank=0, world=1, device=torch.device("cpu"), tddm_field_prob=prob).use_tddm_fields for k in range(40)]

    assert not any(uses(0.0)) and all(uses(1.0)) and 5 < sum(uses(0.5)) < 35


def test_processes_share_the_global_batch_like_a_distributed_sampler(tmp_path):
    latents, cases = fake_latents(tmp_path, [6, 4, 3])
    whole = draw(latents, cases, step=2)
    parts = [draw(latents, cases, step=2, rank=r, world=3) for r in range(3)]
    for r, part in enumerate(parts):
        for i, s in enumerate(range(r, 6, 3)):
            n = int(whole.num_frames[s])
            assert int(part.num_frames[i]) == n and int(part.timesteps[i]) == int(whole.timesteps[s])
            assert torch.equal(part.latents[i, :, :n], whole.latents[s, :, :n])
            assert torch.equal(part.noise[i, :, :n], whole.noise[s, :, :n])


def test_vae_batches_are_frames_of_the_cache(tmp_path, tiny_pipeline):
    data = PhantomDataset("lung", num_cases=2, num_frames=3, shape_ijk=(32, 32, 16))
    cache = build_frame_cache(data, tiny_pipeline, tmp_path / "frames", "k", "cycle", say=lambda s: None)
    a = draw_frame_batch(cache, seed=0, step=4, global_batch=4, rank=0, world=1, device=torch.device("cpu"))
    b = draw_frame_batch(cache, seed=0, step=4, global_batch=4, rank=0, world=1, device=torch.device("cpu"))
    assert a.frames.shape == (4, 1, 16, 32, 32) and torch.equal(a.frames, b.frames)
    pool = [np.asarray(cache.frames(i)[t], dtype=np.float32) for i in range(2) for t in range(3)]
    for x in a.frames[:, 0].numpy():
        assert any(np.array_equal(x, p) for p in pool)
