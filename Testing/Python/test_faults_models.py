"""One integrity rule for every model, however it is named (issue 17, item 3): a damaged model
folder given by path is refused like a damaged registered one, a config lacking a key its family
needs is refused naming the key, and a damaged training state is never resumed."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from MoDiffLib import InputError
from MoDiffLib.io import write_volume
from MoDiffLib.models.checkpoint import MANIFEST_NAME, WEIGHTS_NAME, load_checkpoint, save_checkpoint
from MoDiffLib.models.config import ModelConfig
from MoDiffLib.registry import RESOURCES_DIR

sys.path.insert(0, os.path.dirname(__file__))
from test_pipeline import oblique_ct, tiny_config  # noqa: E402

BUNDLED = RESOURCES_DIR / "models" / "modiff-lung-phantom"


def zero_bytes(file: Path, count: int = 8) -> None:
    """Overwrite ``count`` bytes in the middle of ``file`` with zeros (deep inside the tensor data)."""
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    assert any(data[middle:middle + count]), "pick bytes that are not already zero"
    data[middle:middle + count] = bytes(count)
    file.write_bytes(bytes(data))


def run_modiff(*args: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("MODIFF_MODELS_DIR", "MODIFF_REGISTRY")}
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *args], capture_output=True, text=True, timeout=300,
                          env=environ)


def test_a_damaged_copy_of_a_bundled_model_given_by_path_is_refused_in_one_line(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(BUNDLED, copy)
    zero_bytes(copy / WEIGHTS_NAME)
    write_volume(oblique_ct(), tmp_path / "ct.nrrd")
    out = tmp_path / "cine.seq.nrrd"
    result = run_modiff("generate", str(tmp_path / "ct.nrrd"), "--out", str(out), "--frames", "3", "--steps", "1",
                        "--model", str(copy))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("modiff: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert str(copy / WEIGHTS_NAME) in lines[0] and "checksum" in lines[0] and "does not match" in lines[0]
    assert "modiff-lung-phantom" in lines[0]  # the registered model it is a copy of
    assert not out.exists()


def test_an_intact_copy_given_by_path_loads_and_names_the_path(tmp_path):
    from MoDiffLib.pipeline import provenance_head
    from MoDiffLib.pipelines import load_pipeline

    copy = tmp_path / "copy"
    shutil.copytree(BUNDLED, copy)
    pipeline = load_pipeline(str(copy))
    assert provenance_head(pipeline.config, pipeline.source)["model_source"] == str(copy)


def test_saved_checkpoints_carry_checksums_that_loading_verifies(tmp_path, capsys):
    folder = save_checkpoint(tmp_path / "model", tiny_config(), {"vae": {"w": torch.ones(64)}})
    sums = json.loads((folder / MANIFEST_NAME).read_text())["sha256"]
    assert set(sums) == {"config.json", WEIGHTS_NAME}
    load_checkpoint(folder)
    assert capsys.readouterr().err == ""
    zero_bytes(folder / WEIGHTS_NAME)
    with pytest.raises(InputError, match=rf"checksum of '.*{WEIGHTS_NAME}' does not match its {MANIFEST_NAME}"):
        load_checkpoint(folder)


def test_a_folder_without_checksums_loads_with_one_warning(tmp_path, capsys):
    folder = save_checkpoint(tmp_path / "model", tiny_config(), {"vae": {"w": torch.ones(4)}})
    (folder / MANIFEST_NAME).unlink()  # as saved before checksums existed
    load_checkpoint(folder)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("modiff: warning:") and MANIFEST_NAME in err[0]


@pytest.mark.parametrize("key", ["field_scale", "latent_scale", "diffusion", "diffusion.prediction_type",
                                 "amplitude", "vae.channels", "intensity.window"])
def test_a_config_missing_a_required_key_is_refused_naming_it(key):
    data = json.loads((BUNDLED / "config.json").read_text())
    ModelConfig.from_dict(data)  # complete: accepted
    table, _, sub = key.partition(".")
    if sub:
        del data[table][sub]
    else:
        del data[table]
    with pytest.raises(InputError, match=rf"lacks the required key '{key}'"):
        ModelConfig.from_dict(data)


def test_a_motion_config_missing_its_motion_settings_is_refused():
    data = json.loads((RESOURCES_DIR / "models" / "modiff-lung-motion" / "config.json").read_text())
    del data["motion"]["num_phases"]
    with pytest.raises(InputError, match=r"lacks the required key 'motion.num_phases'"):
        ModelConfig.from_dict(data)


def test_a_copied_bundled_config_missing_field_scale_is_refused_through_load_checkpoint(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(BUNDLED, copy)
    data = json.loads((copy / "config.json").read_text())
    del data["field_scale"]
    (copy / "config.json").write_text(json.dumps(data))  # no longer the bundled config: not registry-checked
    with pytest.raises(InputError, match=r"config\.json' is unusable: model config lacks the required key "
                                         r"'field_scale'"):
        load_checkpoint(copy)


@pytest.mark.parametrize("name", ["modiff-lung-motion", "modiff-cardiac-motion", "modiff-lung-phantom",
                                  "modiff-cardiac-phantom"])
def test_every_bundled_model_still_loads(name):
    from MoDiffLib.pipelines import load_pipeline

    assert load_pipeline(name).config.name == name


@pytest.mark.parametrize("load", ["load_pipeline", "from_pretrained"])
def test_a_named_model_is_verified_once_however_it_is_loaded(monkeypatch, load):
    # The weights are the large file: hashing them twice doubled the loading time of a named model.
    from MoDiffLib import checksums
    from MoDiffLib.pipeline import MoDiffPipeline
    from MoDiffLib.pipelines import load_pipeline

    hashed = []
    real = checksums.sha256_file
    def counting(path, *args, **kwargs):
        hashed.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(checksums, "sha256_file", counting)
    loader = load_pipeline if load == "load_pipeline" else MoDiffPipeline.from_pretrained
    pipeline = loader("modiff-lung-phantom")
    assert pipeline.source == "modiff-lung-phantom"
    assert hashed.count(WEIGHTS_NAME) == 1, hashed
