"""Training configs (training/config.py): shipped files, strict keys, overrides, resume checks."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the trainers live in the repository, not in the installed package

from MoDiffLib import InputError  # noqa: E402
from training.config import STAGES, apply_override, load_config, resume_differences  # noqa: E402

CONFIGS = REPO / "training" / "configs"


@pytest.mark.parametrize("name, kind, has_amplitude, subsample", [
    ("lung-phantom", "lung", True, "cycle"),
    ("cardiac-phantom", "cardiac", True, "cycle"),
    ("acdc", "cardiac", False, "interval"),
    ("4dlung", "lung", False, "interval"),
    ("tiny-lung-phantom", "lung", True, "cycle"),
    ("lung-phantom-cpu", "lung", True, "cycle"),
    ("cardiac-phantom-cpu", "cardiac", True, "cycle"),
])
def test_shipped_configs_are_valid(name, kind, has_amplitude, subsample):
    c = load_config(CONFIGS / f"{name}.toml")
    assert c.name == name and c.model.kind == kind
    assert (c.model.amplitude is not None) == has_amplitude
    assert c.data.subsample == subsample
    for stage in STAGES:
        s = c.stage(stage)
        assert s.steps >= s.warmup_steps >= 1 and s.checkpoint_every <= s.steps and 0 < s.ema_decay < 1
    assert c.tddm.amplitude_dropout == c.i2v.amplitude_dropout == 0.2
    assert c.validation.every >= 1 and c.validation.num_cases >= 1


def test_phantom_configs_validate_on_held_out_seeds():
    for name in ("lung-phantom", "cardiac-phantom", "tiny-lung-phantom", "lung-phantom-cpu", "cardiac-phantom-cpu"):
        c = load_config(CONFIGS / f"{name}.toml")
        assert c.data.spec.startswith("phantom:") and c.validation.spec.endswith(":val")


def write(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


BASE = '[model]\nkind = "lung"\n[data]\nspec = "phantom:lung:2"\n'


@pytest.mark.parametrize("extra, key", [
    ("stepz = 3\n", "stepz"),
    ("[vae]\nstepz = 3\n", "vae.stepz"),
    ("[data.options]\nnum_frames = 4\n[trainer]\nlr = 1\n", "trainer"),
])
def test_unknown_keys_name_the_key_and_the_file(tmp_path, extra, key):
    text = BASE.replace("[model]", extra + "[model]") if not extra.startswith("[") else BASE + extra
    path = write(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_config(path)
    assert f"unknown key '{key}'" in str(e.value) and str(path) in str(e.value)


def test_unknown_model_field_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, BASE + "[model.grid]\nshape = [1, 2, 3]\n")
    with pytest.raises(InputError, match=r"grid\.shape") as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_overrides_are_typed_and_checked(tmp_path):
    path = write(tmp_path, BASE)
    c = load_config(path, ["tddm.steps=7", "data.spec=phantom:lung:3", "model.grid.shape_kji=[16,32,32]",
                           "model.grid.spacing_ijk_mm=[10.8,10.8,16]", "i2v.lr=3e-4", "validation.spec="])
    assert c.tddm.steps == 7 and c.data.spec == "phantom:lung:3" and c.i2v.lr == 3e-4
    assert c.model.grid.shape_kji == (16, 32, 32) and c.validation.spec == ""
    with pytest.raises(InputError, match=r"unknown key 'tddm\.stepz'.*override 'tddm\.stepz=3'"):
        load_config(path, ["tddm.stepz=3"])
    with pytest.raises(InputError, match="KEY=VALUE"):
        load_config(path, ["tddm.steps"])
    with pytest.raises(InputError, match="'vae.steps'.*must be an integer"):
        load_config(path, ["vae.steps=ten"])
    assert apply_override({"a": {"b": 1}}, "a.c=[1, 2]") == {"a": {"b": 1, "c": [1, 2]}}


@pytest.mark.parametrize("override, match", [
    ("model.latent_scale=2.0", "measured or written by training"),
    ("data.subsample=random", "data.subsample"),
    ("vae.ema_decay=1.0", "vae.ema_decay"),
    ("tddm.amplitude_dropout=1.5", "tddm.amplitude_dropout"),
    ("model.kind=liver", "model.kind"),
    ("data.spec=", "data.spec"),
    ("vae.amplitude_dropout=0.1", "unknown key 'vae.amplitude_dropout'"),
])
def test_bad_values_are_refused(tmp_path, override, match):
    with pytest.raises(InputError, match=match):
        load_config(write(tmp_path, BASE), [override])


def test_a_missing_or_broken_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(InputError, match="not valid TOML"):
        load_config(write(tmp_path, "[model\nkind="))


def test_model_amplitude_can_be_switched_off(tmp_path):
    c = load_config(write(tmp_path, BASE), ["model.amplitude=none"])
    assert c.model.amplitude is None


def test_resume_differences_ignore_what_does_not_touch_the_weights():
    old = {"seed": 0, "vae": {"steps": 10, "log_every": 5}, "validation": {"every": 3}}
    new = {"seed": 0, "vae": {"steps": 10, "log_every": 1}, "validation": {"every": 9}}
    assert resume_differences(old, new) == []
    assert resume_differences(old, {**new, "seed": 1, "vae": {"steps": 11}}) == ["seed", "vae.steps"]
