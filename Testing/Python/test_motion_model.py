"""Motion models (the ``motion`` family): anatomy grid, population motion, residual, warping, trainer.

A tiny model is trained by the real trainer (``training.motion``) on a few phantoms at a small
grid: what is tested is what a user relies on (frame 0 is the input, the motion is returned and
follows the anatomy, a zero residual is exactly the population motion, errors are clear), not
the quality of the weights (the README's evaluation tables measure that).
"""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from MoDiffLib import Cancelled, InputError, Volume
from MoDiffLib.motion.anatomy import anatomy_box
from MoDiffLib.motion_pipeline import MotionPipeline, build_motion_network
from MoDiffLib.phantom import make_phantom
from MoDiffLib.pipelines import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (48, 48, 24)
TINY = ["--cases", "12", "--basis-cases", "12", "--components", "6", "--phantom-shape", "32,32,16",
        "--phases", "20", "--steps", "15", "--val-cases", "1", "--workers", "1", "--threads", "1", "--batch", "4",
        "--width", "16", "--depth", "1", "--max-frames", "12", "--sampling-steps", "2"]


def train(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.motion", "--kind", "lung", "--out", str(out), *TINY, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("motion") / "run"
    result = train(out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def pipe(run_dir):
    return load_pipeline(run_dir / "model")


@pytest.fixture(scope="module")
def case():
    return make_phantom("lung", num_frames=6, seed=200003, shape_ijk=SHAPE)


def landmark_error(positions_of, case) -> float:
    errs = [np.linalg.norm(positions_of(track[0])[1:] - track[1:], axis=1).mean() for track in case.landmarks.values()]
    return float(np.mean(errs))


def test_trainer_writes_a_loadable_model_with_its_validation(run_dir, pipe):
    assert sorted(p.name for p in run_dir.iterdir()) == ["log.csv", "model", "validation.json"]
    report = json.loads((run_dir / "validation.json").read_text(encoding="utf-8"))
    assert {"population", "population+amplitude", "modiff", "modiff+amplitude", "modiff+trace"} <= set(report["field_rmse_mm"])
    assert isinstance(pipe, MotionPipeline) and pipe.config.family == "motion"
    assert pipe.config.training["cases"] == 12 and pipe.population.cases == 12


def test_trainer_refuses_bad_arguments_in_one_line(tmp_path):
    result = train(tmp_path / "bad", "--cases", "0")
    assert result.returncode == 2 and result.stderr.strip().startswith("motion: error: --cases must be at least 1")
    assert not (tmp_path / "bad").exists()


def test_zero_residual_is_exactly_the_population_motion(pipe, case):
    fresh = build_motion_network(pipe.config)  # the last layer starts at zero
    fresh.basis.load_state_dict(pipe.tddm.basis.state_dict())
    model = MotionPipeline(pipe.config, fresh, pipe.population)
    box, grid = model.anatomy(case.frames.frame(0))
    prompt = model.prompt(case.frames.frame(0), grid)
    with_net = model.fields_on_grid(prompt, 6, amplitude=20.0, samples=2, steps=2)
    alone = model.fields_on_grid(prompt, 6, amplitude=20.0, residual=False)
    np.testing.assert_allclose(with_net, np.repeat(alone, 2, axis=0), atol=1e-5)


def test_generate_moves_the_input_and_returns_its_motion(pipe, case):
    frame0 = case.frames.frame(0)
    result = pipe.generate(frame0, 6, amplitude=float(case.params["amplitude"]), samples=3, seed=1)
    seq, motion = result.sequence, result.motion
    assert seq.num_frames == 6 and seq.geometry == frame0.geometry
    np.testing.assert_array_equal(seq.frames[0], frame0.array)
    assert motion.geometry == frame0.geometry and motion.num_frames == 6
    assert result.spread.frames.shape == (6, *frame0.geometry.shape_kji) and float(result.spread.frames.max()) > 0
    assert result.provenance["family"] == "motion" and result.provenance["samples"] == 3
    # the motion is a motion: the lungs move (the diaphragm goes down on inhale) and landmarks follow it
    static = landmark_error(lambda p: np.repeat(p[None], 6, 0), case)
    assert landmark_error(lambda p: motion.positions(p)[:, 0], case) < 0.6 * static
    assert pipe.generate(frame0, 6, samples=1).spread is None


def test_lung_density_follows_the_volume_change(pipe, case):
    from MoDiffLib.motion import MotionFields, warp_input

    frame0 = case.frames.frame(0)
    _, grid = pipe.anatomy(frame0)
    u = pipe.fields_on_grid(pipe.prompt(frame0, grid), 6, amplitude=30.0, residual=False)[0]
    coarse = MotionFields(np.ascontiguousarray(u.transpose(0, 2, 3, 4, 1)), grid, {})
    frames, fine = warp_input(frame0, coarse, mass_conservation=True)
    plain, _ = warp_input(frame0, coarse, mass_conservation=False)
    lungs = (case.labels.frames[0] == 2) | (case.labels.frames[0] == 3)
    inhale = int(np.argmax([fine.jacobian_determinant(t)[lungs].mean() for t in range(6)]))
    assert fine.jacobian_determinant(inhale)[lungs].mean() > 1.02
    # inhaled parenchyma is darker than the same motion without mass conservation; tissue keeps its value
    parenchyma = (plain[inhale] < -700.0) & (plain[inhale] > -950.0)  # not the air around the body
    soft = plain[inhale] > -200.0
    assert np.median(plain[inhale][parenchyma] - frames[inhale][parenchyma]) > 3.0
    np.testing.assert_array_equal(frames[inhale][soft], plain[inhale][soft])
    # and generate does exactly this for CT
    np.testing.assert_array_equal(pipe.generate(frame0, 6, amplitude=30.0, residual=False).sequence.frames, frames)


def test_anatomy_grid_follows_a_shifted_patient(pipe, case):
    frame0 = case.frames.frame(0)
    g = frame0.geometry
    shifted = Volume(frame0.array, type(g)(g.shape_kji, g.spacing, tuple(np.add(g.origin_ras, (20.0, -10.0, 15.0))),
                                           g.direction_ras), "shifted")
    a, b = anatomy_box(frame0, "CT"), anatomy_box(shifted, "CT")
    np.testing.assert_allclose(np.subtract(b.low_local, a.low_local), [-20.0, 10.0, 15.0], atol=1e-6)  # LPS axes
    f0 = pipe.generate(frame0, 4, residual=False).motion
    f1 = pipe.generate(shifted, 4, residual=False).motion
    np.testing.assert_allclose(f1.displacements, f0.displacements, atol=1e-4)


def test_bad_requests_fail_with_clear_errors(pipe, case):
    frame0 = case.frames.frame(0)
    with pytest.raises(InputError, match="transfer must be 'warp'"):
        pipe.generate(frame0, 4, transfer="difference")
    with pytest.raises(InputError, match="breathing trace must hold 4 finite values"):
        pipe.generate(frame0, 4, trace_mm=[0.0, 1.0, 2.0])
    with pytest.raises(InputError, match="samples must be an integer"):
        pipe.generate(frame0, 4, samples=0)
    with pytest.raises(InputError, match="outside the range"):
        pipe.generate(frame0, 4, amplitude=90.0)
    with pytest.raises(InputError, match="frame count"):
        pipe.generate(frame0, 13)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        pipe.generate(frame0, 4, cancel=cancel)


def test_evaluate_scores_motion_methods_through_their_own_fields(run_dir, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "MoDiffLib", "evaluate", "--data", "phantom:lung:1", "--model", str(run_dir / "model"),
         "--frames", "4", "--phantom-grid", "32,32,16", "--steps", "2", "--samples", "2", "--mean-motion-cases", "2",
         "--baselines", "static,mean-motion,mean-motion-aligned+amplitude,modiff,modiff+trace",
         "--registration-iterations", "10,0,0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    methods = report["cases"][0]["methods"]
    for name in ("mean-motion", "mean-motion-aligned+amplitude", "modiff", "modiff+trace"):
        assert methods[name]["available"], (name, methods[name]["skipped"])
        assert methods[name]["motion_estimation"]["method"] == "own fields"
        assert np.isfinite(methods[name]["summary"]["landmark_error_mm"])
    assert methods["static"]["motion_estimation"]["method"] != "own fields"
    # K = 2 samples are scored as a distribution too; a single motion's energy score is its error
    modiff = methods["modiff"]["summary"]
    assert np.isfinite(modiff["landmark_energy_score_mm"])
    assert modiff["landmark_energy_score_mm"] != pytest.approx(modiff["landmark_error_mm"])
    mean = methods["mean-motion"]["summary"]
    assert mean["landmark_energy_score_mm"] == pytest.approx(mean["landmark_error_mm"])
    assert methods["modiff+trace"]["provenance"]["trace"][0] == 0.0
    assert report["settings"]["samples"] == 2


def test_generate_command_writes_cine_motion_and_spread(run_dir, case, tmp_path):
    from MoDiffLib.io import read_sequence, write_volume
    from MoDiffLib.trace import write_trace

    write_volume(case.frames.frame(0), tmp_path / "frame0.nrrd")
    write_trace(tmp_path / "trace.csv", case.trace_mm)
    args = [sys.executable, "-m", "MoDiffLib", "generate", str(tmp_path / "frame0.nrrd"), "--frames", "6",
            "--model", str(run_dir / "model"), "--samples", "2", "--trace", str(tmp_path / "trace.csv"),
            "--motion-out", str(tmp_path / "motion.seq.nrrd"), "--spread-out", str(tmp_path / "spread.seq.nrrd"),
            "--progress", "none", "--out", str(tmp_path / "cine.seq.nrrd")]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    cine, motion, spread = (read_sequence(tmp_path / f"{n}.seq.nrrd") for n in ("cine", "motion", "spread"))
    assert cine.num_frames == motion.num_frames == spread.num_frames == 6
    assert motion.frames.shape[-1] == 3 and float(np.abs(motion.frames[0]).max()) == 0.0
    np.testing.assert_allclose(cine.frames[0], case.frames.frames[0], atol=1e-3)
    # a trace of the wrong length is refused before anything is written
    write_trace(tmp_path / "short.csv", case.trace_mm[:4])
    short = args[:9] + ["--trace", str(tmp_path / "short.csv"), "--progress", "none",
                        "--out", str(tmp_path / "third.seq.nrrd")]
    bad = subprocess.run(short, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("modiff: error:") and "6" in bad.stderr, bad.stderr
    assert not (tmp_path / "third.seq.nrrd").exists()


def test_trace_regression_follows_the_breathing_trace(pipe, case):
    frame0 = case.frames.frame(0)
    descent = case.trace_mm[0] - case.trace_mm
    assert pipe.population.has_trace  # the trainer fits it from the phantoms' true traces
    one = pipe.population.trace_fields(descent)
    np.testing.assert_allclose(pipe.population.trace_fields(2.0 * descent), 2.0 * one, atol=1e-4)  # linear in it
    assert float(np.abs(one[0]).max()) == 0.0
    traced = pipe.generate(frame0, 6, trace_mm=descent, residual=False)
    assert traced.provenance["residual"] is False and traced.provenance["trace"][0] == 0.0
    population = pipe.generate(frame0, 6, residual=False)
    err_trace = landmark_error(lambda p: traced.motion.positions(p)[:, 0], case)
    err_population = landmark_error(lambda p: population.motion.positions(p)[:, 0], case)
    assert err_trace < 0.7 * err_population, (err_trace, err_population)
    # a breath held at exhale (a flat trace) moves nothing
    still = pipe.generate(frame0, 6, trace_mm=np.zeros(6), residual=False)
    assert float(np.abs(still.motion.displacements).max()) < 1e-4


def test_an_input_unlike_the_training_data_is_reported(pipe, case):
    frame0 = case.frames.frame(0)
    typical = pipe.generate(frame0, 4, residual=False).provenance
    assert typical["typicality"]["distance"] <= typical["typicality"]["training_distance_max"] * 1.5
    assert typical["warnings"] == []
    # the same lungs in a body of bone: the anatomy is found, but nothing like it was ever trained on
    odd = frame0.array.copy()
    odd[odd > -400.0] = 1500.0
    strange = pipe.generate(Volume(odd, frame0.geometry, "odd"), 4, residual=False).provenance
    assert strange["warnings"] and "unlike the model's training inputs" in strange["warnings"][0]


def test_evaluate_on_a_moved_patient_keeps_the_scanner_mean_where_it_was(run_dir, tmp_path):
    out = tmp_path / "posed"
    result = subprocess.run(
        [sys.executable, "-m", "MoDiffLib", "evaluate", "--data", "phantom:lung:1", "--model", str(run_dir / "model"),
         "--frames", "4", "--phantom-grid", "32,32,16", "--mean-motion-cases", "2", "--pose", "shift=0,0,40;rotate=10",
         "--baselines", "static,mean-motion+amplitude,mean-motion-aligned+amplitude,mean-motion-aligned+trace",
         "--no-motion-metrics", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["pose"] == {"shift_mm": [0.0, 0.0, 40.0], "rotate_deg": 10.0, "crop": 1.0,
                                          "spacing_scale": 1.0}
    m = report["methods"]
    # fields are scored on their own, so landmarks are measured even without motion estimation;
    # the scanner-coordinate mean moves the wrong place, the anatomy-aligned one follows the patient
    assert m["mean-motion-aligned+amplitude"]["landmark_error_mm"] < 0.8 * m["mean-motion+amplitude"]["landmark_error_mm"]
    moved = report["cases"][0]["truth"]["landmark_displacement_mean_mm"]  # what no motion (static) scores
    assert m["mean-motion-aligned+trace"]["landmark_error_mm"] < 0.5 * moved


def test_a_ct_without_lungs_is_warned_about(pipe, case):
    frame0 = case.frames.frame(0)
    solid = frame0.array.copy()
    solid[(solid < -400.0) & (solid > -990.0)] = 40.0  # the lungs filled with soft tissue (air outside stays)
    warnings = pipe.generate(Volume(solid, frame0.geometry, "no lungs"), 4, residual=False).provenance["warnings"]
    assert any("no lungs were found" in w for w in warnings), warnings
    assert not any("no lungs" in w for w in pipe.generate(frame0, 4, residual=False).provenance["warnings"])


def test_evaluate_residual_off_scores_modiff_as_the_population_motion(run_dir, tmp_path):
    out = tmp_path / "off"
    result = subprocess.run(
        [sys.executable, "-m", "MoDiffLib", "evaluate", "--data", "phantom:lung:1", "--model", str(run_dir / "model"),
         "--frames", "4", "--phantom-grid", "32,32,16", "--residual", "off", "--no-motion-metrics",
         "--baselines", "mean-motion-aligned,modiff", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["settings"]["residual"] is False
    case = report["cases"][0]["methods"]
    assert case["modiff"]["provenance"]["residual"] is False and case["modiff"]["provenance"]["steps"] == 0
    assert case["modiff"]["summary"]["landmark_error_mm"] == case["mean-motion-aligned"]["summary"]["landmark_error_mm"]


def test_refit_adds_parts_and_keeps_the_network(run_dir, pipe, tmp_path):
    out = tmp_path / "refit"
    result = subprocess.run(
        [sys.executable, "-m", "training.motion_refit", "--model", str(run_dir / "model"), "--out", str(out),
         "--cases", "3", "--workers", "1", "--fit", "typicality", "--phantom-shape", "32,32,16;40,40,20"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    refit = load_pipeline(out)
    assert refit.typicality is not None and refit.typicality.cases == 3
    assert refit.config.training["refit"]["fitted"] == ["typicality"]
    for name, value in pipe.tddm.state_dict().items():
        assert torch.equal(value, refit.tddm.state_dict()[name]), name
    np.testing.assert_array_equal(refit.population.trace_basis, pipe.population.trace_basis)  # not refitted
    bad = subprocess.run([sys.executable, "-m", "training.motion_refit", "--model", str(run_dir / "model"),
                          "--out", str(tmp_path / "bad"), "--fit", "everything"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("motion_refit: error: --fit takes")
    assert not (tmp_path / "bad").exists()


def test_population_on_a_finer_grid_than_the_network(run_dir, pipe, case, tmp_path):
    """``--fit population --population-shape``: the motion comes on the finer grid, the residual
    (network grid) is interpolated onto it, the checkpoint stores the pattern factored, the network stays."""
    fine = (pipe.config.grid.shape_kji[0], 2 * pipe.config.grid.shape_kji[1], 2 * pipe.config.grid.shape_kji[2])
    out = tmp_path / "fine"
    result = subprocess.run(
        [sys.executable, "-m", "training.motion_refit", "--model", str(run_dir / "model"), "--out", str(out),
         "--cases", "4", "--workers", "1", "--fit", "population", "--population-shape", ",".join(map(str, fine)),
         "--phantom-shape", "32,32,16"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    refit = load_pipeline(out)
    assert refit.population.grid_shape == fine and refit.config.motion["population_shape_kji"] == list(fine)
    assert refit.population.has_trace and refit.population.cases == 4  # lung: the trace regression comes along
    for name, value in pipe.tddm.state_dict().items():
        assert torch.equal(value, refit.tddm.state_dict()[name]), name
    frame0 = case.frames.frame(0)
    box, grid = refit.anatomy(frame0)
    prompt = refit.prompt(frame0, grid)
    with_net = refit.fields_on_grid(prompt, 6, amplitude=20.0, samples=2, steps=2, seed=3)
    alone = refit.fields_on_grid(prompt, 6, amplitude=20.0, residual=False)
    assert with_net.shape == (2, 6, 3, *fine) and alone.shape == (1, 6, 3, *fine)
    coarse = pipe.fields_on_grid(prompt, 6, amplitude=20.0, samples=2, steps=2, seed=3) - pipe.fields_on_grid(
        prompt, 6, amplitude=20.0, residual=False)
    residual = with_net - alone
    # the same residual, interpolated: its mean over the fine grid is the coarse one's (edges-aligned 2x)
    np.testing.assert_allclose(residual.mean(axis=(-1, -2, -3)), coarse.mean(axis=(-1, -2, -3)), atol=1e-4)
    result = refit.generate(frame0, 6, amplitude=20.0)
    assert result.motion.geometry == frame0.geometry and result.motion.num_frames == 6
    # a config naming a grid the tensors do not have is refused, in one line
    bad = dict(refit.config.to_dict())
    bad["motion"] = {**bad["motion"], "population_shape_kji": [3, 4, 5]}
    from MoDiffLib.models.config import ModelConfig
    with pytest.raises(InputError, match="population motion grid"):
        MotionPipeline(ModelConfig.from_dict(bad), refit.tddm, refit.population)


def test_population_checkpoint_factored_storage_is_faithful(pipe):
    from MoDiffLib.motion.population import from_low_rank, low_rank_phases

    t0, t1, modes = low_rank_phases(pipe.population, tol_mm=0.01)
    b0, b1 = from_low_rank(t0, t1, modes)
    assert modes.shape[0] <= 2 * pipe.population.num_phases
    assert np.abs(b0 - pipe.population.b0).max() <= 0.011
    scale = abs(pipe.population.amplitude_mean)
    assert np.abs(scale * (b1 - pipe.population.b1)).max() <= 0.011
