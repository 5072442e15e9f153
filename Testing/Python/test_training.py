"""The trainers end to end (python -m training.train), on tiny phantoms on the CPU.

Every stage writes a loadable release checkpoint; losses fall when overfitting one case; a run
stopped and resumed reaches the same weights bit for bit; two processes under torchrun hold the
same weights; and bad inputs are refused before any training step.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fixtures_datasets import make_4dlung_study, make_acdc  # noqa: E402

from MoDiffLib.models.checkpoint import load_checkpoint, load_module_weights  # noqa: E402
from MoDiffLib.phantom import make_phantom  # noqa: E402
from MoDiffLib.pipeline import MoDiffPipeline, build_networks  # noqa: E402
from training.data import weights_hash  # noqa: E402
from training.loop import read_state  # noqa: E402
from training.train import main  # noqa: E402

TINY = str(REPO / "training" / "configs" / "tiny-lung-phantom.toml")
FAST = [
    "data.spec=phantom:lung:2", "data.options={num_frames=[4,6], shape_ijk=[32,32,16]}",
    *(f"{s}.{k}={v}" for s in ("vae", "tddm", "i2v") for k, v in (("steps", 4), ("log_every", 2),
                                                                   ("checkpoint_every", 2))),
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run several times faster on one thread than on two busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(out, stage, *extra, config=TINY):
    code = main(["--config", config, "--stage", stage, "--out", str(out), *FAST, *extra])
    assert code == 0
    return out


def log_rows(out):
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def stage_weights(out, stage):
    return load_checkpoint(out / "model")[1][stage]


def test_each_stage_writes_a_loadable_release_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(out, "vae")
    config = MoDiffPipeline.from_pretrained(out / "model").config
    assert config.latent_scale != 1.0 and config.field_scale != 1.0  # measured after the VAE
    t = config.training
    assert t["command"].startswith("python -m training.train --config") and t["seed"] == 0
    assert t["data"]["spec"] == "phantom:lung:2" and t["data"]["num_cases"] == 2
    assert t["stages"]["vae"]["finished"] and t["stages"]["vae"]["steps"] == 4
    assert {"git_commit", "hardware", "wall_s"} <= set(t) and t["hardware"]["device"] == "cpu"
    vae_after_vae_stage = stage_weights(out, "vae")

    train(out, "tddm")
    train(out, "i2v", "i2v.tddm_field_prob=1.0", "i2v.tddm_field_steps=2")  # conditioned on TDDM samples
    pipe = MoDiffPipeline.from_pretrained(out / "model")
    assert pipe.config.training["stages_completed"] == ["vae", "tddm", "i2v"]
    for key, value in vae_after_vae_stage.items():  # later stages leave the VAE alone
        assert torch.equal(stage_weights(out, "vae")[key], value)

    case = make_phantom("lung", num_frames=4, seed=200_001, shape_ijk=(32, 32, 16))
    first = case.frames.frame(0)
    cine = pipe.generate(first, 4, steps=2, device="cpu").sequence
    assert cine.num_frames == 4 and cine.geometry.is_close(first.geometry)
    assert np.array_equal(cine.frames[0], first.array) and np.isfinite(cine.frames).all()

    rows = log_rows(out)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert {r["stage"] for r in train_rows} == {"vae", "tddm", "i2v"}
    assert all(float(r["samples_per_s"]) > 0 and np.isfinite(float(r["loss"])) for r in train_rows)
    val = {r["kind"]: r for r in rows if r["kind"].startswith("val-")}
    assert set(val) == {"val-reconstruction", "val-fields", "val-pipeline"}
    for r in val.values():
        assert float(r["static_psnr"]) > 0 and np.isfinite(float(r["psnr"])) and -1 <= float(r["ssim"]) <= 1
    assert (out / "cache" / "frames" / "index.json").is_file() and (out / "cache" / "latents" / "index.json").is_file()


def test_a_public_data_layout_trains_without_an_amplitude(tmp_path):
    """ACDC (cine MR, ED->ES, no per-case amplitude): the interval sequences and the null token."""
    root = make_acdc(tmp_path / "acdc", {1: {"num_frames": 6, "ed": 1, "es": 4}, 2: {"num_frames": 8, "ed": 2, "es": 6},
                                          91: {"num_frames": 5, "ed": 1, "es": 3}})
    out = tmp_path / "run"
    train(out, "all", "model.kind=cardiac", "model.amplitude=none", "model.grid.spacing_ijk_mm=[1,1,8]",
          f"data.spec=acdc:{root}", 'data.options={split="train"}', "data.subsample=interval",
          f"validation.spec=acdc:{root}", 'validation.options={split="test"}', "vae.steps=2", "tddm.steps=2",
          "i2v.steps=2")
    pipe = MoDiffPipeline.from_pretrained(out / "model")
    assert pipe.config.amplitude is None and pipe.config.intensity.method == "percentile"
    assert pipe.config.training["data"]["num_cases"] == 2
    assert [c["num_frames"] for c in json.loads((out / "cache" / "frames" / "index.json").read_text())["cases"]] == [4, 5]
    assert {r["kind"] for r in log_rows(out)} >= {"val-reconstruction", "val-fields", "val-pipeline"}


def losses(out, stage):
    return [float(r["loss"]) for r in log_rows(out) if r["stage"] == stage and r["kind"] == "train"]


def test_losses_fall_when_overfitting_one_case(tmp_path):
    one_case = ["data.spec=phantom:lung:1", "data.options={num_frames=4, shape_ijk=[32,32,16]}",
                "data.subsample=none", "validation.spec=", "model.diffusion.num_train_timesteps=100",
                "vae.steps=300", "vae.lr=5e-3", "vae.log_every=1", "vae.warmup_steps=5", "vae.checkpoint_every=300",
                "tddm.steps=200", "tddm.lr=2e-3", "tddm.log_every=1", "tddm.warmup_steps=5",
                "tddm.checkpoint_every=200", "tddm.amplitude_dropout=0.0"]
    out = tmp_path / "overfit"
    train(out, "vae", *one_case)
    vae = losses(out, "vae")
    assert len(vae) == 300 and vae[0] / np.mean(vae[-10:]) > 5.0, (vae[0], vae[-10:])
    train(out, "tddm", *one_case)
    tddm = losses(out, "tddm")
    assert np.mean(tddm[:10]) / np.mean(tddm[-20:]) > 3.0, (tddm[:10], tddm[-20:])


def all_tensors(out):
    state = read_state(out / "state.pt")
    tensors = {f"state.{name}.{k}": v for name, sd in state["networks"].items() for k, v in sd.items()}
    tensors.update({f"ema.{k}": v for k, v in state["ema"].items()})
    tensors.update({f"release.{k}": v for k, v in load_file(out / "model" / "model.safetensors").items()})
    return state, tensors


def assert_identical(a, b):
    (sa, ta), (sb, tb) = all_tensors(a), all_tensors(b)
    assert sa["step"] == sb["step"] and sa["finished"] and sb["finished"]
    assert sa["model_config"] == sb["model_config"]  # scales too
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different[:5]


def test_a_stopped_and_resumed_run_reaches_bit_identical_weights(tmp_path):
    six = ["vae.steps=6", "tddm.steps=6", "validation.spec="]
    whole, parts, late = tmp_path / "whole", tmp_path / "parts", tmp_path / "late"
    train(whole, "vae", *six)
    train(parts, "vae", *six, "--max-steps", "3")
    stopped = read_state(parts / "state.pt")
    assert stopped["step"] == 3 and not stopped["finished"] and (parts / "model" / "config.json").is_file()
    with open(parts / "log.csv", "a") as f:  # a row a killed run logged after its last checkpoint
        f.write("1.0,vae,5,train,9.9,,,,,,,,,,,\n")
    train(parts, "vae", *six, "--resume")
    assert_identical(whole, parts)
    assert [r["step"] for r in log_rows(parts) if r["stage"] == "vae" and r["kind"] == "train"] == ["2", "4", "6"]
    final = read_state(parts / "state.pt")["networks"]["vae"]
    assert any(not torch.equal(final[k], stopped["networks"]["vae"][k]) for k in final)  # it trained on

    train(late, "vae", *six, "--max-minutes", "1e-9")  # the clock stops it before its first step
    assert read_state(late / "state.pt")["step"] == 0
    train(late, "vae", *six, "--resume")
    assert_identical(whole, late)

    shutil.rmtree(parts)
    shutil.copytree(whole, parts)
    train(whole, "tddm", *six)
    train(parts, "tddm", *six, "--max-steps", "4")
    train(parts, "tddm", *six, "--resume")
    assert_identical(whole, parts)


def test_a_damaged_state_is_refused_not_resumed(tmp_path, capsys):
    run = train(tmp_path / "run", "vae", "vae.steps=6", "validation.spec=", "--max-steps", "3")
    state = run / "state.pt"
    data = bytearray(state.read_bytes())
    middle = len(data) // 2  # inside the sealed payload: the state's tensors
    assert any(data[middle:middle + 8])
    data[middle:middle + 8] = bytes(8)
    state.write_bytes(bytes(data))
    before = log_rows(run)
    err = run_failing(capsys, "--config", TINY, "--stage", "vae", "--out", str(run), *FAST, "vae.steps=6",
                      "validation.spec=", "--resume")
    assert "state.pt is damaged: checksum mismatch" in err and len(err.splitlines()) == 1
    assert log_rows(run) == before  # nothing was resumed


def test_a_state_from_before_checksums_resumes_with_a_warning(tmp_path, capsys):
    run = train(tmp_path / "run", "vae", "vae.steps=4", "validation.spec=", "--max-steps", "2")
    torch.save(read_state(run / "state.pt"), run / "state.pt")  # unsealed, as older trainers wrote it
    capsys.readouterr()
    train(run, "vae", "vae.steps=4", "validation.spec=", "--resume")
    assert "has no checksum" in capsys.readouterr().err
    assert read_state(run / "state.pt")["finished"]


def test_two_processes_under_torchrun_hold_identical_weights(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", "--config", TINY, "--stage", "all", "--out", str(out), *FAST,
           "vae.steps=3", "tddm.steps=3", "i2v.steps=3", "validation.spec="]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "global batch 2 on 2 x cpu" in done.stdout  # one sample per process
    config, weights = load_checkpoint(out / "model")
    networks = build_networks(config)
    for stage in ("vae", "tddm", "i2v"):
        ranks = [json.loads((out / "ddp" / f"{stage}-rank{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0] == ranks[1] and ranks[1]["step"] == 3
        # ... and what process 1 holds is what process 0 saved
        load_module_weights(networks[stage], weights[stage], name=stage)
        assert weights_hash(networks[stage]) == ranks[1]["ema"]


def run_failing(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("train: error: "), err
    return err


def test_unknown_keys_fail_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    err = run_failing(capsys, "--config", TINY, "--stage", "vae", "--out", str(out), "vae.stepz=3")
    assert "unknown key 'vae.stepz'" in err and "override" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(Path(TINY).read_text().replace("[vae]\n", "[vae]\nlearning_rate = 1\n"))
    err = run_failing(capsys, "--config", str(bad), "--stage", "all", "--out", str(out))
    assert "unknown key 'vae.learning_rate'" in err and str(bad) in err
    assert not out.exists()


def test_an_empty_data_folder_fails_before_training(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "run"
    err = run_failing(capsys, "--config", TINY, "--stage", "vae", "--out", str(out), f"data.spec=folder:{empty}",
                      "data.options={}")
    assert "no 4D files" in err and not out.exists()


def test_frames_on_different_grids_fail_before_training(tmp_path, capsys):
    root = tmp_path / "4dlung"
    make_4dlung_study(root, phases=(0.0, 10.0, 20.0), spacing_of={10.0: (1.2, 1.2, 3.0)})
    out = tmp_path / "run"
    err = run_failing(capsys, "--config", str(REPO / "training" / "configs" / "4dlung.toml"), "--stage", "vae",
                      "--out", str(out), f"data.spec=4dlung:{root}", "data.options={phases=[0,10,20]}")
    assert "must share one grid" in err or "not on the grid" in err
    assert not out.exists()


def test_data_of_another_modality_fails_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    err = run_failing(capsys, "--config", TINY, "--stage", "vae", "--out", str(out), "data.spec=phantom:cardiac:1",
                      "data.options={num_frames=4, shape_ijk=[32,32,16]}")
    assert "does not look like CT" in err
    assert not (out / "state.pt").exists() and not (out / "model").exists() and not (out / "log.csv").exists()


def test_stages_run_in_order_and_never_overwrite_silently(tmp_path, capsys):
    out = tmp_path / "run"
    err = run_failing(capsys, "--config", TINY, "--stage", "tddm", "--out", str(out), *FAST)
    assert "needs a trained vae stage" in err
    train(out, "vae", "validation.spec=")
    err = run_failing(capsys, "--config", TINY, "--stage", "vae", "--out", str(out), *FAST, "validation.spec=")
    assert "already holds a trained vae stage" in err and "--resume" in err
    train(out, "tddm", "validation.spec=", "--max-steps", "1")
    err = run_failing(capsys, "--config", TINY, "--stage", "tddm", "--out", str(out), *FAST, "--resume", "seed=1")
    assert "seed" in err and "differ" in err
    err = run_failing(capsys, "--config", TINY, "--stage", "i2v", "--out", str(out), *FAST)
    assert "unfinished tddm stage" in err
    capsys.readouterr()
    train(out, "vae", "--resume")  # a finished stage is skipped
    assert "already trained" in capsys.readouterr().out
