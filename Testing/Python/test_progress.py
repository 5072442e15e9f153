"""One progress-and-cancel protocol (``MoDiffLib.progress``): the reporter, the cancel flags, what
the panel shows, and the events that the real ``modiff generate`` and ``modiff plan`` send.

The last tests run the commands as the Slicer panel does (``ProcessRunner`` on the command lines
of ``process_runner.generate_command`` and ``planning.command.plan_command``) on a small lung
phantom: the bundled motion model and a small latent model (fresh weights: the stages and their
weights do not depend on the weights), then the planning on the generated cine.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from MoDiffLib import Cancelled, InputError
from MoDiffLib.progress import (
    LATENT_GENERATION,
    MOTION_GENERATION,
    PLANNING,
    PLANNING_GIVEN_MOTION,
    STAGE_LABELS,
    WRITE_SHARE,
    ProgressEvent,
    ProgressPrinter,
    StageReporter,
    as_cancel_flag,
    check_cancel,
    progress_text,
    report_step,
    then_write,
)

sys.path.insert(0, os.path.dirname(__file__))
from test_pipeline import tiny_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROGRESS_FILE = ROOT / "MoDiffLib" / "progress.py"
TABLES = {"latent generation": LATENT_GENERATION, "motion generation": MOTION_GENERATION, "planning": PLANNING,
          "planning with given motion": PLANNING_GIVEN_MOTION}


# -- the reporter ------------------------------------------------------------------------------------
def test_reporter_fraction_is_monotone_labelled_and_ends_at_one():
    events: list[ProgressEvent] = []
    report = StageReporter(events.append, {"load": 1, "tddm": 3, "write": 1})
    report("load", 1, 1)
    for step in (1, 2, 3):
        report("tddm", step, 3, f"step {step}")
    report("write", 0, 1)
    report("write", 1, 1)
    assert [e.fraction for e in events] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 1.0])
    assert events[-1].fraction == 1.0  # exactly, whatever the rounding of the weights
    assert [e.label for e in events] == [STAGE_LABELS[e.stage] for e in events]
    assert events[1].to_dict() == {"event": "progress", "stage": "tddm", "label": "Generating motion fields (TDDM)",
                                   "step": 1, "total": 3, "fraction": 0.4, "message": "step 1"}
    # a stage reported again late, or a loop that restarts its count, never moves the bar back
    report("load", 1, 1)
    report("tddm", 1, 3)
    assert [e.fraction for e in events[-2:]] == [1.0, 1.0]


def test_unknown_stages_are_rejected():
    with pytest.raises(ValueError, match="unknown progress stage 'denoise'.*STAGE_LABELS"):
        ProgressEvent("denoise", 1, 2, 0.5)
    with pytest.raises(ValueError, match="unknown progress stage 'denoise'"):
        StageReporter(None, {"load": 1, "denoise": 2})
    for callback in (lambda e: None, None):
        with pytest.raises(ValueError, match="unknown progress stage 'frames'"):
            report_step(callback, "frames", 1, 2)
    generation = StageReporter(None, LATENT_GENERATION)
    # a labelled stage that is not one of this run's has no place in its fraction (also without a callback)
    with pytest.raises(ValueError, match="'plan' is not a stage of this run"):
        generation("plan", 1, 1)
    with pytest.raises(ValueError, match="'write' is not a stage of this run"):
        generation.within("write")
    with pytest.raises(ValueError, match="positive weight"):
        StageReporter(None, {"load": 0.0})
    with pytest.raises(ValueError, match="within 0..1"):
        ProgressEvent("load", 1, 1, 1.5)


def test_every_weight_table_is_labelled_and_the_pipelines_use_them():
    from MoDiffLib.motion_pipeline import MotionPipeline
    from MoDiffLib.pipeline import MoDiffPipeline

    for name, table in TABLES.items():
        assert set(table) <= set(STAGE_LABELS), name
        assert StageReporter(None, table).stages == list(table), name
    assert MoDiffPipeline.stages is LATENT_GENERATION and MotionPipeline.stages is MOTION_GENERATION
    command = then_write(MOTION_GENERATION)
    assert list(command) == [*MOTION_GENERATION, "write"] and sum(command.values()) == pytest.approx(1.0)
    assert command["write"] == WRITE_SHARE
    # no two stages share a label: the panel's line tells them apart
    assert len(set(STAGE_LABELS.values())) == len(STAGE_LABELS)
    assert all(label != stage and label[0].isupper() for stage, label in STAGE_LABELS.items())


def test_a_loop_inside_a_stage_and_a_pipeline_inside_a_command():
    events: list[ProgressEvent] = []
    outer = StageReporter(events.append, {"load": 1, "postprocess": 2, "write": 1})
    inner = outer.within("postprocess")
    report_step(inner, "motion", 1, 2, "frame 1")  # the motion estimation of the post-processing
    assert (events[-1].stage, events[-1].step, events[-1].total, events[-1].message) == ("postprocess", 1, 2, "frame 1")
    assert events[-1].fraction == pytest.approx(0.25 + 0.5 * 0.5)

    events.clear()
    command = StageReporter(events.append, then_write({"load": 1, "tddm": 1}))
    pipeline = StageReporter(command.relay, {"load": 1, "tddm": 1})
    pipeline("load", 1, 1)
    pipeline("tddm", 1, 2)
    pipeline("tddm", 2, 2)
    command("write", 1, 1)
    assert [e.stage for e in events] == ["load", "tddm", "tddm", "write"]
    assert [e.fraction for e in events] == pytest.approx([0.485, 0.7275, 0.97, 1.0])


# -- cancel --------------------------------------------------------------------------------------------
def test_cancel_flags_from_events_and_callables():
    event = threading.Event()
    assert as_cancel_flag(None) is None and as_cancel_flag(event) is event
    state = {"stop": False}
    flag = as_cancel_flag(lambda: state["stop"])
    check_cancel(flag, "sampling")
    state["stop"] = True
    with pytest.raises(Cancelled, match="^sampling was cancelled$"):
        check_cancel(flag, "sampling")
    for constant in (True, False):
        with pytest.raises(InputError, match=f"got {constant} \\(bool\\); pass an Event"):
            as_cancel_flag(constant)
    with pytest.raises(InputError, match=r"anything with is_set\(\).*got 'stop' \(str\)"):
        as_cancel_flag("stop")

    events: list[ProgressEvent] = []
    report = StageReporter(events.append, LATENT_GENERATION, "generation")
    event.set()
    with pytest.raises(Cancelled, match="^generation was cancelled$"):
        report.stage_done("load", 0.0, event)
    assert [e.stage for e in events] == ["load"] and "load" in report.timings  # reported, then stopped


# -- what the user is shown -------------------------------------------------------------------------------
def test_progress_text_shows_the_label_count_and_message():
    event = ProgressEvent("tddm", 3, 8, 0.421, "denoising")
    assert progress_text(event) == progress_text(event.to_dict()) == (42, "Generating motion fields (TDDM) (3/8): denoising")
    assert progress_text({"stage": "encode", "step": 1, "total": 1, "fraction": 0.07, "message": ""}) == (
        7, "Encoding the volume (VAE)")
    assert progress_text({"stage": "write", "fraction": 1.7})[0] == 100
    # a stage of another version of the command: its own label, else a neutral word, never the bare name
    assert progress_text({"stage": "sharpen", "label": "Sharpening", "fraction": 0.5}) == (50, "Sharpening")
    assert progress_text({"stage": "sharpen", "fraction": None}) == (0, "Working")


def test_printer_writes_the_json_protocol_and_text_lines():
    out, err = io.StringIO(), io.StringIO()
    printer = ProgressPrinter("json", stdout=out, stderr=err)
    printer(ProgressEvent("plan", 2, 4, 0.9, "frame 1: clear"))
    printer.event({"event": "done", "output": "x"})
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [{"event": "progress", "stage": "plan", "label": "Checking the needle path", "step": 2, "total": 4,
                      "fraction": 0.9, "message": "frame 1: clear"}, {"event": "done", "output": "x"}]
    assert err.getvalue() == ""
    text = ProgressPrinter("lines", prefix="modiff plan: ", stdout=out, stderr=err)
    text(ProgressEvent("motion", 1, 3, 0.3))
    assert err.getvalue() == "modiff plan: Estimating the motion (1/3)\n"
    with pytest.raises(ValueError, match="progress mode"):
        ProgressPrinter("fancy")


def test_the_module_needs_only_the_standard_library():
    """The panel imports it while Slicer loads, before torch or scipy may be installed."""
    tree = ast.parse(PROGRESS_FILE.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module.split(".")[0]]
        elif isinstance(node, ast.ImportFrom):
            assert node.module == "errors", f"progress.py imports .{node.module}"
            continue
        else:
            continue
        assert all(n in sys.stdlib_module_names or n == "__future__" for n in names), names
    code = "import sys, MoDiffLib.progress; print(sorted({'torch', 'scipy', 'SimpleITK'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr + out.stdout


# -- the real commands, as the panel runs them -------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Frame 0 of a small 4-frame lung phantom, its frame-0 labels, and an entry and a target."""
    from MoDiffLib.io import write_volume
    from MoDiffLib.phantom import make_phantom
    from MoDiffLib.planning import skin_entry
    from MoDiffLib.volume import Volume

    folder = tmp_path_factory.mktemp("progress")
    case = make_phantom("lung", num_frames=4, seed=3, shape_ijk=(48, 48, 24))
    write_volume(case.frames.frame(0), folder / "frame0.nrrd")
    labels0 = Volume(case.labels.frames[0], case.frames.geometry, "labels0")
    write_volume(labels0, folder / "labels0.nrrd")
    target = case.landmarks["nodule_1"][0]
    entry = skin_entry(labels0, target, [1.0 if target[0] > 0 else -1.0, 0.0, 0.0])
    assert entry is not None
    return folder, entry, target


