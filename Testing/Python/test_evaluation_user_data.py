"""``modiff evaluate`` on a user's files: 15 per-frame 3D files with labels, more frames than the model makes.

The folder is written from a small cardiac phantom as a user would ship it (``img_tf0..14.nii.gz``,
``seg_tf0..14.nii.gz`` beside them, a ``case.json`` naming the labels); the model is a tiny untrained
one with at most 6 frames, so its cycle must be resampled in time to the 15 true phases.
"""

import json

import numpy as np
import pytest
from test_evaluation import modiff, tiny_config

from MoDiffLib.datasets import PHANTOM_SEEDS
from MoDiffLib.evaluation import physiology as phys
from MoDiffLib.evaluation.phases import phase_weights, resample_array, time_plan
from MoDiffLib.io import write_sequence, write_volume
from MoDiffLib.phantom import make_phantom
from MoDiffLib.pipeline import MoDiffPipeline
from MoDiffLib.volume import Volume

FRAMES = 15


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    case = make_phantom("cardiac", num_frames=FRAMES, seed=PHANTOM_SEEDS["test"][3], shape_ijk=(32, 32, 8))
    folder = root / "cases" / "patientA"
    folder.mkdir(parents=True)
    for t in range(FRAMES):
        write_volume(case.frames.frame(t), folder / f"img_tf{t}.nii.gz")
        write_volume(Volume(case.labels.frames[t].astype(np.uint8), case.frames.geometry), folder / f"seg_tf{t}.nii.gz")
    (folder / "case.json").write_text(json.dumps({"labels": {str(k): v for k, v in case.label_names.items()}}))
    write_sequence(case.frames, root / "cine.nii.gz")
    model = MoDiffPipeline.from_config(tiny_config("cardiac")).save_pretrained(root / "tiny-cardiac")
    return root, case, str(model)


def test_time_plan_and_periodic_resampling():
    plan = time_plan(np.arange(15) / 15, max_frames=6)
    assert plan.generated == 6 and plan.resampled
    assert not time_plan(np.arange(5) / 5, max_frames=6).resampled  # the model makes these phases itself
    assert time_plan(np.array([0.0, 0.1, 0.2]), max_frames=6).resampled  # part of a cycle
    lo, hi, w = phase_weights(np.array([0.0, 0.5, 0.95]), 4)
    assert lo.tolist() == [0, 2, 3] and hi.tolist() == [1, 3, 0] and w == pytest.approx([0.0, 0.0, 0.8])
    values = np.array([0.0, 1.0, 2.0, 1.0])  # one cycle at phases 0, 1/4, 1/2, 3/4
    assert resample_array(values, np.array([0.125, 0.5, 0.875])) == pytest.approx([0.5, 2.0, 0.5])


def test_folder_of_frames_is_scored_at_every_true_phase_with_lv_metrics(user_folder, tmp_path):
    root, phantom, model = user_folder
    out = tmp_path / "report"
    methods = ["static", "modiff", "modiff+amplitude"]
    rc, err = modiff("evaluate", "--data", f"folder:{root / 'cases'}", "--model", model, "--baselines",
                     ",".join(methods), "--registration-iterations", "10,0,0", "--out", str(out))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    case = report["cases"][0]
    assert case["case_id"] == "patientA" and case["info"]["frames"] == FRAMES and case["info"]["cycle"] == "whole cycle"
    rows = report["data_info"]["frames_compared"]["patientA"]
    assert [r["frame"] for r in rows] == list(range(FRAMES))
    # ED (the labels' largest LV volume) is frame 0; the source frames are the files' numbers from there
    start = rows[0]["source_frame"]
    assert [r["source_frame"] for r in rows] == [(start + t) % FRAMES for t in range(FRAMES)]
    assert [r["phase"] for r in rows] == pytest.approx([t / FRAMES for t in range(FRAMES)], abs=1e-6)
    truth_lv = case["truth"]["curves"]["labels"]["lv_volume_ml"]
    assert len(truth_lv) == FRAMES and all(np.isfinite(truth_lv))
    ef = case["truth"]["ef_pct"]
    assert ef == pytest.approx(phantom.params["amplitude"], abs=3.0)  # the labels' EF is the phantom's
    for name in methods:
        entry = case["methods"][name]
        assert entry["available"], (name, entry["skipped"])
        assert [f["frame"] for f in entry["per_frame"]] == list(range(1, FRAMES))
        assert [f["phase"] for f in entry["per_frame"]] == pytest.approx([r["phase"] for r in rows[1:]], abs=1e-6)
        for key in ("lv_volume_error_ml", "ef_error_pct", "ef_pct", "esv_ml"):
            assert np.isfinite(report["methods"][name][key]), (name, key)
    # the model makes at most 6 frames: its cycle was generated at 6 phases and resampled to the 15
    for name in ("modiff", "modiff+amplitude"):
        assert case["methods"][name]["time"]["generated_frames"] == 6 and case["methods"][name]["time"]["resampled"]
    # modiff+amplitude ran with the EF measured on the labels (ED = largest, ES = smallest LV volume)
    assert case["methods"]["modiff+amplitude"]["amplitude"] == pytest.approx(ef)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "## Frames compared" in md and f"{FRAMES} true frames" in md and f"14 (src {rows[14]['source_frame']}, 0.933)" in md
    assert "resampled in time to the true phases" in md
    # a dilating heart has a negative EF, so a larger EF error than a static one (EF 0)
    dilating = [truth_lv[0] * (2.0 - v / truth_lv[0]) for v in truth_lv]
    es = case["truth"]["es_frame"]
    assert phys.ejection_fraction(dilating, es) == pytest.approx(-ef)
    assert abs(phys.ejection_fraction(dilating, es) - ef) > report["methods"]["static"]["ef_error_pct"]


def test_a_4d_file_given_directly(user_folder, tmp_path):
    root, _, model = user_folder
    out = tmp_path / "report"
    rc, err = modiff("evaluate", "--data", str(root / "cine.nii.gz"), "--model", model, "--baselines", "static,modiff",
                     "--no-motion-metrics", "--out", str(out))
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    case = report["cases"][0]
    assert case["case_id"] == "cine" and case["info"]["frames"] == FRAMES
    assert len(case["methods"]["modiff"]["per_frame"]) == FRAMES - 1
