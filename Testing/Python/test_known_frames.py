"""Two-frame and partial modes (issue 14 items 1-2): a cine through frames the user has.

Library (:mod:`MoDiffLib.motion.known_frames`, ``MotionPipeline.generate(known=..., end=...)``) and
the command (``modiff generate --known / --end``). The given frames must come back exactly, the
motion must pass through them, and the frames between must be closer to the truth than the model
alone; bad inputs stop with one line before any work.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from MoDiffLib import Volume
from MoDiffLib.errors import InputError
from MoDiffLib.evaluation.landmarks import landmark_error_table, mean_over
from MoDiffLib.io import read_sequence, write_volume
from MoDiffLib.motion.known_frames import at_phases, mixing_weights, registered_strength, through_known, working_grid
from MoDiffLib.volume import Geometry

SHAPE = (64, 64, 32)
N = 10


@pytest.fixture(scope="module")
def case():
    from MoDiffLib.datasets import PHANTOM_SEEDS
    from MoDiffLib.phantom import make_phantom

    return make_phantom("lung", num_frames=N, seed=PHANTOM_SEEDS["test"].start + 2, shape_ijk=SHAPE)


@pytest.fixture(scope="module")
def pipe():
    from MoDiffLib.pipelines import load_pipeline

    return load_pipeline(None, kind="lung")


def frame(case, t):
    return Volume(case.frames.frames[t], case.frames.geometry, f"frame {t}")


def landmark_error(case, fields, frames):
    _, table = landmark_error_table(fields, case.landmarks)
    return mean_over(table, frames)


@pytest.fixture(scope="module")
def alone(pipe, case):
    return pipe.generate(frame(case, 0), N, seed=0, device="cpu")


@pytest.fixture(scope="module")
def partial(pipe, case):
    return pipe.generate(frame(case, 0), N, seed=0, device="cpu", known={3: frame(case, 3), 6: frame(case, 6)})


def test_partial_keeps_the_given_frames_and_fills_the_rest_closer_to_the_truth(case, alone, partial):
    frames = partial.sequence.frames
    for t in (3, 6):
        np.testing.assert_array_equal(frames[t], case.frames.frames[t])  # the user's data, exactly
    np.testing.assert_array_equal(frames[0], case.frames.frames[0])
    assert frames.dtype == case.frames.frames.dtype
    others = [t for t in range(1, N) if t not in (3, 6)]
    model_only = landmark_error(case, alone.motion, others)
    filled = landmark_error(case, partial.motion, others)
    assert filled < 0.85 * model_only, (filled, model_only)
    # the motion passes through the given frames: their landmarks land close to the truth there
    assert landmark_error(case, partial.motion, [3, 6]) < 1.5
    info = partial.provenance["given_frames"]
    assert info["mode"] == "partial" and info["given_frames"] == [3, 6]
    assert partial.spread is None  # the samples' spread is not that of the conditioned motion


def test_end_frame_ends_the_cine_and_the_frames_between_move_towards_it(pipe, case):
    key = int(np.argmax([np.abs(case.motion.frames[t]).mean() for t in range(N)]))
    end = frame(case, key)
    result = pipe.generate(frame(case, 0), key + 1, seed=0, device="cpu", end=end)
    np.testing.assert_array_equal(result.sequence.frames[-1], end.array)
    info = result.provenance["given_frames"]
    assert info["mode"] == "two-frame" and 0.0 < info["end_phase"] < 1.0
    # the displacement grows from frame 0 to the end frame (a breath in, not a whole cycle)
    size = [float(np.abs(d).mean()) for d in result.motion.displacements]
    assert size[0] == 0.0 and size[-1] == max(size)
    assert size[-1] > 0.5 * float(np.abs(case.motion.frames[key]).mean())


@pytest.mark.parametrize("known, end, message", [
    ({0: "f0"}, None, "frame 0 is the input"),
    ({N: "f3"}, None, f"outside the cine's frames 1 to {N - 1}"),
    ({2.5: "f3"}, None, "not a whole number"),
    ({3: "other grid"}, None, "not on the grid"),
    ({3: "f3"}, "f6", "not both"),
    ({}, None, "at least one known frame"),
])
def test_bad_given_frames_are_one_clear_error(pipe, case, known, end, message):
    def volume(name):
        if name == "other grid":
            g = case.frames.geometry
            return Volume(case.frames.frames[3][:, :, :-2], Geometry(g.shape_kji[:2] + (g.shape_kji[2] - 2,), g.spacing,
                                                                       g.origin_ras, g.direction_ras), name)
        return frame(case, int(name[1:]))

    with pytest.raises(InputError, match=message):
        pipe.generate(frame(case, 0), N, device="cpu", known={t: volume(v) for t, v in known.items()},
                      end=None if end is None else volume(end))


def test_end_frame_does_not_combine_with_a_trace(pipe, case):
    with pytest.raises(InputError, match="trace"):
        pipe.generate(frame(case, 0), N, device="cpu", end=frame(case, 5), trace_mm=np.linspace(0, 10, N))


def test_working_grid_keeps_the_box_and_caps_the_voxels():
    big = Geometry((300, 512, 512), (0.7, 0.7, 1.0), (-180.0, -180.0, -150.0), np.diag([-1.0, -1.0, 1.0]))
    work = working_grid(big)
    assert np.prod(work.shape_kji) <= 2_000_000
    # same physical extent: the outer corners of the voxel boxes coincide
    corner = np.array([-0.5, -0.5, -0.5])
    np.testing.assert_allclose(big.ijk_to_ras_points(corner), work.ijk_to_ras_points(corner), atol=1e-6)
    far_big = big.ijk_to_ras_points(np.array(big.shape_kji[::-1], float) - 0.5)
    far_work = work.ijk_to_ras_points(np.array(work.shape_kji[::-1], float) - 0.5)
    np.testing.assert_allclose(far_big, far_work, atol=1e-3 + max(work.spacing))
    small = Geometry((32, 64, 64), (2.0, 2.0, 4.0), (0.0, 0.0, 0.0), np.eye(3))
    assert working_grid(small) is small


def test_through_known_reproduces_a_motion_the_model_spans():
    rng = np.random.default_rng(0)
    pattern = rng.normal(size=(4, 5, 6, 3)).astype(np.float32)
    course = np.sin(np.linspace(0, np.pi, N, endpoint=False)) ** 2  # not linear in time
    model = course[:, None, None, None, None].astype(np.float32) * pattern
    truth = 1.7 * model  # the same time course, a deeper breath
    assert registered_strength(model, {4: truth[4]}) == pytest.approx(1.7, rel=1e-5)
    out = through_known(model, {4: truth[4]})
    np.testing.assert_allclose(out, truth, atol=1e-4)  # exact where the model's time course is right
    # a registration that saw only the frame's pattern, not its depth: the model's pattern at the
    # registered strength pulls the frames between towards the model
    noisy = truth[4] + rng.normal(scale=0.5, size=truth[4].shape).astype(np.float32)
    plain = through_known(model, {4: noisy}, pattern_weight=0.0)
    blended = through_known(model, {4: noisy})
    assert np.abs(blended[2] - truth[2]).mean() < np.abs(plain[2] - truth[2]).mean()
    w = mixing_weights(model, [3, 6])
    np.testing.assert_array_equal(w[3], [1.0, 0.0])
    np.testing.assert_array_equal(w[0], [0.0, 0.0])
    cycle = at_phases(model, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(cycle[0], model[0])
    np.testing.assert_allclose(cycle[1], model[N // 2])
    np.testing.assert_allclose(cycle[2], model[0])  # periodic: the cycle returns to frame 0


def modiff(*args):
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_cli_known_frames_kept_exactly(tmp_path, case):
    for t in (0, 4):
        write_volume(frame(case, t), tmp_path / f"f{t}.nrrd")
    out = tmp_path / "cine.seq.nrrd"
    r = modiff("generate", tmp_path / "f0.nrrd", "--frames", 8, "--known", f"4:{tmp_path / 'f4.nrrd'}",
               "--out", out, "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    stages = [e["stage"] for e in events if e["event"] == "progress"]
    assert "motion" in stages and stages.index("motion") < stages.index("warp")
    done = events[-1]
    assert done["event"] == "done" and done["provenance"]["given_frames"]["given_frames"] == [4]
    cine = read_sequence(out)
    assert cine.num_frames == 8
    np.testing.assert_array_equal(cine.frames[4], case.frames.frames[4])


@pytest.mark.parametrize("args, message", [
    (["--known", "3"], "not INDEX:FILE"),
    (["--known", "12:{f}"], "outside frames 1 to 7"),
    (["--known", "3:{f},3:{f}"], "frame 3 twice"),
    (["--known", "3:missing.nrrd"], "does not exist"),
    (["--known", "3:{f}", "--end", "{f}"], "not both"),
    (["--end", "missing.nrrd"], "does not exist"),
])
def test_cli_bad_given_frames_stop_before_any_work(tmp_path, case, args, message):
    write_volume(frame(case, 0), tmp_path / "f0.nrrd")
    args = [a.replace("{f}", str(tmp_path / "f0.nrrd")) for a in args]
    out = tmp_path / "cine.seq.nrrd"
    r = modiff("generate", tmp_path / "f0.nrrd", "--frames", 8, *args, "--out", out)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("modiff: error:")]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "using model" not in r.stderr  # refused before the model was chosen or loaded
    assert not out.exists()


def test_fit_on_line_finds_the_strength_a_frame_moved_by_from_the_images():
    """The image-fitted strength (MR path) recovers where on a line of motions a frame lies."""
    from scipy import ndimage

    from MoDiffLib.motion.fields import MotionFields
    from MoDiffLib.motion.known_frames import fit_on_line
    from MoDiffLib.motion.transfer import warp_input

    grid = Geometry((16, 48, 48), (1.5, 1.5, 8.0))
    rng = np.random.default_rng(4)
    image = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.shape_kji), (0.5, 2.0, 2.0)).astype(np.float32)
    low = np.zeros((3,) + grid.shape_kji + (3,), np.float32)
    low[1] = ndimage.gaussian_filter(rng.normal(0.0, 1.0, grid.shape_kji + (3,)), (1, 6, 6, 0)) * 20.0
    low[1, ..., 2] = 0.0  # in-plane motion, as a short-axis stack shows it
    low[2] = 0.5 * low[1]
    high = 3.0 * low  # the strength scales this pattern (a line whose low end moves too)
    for fraction in (0.2, 0.7):
        truth = low + fraction * (high - low)
        moved, _ = warp_input(Volume(image, grid, "f0"), MotionFields(truth, grid, {}))
        assert abs(fit_on_line(image, {1: moved[1]}, low, high, grid) - fraction) < 0.04
        assert abs(fit_on_line(image, {1: moved[1], 2: moved[2]}, low, high, grid) - fraction) < 0.04


@pytest.fixture(scope="module")
def cardiac_case():
    from MoDiffLib.datasets import PHANTOM_SEEDS
    from MoDiffLib.phantom import make_phantom

    return make_phantom("cardiac", num_frames=N, seed=PHANTOM_SEEDS["test"].start + 3)


def test_cine_mr_frames_set_the_ef_of_the_motion_and_beat_the_model_alone(cardiac_case):
    """MR path: no registration; the EF the given frames show, fitted by the images, moves the heart."""
    from MoDiffLib.pipelines import load_pipeline

    pipe = load_pipeline(None, kind="cardiac")
    case = cardiac_case
    alone = pipe.generate(frame(case, 0), N, seed=0, device="cpu")
    partial = pipe.generate(frame(case, 0), N, seed=0, device="cpu", known={3: frame(case, 3), 6: frame(case, 6)})
    for t in (3, 6):
        np.testing.assert_array_equal(partial.sequence.frames[t], case.frames.frames[t])
    info = partial.provenance["given_frames"]
    assert info["method"] == "image-fitted strength" and info["registration_seconds"] is None
    fitted = float(info["fitted_strength"].split()[0])
    true_ef = float(case.params["amplitude"])
    alone_ef = float(alone.provenance["amplitude_used"])
    assert float(partial.provenance["amplitude_used"]) == pytest.approx(fitted, abs=0.06)
    # the fitted EF lies nearer the case's own EF than the population's does
    assert abs(fitted - true_ef) < abs(alone_ef - true_ef), (fitted, true_ef, alone_ef)
    others = [t for t in range(1, N) if t not in (3, 6)]
    assert landmark_error(case, partial.motion, others) < 0.85 * landmark_error(case, alone.motion, others)
    # the two-frame mode of the same case finds the end frame's phase by the images
    key = int(np.argmax([np.abs(case.motion.frames[t]).mean() for t in range(N)]))
    two = pipe.generate(frame(case, 0), key + 1, seed=0, device="cpu", end=frame(case, key))
    np.testing.assert_array_equal(two.sequence.frames[-1], case.frames.frames[key])
    size = [float(np.abs(d).mean()) for d in two.motion.displacements]
    assert size[-1] == max(size) and size[-1] > 0.5 * float(np.abs(case.motion.frames[key]).mean())