def run_as_the_panel(command: list[str]) -> list[dict]:
    from MoDiffLib.process_runner import ProcessRunner, child_environment

    runner = ProcessRunner(command, env=child_environment(), cwd=ROOT)
    done = runner.start().wait(timeout=600)
    assert done is not None and done["event"] == "done", runner.stderr_text
    return runner.events


def check_events(events: list[dict], stages: list[str]) -> None:
    """Every progress event labelled from the one table, in the run's stage order, the fraction
    never going back and 1 at the end; and the panel's line is the label, not the stage's name."""
    progress = [e for e in events if e["event"] == "progress"]
    assert events[-1]["event"] == "done" and progress
    for e in progress:
        assert e["stage"] in STAGE_LABELS, e
        assert e["label"] == STAGE_LABELS[e["stage"]] != e["stage"], e
        percent, text = progress_text(e)
        assert text.startswith(e["label"]) and f"{e['stage']} {e['step']}/{e['total']}" not in text, text
        assert percent == round(100 * e["fraction"])
    fractions = [e["fraction"] for e in progress]
    assert all(b >= a for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] == 1.0 and fractions[0] > 0.0
    order = [stages.index(e["stage"]) for e in progress]
    assert order == sorted(order), [e["stage"] for e in progress]
    assert {e["stage"] for e in progress} == set(stages)  # every stage of the run is reported


