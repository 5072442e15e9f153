"""``modiff evaluate``: report schema, baselines that behave like the motion they model, physiology, bad inputs.

Runs on a tiny untrained model (saved to a temporary folder and passed as --model) and on held-out
phantoms at a reduced grid, so the whole file stays small. What is tested is the harness: the
metrics of the untrained model itself mean nothing.
"""

import contextlib
import dataclasses
import io
import json
import math

import numpy as np
import pytest
import torch

from MoDiffLib import cli
from MoDiffLib.datasets import PHANTOM_SEEDS, PhantomDataset
from MoDiffLib.evaluation import METHODS, MeanMotion, cycle_fractions, evaluate_case, parse_methods
from MoDiffLib.evaluation import physiology as phys
from MoDiffLib.evaluation.baselines import linear_interp_cine
from MoDiffLib.evaluation.perceptual import perceptual_status
from MoDiffLib.errors import InputError
from MoDiffLib.metrics import psnr
from MoDiffLib.motion import MotionFields
from MoDiffLib.models.config import GridConfig, VAEConfig, default_config
from MoDiffLib.phantom import make_phantom
from MoDiffLib.pipeline import MoDiffPipeline
from MoDiffLib.preprocess import IntensityWindow
from MoDiffLib.volume import Volume

GRID = (32, 32, 16)
FRAMES = 4
TINY_NET = {"channels": [8, 16], "down_factors": [[1, 2, 2]], "attention_levels": [False, True],
            "emb_channels": 32, "num_groups": 4, "num_heads": 2}
LUNG_WINDOW = IntensityWindow(-1000.0, 600.0)  # the lung model's recipe (default_config)


def tiny_config(kind: str = "lung", **changes):
    return dataclasses.replace(
        default_config(kind),
        grid=GridConfig(shape_kji=(8, 16, 16), spacing_ijk_mm=(8.0, 8.0, 12.0)),
        vae=VAEConfig(latent_channels=4, down_factors=((1, 2, 2),), channels=(8, 8), num_res_blocks=(0, 1),
                      norm_num_groups=4),
        tddm=dict(TINY_NET), i2v={**TINY_NET, "fal_levels": [1]}, max_frames=6, sampling_steps=3, **changes)