def test_real_generate_and_plan_send_labelled_monotone_progress(phantom, tmp_path):
    from MoDiffLib.pipeline import MoDiffPipeline
    from MoDiffLib.planning.command import plan_command
    from MoDiffLib.process_runner import generate_command

    folder, entry, target = phantom
    # the bundled default lung model (motion family), with the panel's command line
    cine = tmp_path / "cine.seq.nrrd"
    events = run_as_the_panel(generate_command(folder / "frame0.nrrd", cine, 4, model="modiff-lung-motion",
                                               device="cpu"))
    check_events(events, list(then_write(MOTION_GENERATION)))
    assert events[-1]["outputs"] == [str(cine)] and cine.exists()

    # the paper's latent family: a small model (fresh weights), two sampling steps
    model = MoDiffPipeline.from_config(tiny_config()).save_pretrained(tmp_path / "latent")
    latent = tmp_path / "latent.seq.nrrd"
    events = run_as_the_panel(generate_command(folder / "frame0.nrrd", latent, 3, model=str(model), steps=2,
                                               device="cpu"))
    check_events(events, list(then_write(LATENT_GENERATION)))
    sampled = [e for e in events if e.get("stage") in ("tddm", "i2v")]
    assert [(e["stage"], e["step"], e["total"]) for e in sampled] == [
        ("tddm", 1, 2), ("tddm", 2, 2), ("i2v", 1, 2), ("i2v", 2, 2)]  # one event per sampling step

    # the planning on the generated cine: its motion estimated frame by frame
    out = tmp_path / "plan"
    events = run_as_the_panel(plan_command(cine, out, entry, target, risk_path=folder / "labels0.nrrd"))
    check_events(events, list(PLANNING))
    assert [e["step"] for e in events if e.get("stage") == "motion"] == [1, 2, 3]  # frames 1..3
    assert sorted(os.listdir(out)) == ["motion.seq.nrrd", "plan.json", "plan.png"]