def modiff(*args: str) -> tuple[int, str]:
    """Run the command line in-process; (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def lung_model(tmp_path_factory):
    torch.manual_seed(0)
    return str(MoDiffPipeline.from_config(tiny_config("lung")).save_pretrained(tmp_path_factory.mktemp("m") / "tiny-lung"))


@pytest.fixture(scope="module")
def lung_run(lung_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    rc, err = modiff("evaluate", "--data", "phantom:lung:2", "--model", lung_model, "--frames", str(FRAMES),
                     "--steps", "2", "--phantom-grid", ",".join(map(str, GRID)),
                     "--registration-iterations", "20,0,0", "--paper-model", lung_model, "--out", str(out))
    assert rc == 0, err
    return out, json.loads((out / "report.json").read_text(encoding="utf-8")), err


def truth_case(seed: int):
    return make_phantom("lung", num_frames=FRAMES, seed=seed, shape_ijk=GRID)


# -- report ---------------------------------------------------------------------------------------------
def test_report_schema_method_names_and_outputs(lung_run, lung_model):
    out, report, err = lung_run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json", "report.md", "metrics_per_frame.png", "curves.png", "montage.png"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"
    assert tuple(report["methods"]) == METHODS == (
        "static", "mean-motion", "mean-motion+amplitude", "mean-motion-aligned", "mean-motion-aligned+amplitude",
        "mean-motion-aligned+trace", "modiff", "modiff-single", "modiff+amplitude", "modiff+trace", "modiff-paper", "modiff-paper+amplitude",
        "linear-interp", "registration-interp", "modiff-two-frame", "modiff-partial")
    assert report["data"] == "phantom:lung:2"
    # a latent (paper-variant) model has no population motion, samples or trace: those methods say so
    motion_only = ("mean-motion-aligned", "mean-motion-aligned+amplitude", "mean-motion-aligned+trace", "modiff-single",
                   "modiff+trace", "modiff-two-frame", "modiff-partial")
    for case in report["cases"]:
        for name in motion_only:
            assert "is not a motion model" in case["methods"][name]["skipped"]
    assert report["paper_model"]["family"] == "latent"
    for name, entry in report["methods"].items():
        assert entry["privileged_input"] is (name in ("linear-interp", "registration-interp", "modiff-two-frame",
                                                      "modiff-partial"))
        if name in motion_only:
            continue
        assert entry["cases"] == 2
        for key in ("psnr_db", "ssim", "nmse", "tce", "psnr_input_db", "landmark_error_mm", "lung_volume_error_ml",
                    "diaphragm_error_mm"):
            assert isinstance(entry[key], float) and math.isfinite(entry[key]), (name, key)
            assert isinstance(entry[f"{key}_std"], float) and entry[f"{key}_std"] >= 0.0
    model = report["model"]
    assert model["name"] == "modiff-lung" and model["version"] == "0.1.0" and model["source"] == lung_model
    assert model["provenance"]["model"] == "modiff-lung" and model["provenance"]["steps"] == 2
    # cases: held-out seeds, every method, every frame but frame 0
    assert [c["info"]["seed"] for c in report["cases"]] == list(PHANTOM_SEEDS["test"][:2])
    for case in report["cases"]:
        assert tuple(case["methods"]) == METHODS
        for entry in case["methods"].values():
            if not entry["available"]:
                continue
            assert [f["frame"] for f in entry["per_frame"]] == [1, 2, 3]
            assert isinstance(entry["physiology_flags"], list)
        assert case["methods"]["static"]["physiology_flags"] == []  # no motion is not wrong motion for a lung
        assert case["truth"]["physiology_flags"] == [] and case["truth"]["inhale_frame"] in (1, 2, 3)
    for name, entry in report["methods"].items():
        if name in motion_only:
            continue
        flagged = sum(1 for c in report["cases"] if c["methods"][name]["physiology_flags"])
        assert entry["physiology_flagged_cases"] == flagged
        assert set(entry["physiology_flags"]) >= {"diaphragm_up_on_inhale", "intensity_drift"}
    # LPIPS and FVD are listed with the reason they are missing
    assert set(report["unavailable"]) == {"lpips", "fvd"}
    assert report["unavailable"] == perceptual_status()
    for reason in report["unavailable"].values():
        assert "not available offline" in reason or "not computed" in reason
    md = (out / "report.md").read_text(encoding="utf-8")
    for name in METHODS:
        assert f"| {name}" in md
    assert "| nan" not in md  # no table of unmeasured values
    assert "±" in md and "LPIPS" in md and "FVD" in md and "non-physiological (cases)" in md
    # progress per case and method on stderr
    assert "case 1/2" in err and "case 2/2" in err and "registration-interp" in err


def test_static_tce_is_the_true_temporal_change_and_frame0_is_not_scored(lung_run):
    _, report, _ = lung_run
    for case in report["cases"]:
        truth = LUNG_WINDOW.normalise(truth_case(case["info"]["seed"]).frames.frames)
        change = float(np.mean(np.abs(np.diff(truth, axis=0))))
        static = case["methods"]["static"]
        assert static["summary"]["tce"] == pytest.approx(change, rel=1e-6)
        assert case["truth"]["temporal_change"] == pytest.approx(change, rel=1e-6)
        # frame 0 (identical for every method: PSNR would be infinite) is not among the scored frames
        assert static["scored_frames"] == [1, 2, 3]
        assert math.isfinite(static["summary"]["psnr_db"])
        expected = np.mean([psnr(truth[0], truth[t], 2.0) for t in (1, 2, 3)])
        assert static["summary"]["psnr_db"] == pytest.approx(expected, rel=1e-9)


def test_static_landmark_error_is_the_true_landmark_displacement(lung_run):
    _, report, _ = lung_run
    for case in report["cases"]:
        phantom = truth_case(case["info"]["seed"])
        geometry = phantom.frames.geometry
        moves = [np.linalg.norm(track[1:] - track[0], axis=1) for track in phantom.landmarks.values()
                 if geometry.contains_ras(track[0])]
        assert len(moves) >= 3
        expected = float(np.mean(np.concatenate(moves)))
        assert expected > 1.0
        assert case["methods"]["static"]["summary"]["landmark_error_mm"] == pytest.approx(expected, rel=1e-6)


def test_mean_motion_with_true_amplitude_beats_static_and_the_reversed_warp_does_not(lung_run):
    _, report, _ = lung_run
    mm, static = report["methods"]["mean-motion+amplitude"], report["methods"]["static"]
    assert mm["psnr_db"] > static["psnr_db"] + 0.5
    assert mm["landmark_error_mm"] < static["landmark_error_mm"]
    pattern = MeanMotion.from_training_phantoms("lung", FRAMES, GRID, 0.0)
    assert set(pattern.seeds) <= set(PHANTOM_SEEDS["train"])
    for case in report["cases"]:
        entry = case["methods"]["mean-motion+amplitude"]
        assert entry["summary"]["psnr_db"] > case["methods"]["static"]["summary"]["psnr_db"]
        phantom = truth_case(case["info"]["seed"])
        assert entry["amplitude"] == pytest.approx(phantom.params["amplitude"])
        truth = LUNG_WINDOW.normalise(phantom.frames.frames)
        frame0 = phantom.frames.frame(0)

        def score(cine):
            c = LUNG_WINDOW.normalise(cine.frames)
            return float(np.mean([psnr(c[t], truth[t], 2.0) for t in (1, 2, 3)]))

        right = score(pattern.cine(frame0, phantom.params["amplitude"]))
        assert right == pytest.approx(entry["summary"]["psnr_db"], rel=1e-4)  # the report scores this cine
        # the same pattern warped the wrong way round moves the anatomy against the truth
        wrong = dataclasses.replace(pattern, intercept=-pattern.intercept, slope=-pattern.slope).cine(
            frame0, phantom.params["amplitude"])
        assert score(wrong) < case["methods"]["static"]["summary"]["psnr_db"] < right


def test_registration_interp_uses_the_privileged_key_frame(lung_run):
    _, report, _ = lung_run
    assert report["methods"]["registration-interp"]["privileged_input"] is True
    for case in report["cases"]:
        phantom = truth_case(case["info"]["seed"])
        motion = np.linalg.norm(phantom.motion.frames, axis=-1).mean(axis=(1, 2, 3))
        key = int(np.argmax(motion))
        assert case["key_frame"] == key
        reg = case["methods"]["registration-interp"]
        assert reg["key_frame"] == key and key not in reg["scored_frames"]
        static = case["methods"]["static"]
        # at the frame of largest motion the registered warp is far closer to the truth than no motion
        at_key = {m: next(f for f in case["methods"][m]["per_frame"] if f["frame"] == key) for m in ("static", "registration-interp")}
        assert at_key["registration-interp"]["psnr_db"] > at_key["static"]["psnr_db"] + 2.0
        assert at_key["registration-interp"]["landmark_error_mm"] < at_key["static"]["landmark_error_mm"]
        assert reg["summary"]["landmark_error_mm"] < static["summary"]["landmark_error_mm"]
        # the key frame is given to linear-interp verbatim
        lin = next(f for f in case["methods"]["linear-interp"]["per_frame"] if f["frame"] == key)
        assert lin["psnr_db"] is None and lin["nmse"] == 0.0 and not lin["scored"]


def test_cycle_fractions_and_linear_interpolation():
    np.testing.assert_allclose(cycle_fractions(4, 2), [0.0, 0.5, 1.0, 0.5])
    f = cycle_fractions(10, 4)
    assert f[0] == 0.0 and f[4] == 1.0 and np.all(np.diff(f[:5]) > 0) and np.all(np.diff(f[4:]) < 0)
    np.testing.assert_allclose(cycle_fractions(5, 4), np.sin(np.pi / 2 * np.arange(5) / 4) ** 2)  # half cycle
    with pytest.raises(InputError):
        cycle_fractions(4, 0)
    a0 = np.zeros((4, 5, 6), np.float32)
    ak = np.full((4, 5, 6), 8.0, np.float32)
    cine = linear_interp_cine(Volume.from_array(a0), ak, 2, 4)
    np.testing.assert_allclose(cine.frames[:, 0, 0, 0], [0.0, 4.0, 8.0, 4.0])


def test_parse_methods():
    assert parse_methods(None) == list(METHODS) == parse_methods("all")
    assert parse_methods("registration-interp, static") == ["static", "registration-interp"]
    with pytest.raises(InputError, match="'bogus'"):
        parse_methods("static,bogus")


# -- physiology -----------------------------------------------------------------------------------------
def test_lung_volume_and_diaphragm_follow_the_breathing_amplitude():
    curves = {}
    for amplitude in (10.0, 30.0):
        case = make_phantom("lung", num_frames=5, seed=PHANTOM_SEEDS["test"][0], shape_ijk=(64, 64, 32),
                            amplitude=amplitude)
        masks = phys.label_masks(case.labels, phys.lung_label_values(case.label_names), 5)
        curves[amplitude] = phys.lung_curves(masks, case.frames.geometry, phys.dome_columns(masks[0], case.frames.geometry))
        inhale = int(np.argmin(np.abs(np.asarray(case.params["frame_phases"]) - case.params["inhale_fraction"])))
        volume = curves[amplitude]["lung_volume_ml"]
        assert volume[inhale] == max(volume) and volume[inhale] > volume[0] + 100.0  # inhale > exhale
        diaphragm = curves[amplitude]["diaphragm_si_mm"]
        assert diaphragm[inhale] == min(diaphragm)  # the diaphragm descends on inhale
        assert phys.excursion(diaphragm) == pytest.approx(amplitude, rel=0.15)
        # the curves of a cine measured through its motion (here the true motion) follow the labelled truth
        fields = MotionFields(case.motion.frames, case.frames.geometry, {})
        columns = phys.dome_columns(masks[0], case.frames.geometry)
        assert phys.dome_boundary_points(masks[0], case.frames.geometry, columns)[:, 2].mean() == pytest.approx(diaphragm[0])
        np.testing.assert_allclose(phys.jacobian_volumes_ml(fields, masks[0], range(5)), volume, rtol=0.02)
        carried = phys.carried_diaphragm_mm(fields, masks[0], columns, range(5))
        assert carried[0] == pytest.approx(diaphragm[0]) and carried[inhale] == min(carried)
        # material points of the dome vs the boundary in fixed columns: within 15 % of the excursion
        assert phys.excursion(carried) == pytest.approx(amplitude, rel=0.15)
    gain = {a: max(c["lung_volume_ml"]) - c["lung_volume_ml"][0] for a, c in curves.items()}
    assert 2.0 < gain[30.0] / gain[10.0] < 4.0


def test_ejection_fraction_of_the_true_cardiac_cine_matches_the_phantom():
    for seed in PHANTOM_SEEDS["test"][:2]:
        case = make_phantom("cardiac", num_frames=12, seed=seed, shape_ijk=(64, 64, 16))
        masks = phys.label_masks(case.labels, phys.lv_label_values(case.label_names), 12)
        ef = phys.ejection_fraction(phys.cardiac_curves(masks, case.frames.geometry)["lv_volume_ml"])
        assert ef == pytest.approx(case.params["amplitude"], rel=0.03)


def test_cardiac_case_lv_metrics_and_a_model_without_amplitude_condition():
    torch.manual_seed(0)
    pipeline = MoDiffPipeline.from_config(tiny_config("cardiac", amplitude=None))
    case = PhantomDataset("cardiac", "test", num_cases=1, num_frames=FRAMES, shape_ijk=(32, 32, 8))[0]
    result = evaluate_case(pipeline, case, ["static", "modiff+amplitude"])
    skipped = result["methods"]["modiff+amplitude"]
    assert skipped["available"] is False and "no motion-strength condition" in skipped["skipped"]
    assert all(v is None for v in skipped["summary"].values())
    static = result["methods"]["static"]["summary"]
    lv = [int(np.count_nonzero(f == 3)) * np.prod(case.frames.geometry.spacing) / 1000.0
          for f in case.labels.frames]  # label 3 = LV blood pool
    assert result["truth"]["curves"]["labels"]["lv_volume_ml"] == pytest.approx(lv)
    assert static["lv_volume_error_ml"] == pytest.approx(np.mean([abs(v - lv[0]) for v in lv[1:]]))
    es = 1 + int(np.argmin(lv[1:]))
    true_ef = 100.0 * (lv[0] - lv[es]) / lv[0]  # signed, ED = frame 0, ES = the true minimum
    truth = result["truth"]
    assert truth["es_frame"] == es and truth["ef_pct"] == pytest.approx(true_ef)
    assert truth["edv_ml"] == pytest.approx(lv[0]) and truth["esv_ml"] == pytest.approx(lv[es])
    assert truth["physiology_flags"] == []
    assert true_ef > 10.0 and static["ef_error_pct"] == pytest.approx(true_ef)  # no motion: EF 0
    assert static["ef_pct"] == pytest.approx(0.0, abs=1e-6) and static["edv_ml"] == pytest.approx(lv[0])
    assert static["esv_ml"] == pytest.approx(lv[0])
    # a static heart does not contract: flagged (V_ES >= V_ED); it does not drift either
    assert result["methods"]["static"]["physiology_flags"] == ["lv_no_contraction"]
    assert "lung_volume_error_ml" not in static
    # the true motion scored through its own fields: its EF is the floor of every field method, and a
    # field method's EF is also compared with it (ef_error_field_pct)
    true_motion = result["reference"]["true_motion"]["summary"]
    assert truth["ef_true_motion_pct"] == pytest.approx(true_motion["ef_pct"])
    assert true_motion["ef_error_field_pct"] == pytest.approx(0.0, abs=1e-9)
    assert true_motion["ef_error_pct"] == pytest.approx(abs(true_motion["ef_pct"] - true_ef))
    assert true_motion["landmark_error_mm"] < 0.2 * static["landmark_error_mm"]  # exact up to grid sampling
    assert static["ef_error_field_pct"] == pytest.approx(truth["ef_true_motion_pct"])


# -- other data and bad input -------------------------------------------------------------------------------
def test_folder_data_keeps_every_frame_and_mean_motion_is_unavailable(lung_model, tmp_path):
    from MoDiffLib.io import write_sequence

    data = tmp_path / "cines"
    data.mkdir()
    write_sequence(make_phantom("lung", num_frames=6, seed=PHANTOM_SEEDS["test"][5], shape_ijk=GRID).frames,
                   data / "patient1.seq.nrrd")
    out = tmp_path / "out"
    rc, err = modiff("evaluate", "--data", f"folder:{data}", "--model", lung_model, "--frames", "4",
                     "--baselines", "static,mean-motion,linear-interp", "--out", str(out))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert tuple(report["methods"]) == ("static", "mean-motion", "linear-interp")
    assert report["methods"]["mean-motion"]["cases"] == 0
    assert "only defined for phantom data" in report["methods"]["mean-motion"]["skipped"]
    case = report["cases"][0]
    # --frames 4 is what the model would generate per cycle; all 6 true frames are scored, none dropped
    assert case["info"]["frames"] == 6 and case["key_frame_rule"].startswith("largest mean absolute intensity")
    assert [r["phase"] for r in case["info"]["frames_compared"]] == pytest.approx([t / 6 for t in range(6)], abs=1e-6)
    assert report["settings"]["model_frames"] == 4
    static = report["methods"]["static"]
    assert static["landmark_error_mm"] is None  # no landmarks in a plain 4D file
    assert static["lung_volume_threshold_error_ml"] > 0.0  # CT: the -400 HU lung curve needs no labels


@pytest.mark.parametrize("args, message", [
    (["--baselines", "static,bogus"], "unknown method"),
    (["--data", "phantom:lung:0"], "positive whole number"),
    (["--data", "EMPTY"], "no 4D files"),
    (["--frames", "7"], "out of range"),
    (["--frames", "1"], "at least 2"),
    (["--steps", "0"], "--steps"),
    (["--data", "phantom:lung:2:train"], "training phantoms"),
    (["--data", "phantom:cardiac:1"], "lung model"),
    (["--data", "EMPTY", "--phantom-grid", "8,8,8"], "phantom data only"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_work(lung_model, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [f"folder:{empty}" if a == "EMPTY" else a for a in args]
    base = {"--data": "phantom:lung:1", "--model": lung_model, "--frames": "4", "--out": str(tmp_path / "out")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    rc, err = modiff("evaluate", *[x for kv in base.items() for x in kv])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("modiff: error:"), err
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(lung_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    rc, err = modiff("evaluate", "--data", "phantom:lung:1", "--model", lung_model, "--out", str(out))
    assert rc == 2 and "already exists" in err and "--overwrite" in err


def test_energy_score_rewards_a_spread_that_covers_the_truth():
    from MoDiffLib.evaluation.landmarks import landmark_energy_table, landmark_error_table
    from MoDiffLib.motion import MotionFields
    from MoDiffLib.volume import Geometry

    geometry = Geometry((8, 8, 8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    p0 = np.array([7.0, 7.0, 7.0])
    landmarks = {"a": np.stack([p0, p0 + [0.0, 0.0, 3.0]])}  # moves 3 mm S

    def shift(s_mm: float) -> MotionFields:
        d = np.zeros((2, 8, 8, 8, 3), np.float32)
        d[1, ..., 2] = s_mm
        return MotionFields(d, geometry, {})

    _, one = landmark_energy_table([shift(1.0)], landmarks, geometry)
    _, err = landmark_error_table(shift(1.0), landmarks)
    np.testing.assert_allclose(one, err)  # one sample: the distance itself (2 mm)
    # two samples 2 mm either side of the truth: each is 2 mm off, yet together they score 1 mm
    _, both = landmark_energy_table([shift(1.0), shift(5.0)], landmarks, geometry)
    assert both[1, 0] == pytest.approx(1.0) and both[0, 0] == pytest.approx(0.0)
