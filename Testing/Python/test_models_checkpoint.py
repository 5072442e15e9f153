"""Model configuration (strict JSON) and the checkpoint folder: exact round trips, clear errors."""

import dataclasses
import hashlib
import json
import os

import pytest
import torch
from torch import nn

from MoDiffLib.errors import InputError, OutputError
from MoDiffLib.models.checkpoint import (
    CONFIG_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    load_checkpoint,
    load_module_weights,
    save_checkpoint,
    sha256_file,
)
from MoDiffLib.models.config import (
    CONFIG_FORMAT_VERSION,
    AmplitudeConfig,
    GridConfig,
    IntensityConfig,
    ModelConfig,
    VAEConfig,
    default_config,
)
from MoDiffLib.models.vae import KLAutoencoder

TINY_VAE = VAEConfig(latent_channels=4, down_factors=((1, 2, 2),), channels=(8, 16), num_res_blocks=(1, 1))


def tiny_config() -> ModelConfig:
    return dataclasses.replace(
        default_config("cardiac"),
        grid=GridConfig(shape_kji=(4, 16, 16), spacing_ijk_mm=(1.5, 1.5, 8.0)),
        vae=TINY_VAE,
        tddm={"channels": [16, 32], "use_pal": True},
        i2v={"channels": (16, 32), "heads": 2},
        latent_scale=0.8731,
        field_scale=4.25,
        training={"command": "modiff-train --steps 3", "seed": 7, "git_commit": "abc123"},
    )


def tiny_modules() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    vae = KLAutoencoder.from_config(TINY_VAE)
    other = nn.Sequential(nn.Conv3d(2, 4, 3), nn.BatchNorm3d(4), nn.Linear(5, 3))
    other[1].running_mean.uniform_()  # a buffer, and the int64 num_batches_tracked
    other[1].num_batches_tracked.fill_(11)
    half = nn.Linear(3, 2).to(torch.float16)
    return {"vae": vae, "tddm": other, "i2v": half}


# -- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lung", "cardiac"])
def test_default_configs_round_trip_through_json(kind):
    config = default_config(kind)
    text = config.to_json()
    data = json.loads(text)
    assert next(iter(data)) == "format_version" and data["format_version"] == CONFIG_FORMAT_VERSION
    assert ModelConfig.from_json(text) == config
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config.kind == kind and config.max_frames == 16
    assert config.diffusion.num_train_timesteps == 1000 and config.diffusion.prediction_type == "epsilon"


def test_config_round_trip_keeps_every_field_and_none_amplitude():
    config = dataclasses.replace(tiny_config(), amplitude=None)
    back = ModelConfig.from_json(config.to_json())
    assert back == config and back.amplitude is None
    assert back.i2v == {"channels": [16, 32], "heads": 2}  # JSON-normalised on construction
    assert back.vae.down_factors == ((1, 2, 2),) and isinstance(back.grid.shape_kji, tuple)
    assert back.latent_scale == 0.8731 and back.field_scale == 4.25


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d.update(latent_sclae=1.0), "'latent_sclae'"),
        (lambda d: d["vae"].update(widths=[8, 16]), "'vae.widths'"),
        (lambda d: d["amplitude"].update(mean=20.0), "'amplitude.mean'"),
        (lambda d: d["grid"].update(spacing=[1, 1, 1]), "'grid.spacing'"),
    ],
)
def test_unknown_keys_are_named(edit, key):
    data = default_config("lung").to_dict()
    edit(data)
    with pytest.raises(InputError, match=f"unknown key {key}"):
        ModelConfig.from_dict(data)


def test_format_version_and_required_keys_are_checked():
    data = default_config("lung").to_dict()
    data["format_version"] = CONFIG_FORMAT_VERSION + 1
    data["future_field"] = 1  # the version is reported, not the unknown key
    with pytest.raises(InputError, match="format_version 2"):
        ModelConfig.from_dict(data)
    data = default_config("lung").to_dict()
    del data["format_version"]
    with pytest.raises(InputError, match="required key 'format_version'"):
        ModelConfig.from_dict(data)
    data = default_config("lung").to_dict()
    del data["grid"]
    with pytest.raises(InputError, match="required key 'grid'"):
        ModelConfig.from_dict(data)
    with pytest.raises(InputError, match="not valid JSON"):
        ModelConfig.from_json("{'name': 1")


def test_invalid_values_are_refused_with_the_field_named():
    base = default_config("lung")
    with pytest.raises(InputError, match="'kind' must be one of lung, cardiac"):
        dataclasses.replace(base, kind="liver")
    with pytest.raises(InputError, match="grid.shape_kji.*not divisible"):
        dataclasses.replace(base, grid=GridConfig(shape_kji=(63, 128, 128), spacing_ijk_mm=(1, 1, 1)))
    with pytest.raises(InputError, match="intensity.window.*lo < hi"):
        IntensityConfig(method="window", window=(200.0, -1000.0))
    with pytest.raises(InputError, match="intensity.percentiles.*required"):
        IntensityConfig(method="percentile", window=None)
    with pytest.raises(InputError, match="population_mean"):
        AmplitudeConfig(name="diaphragm_si_mm", unit="mm", min=5.0, max=35.0, population_mean=50.0)
    with pytest.raises(InputError, match="vae.channels"):
        VAEConfig(down_factors=((1, 2, 2),), channels=(8, 16, 32), num_res_blocks=(0, 1))
    with pytest.raises(InputError, match="max_frames"):
        dataclasses.replace(base, max_frames=1)
    with pytest.raises(InputError, match="latent_scale"):
        dataclasses.replace(base, latent_scale=0.0)
    with pytest.raises(InputError, match="'tddm'"):
        dataclasses.replace(base, tddm={"x": float("nan")})
    with pytest.raises(InputError, match="unknown model kind"):
        default_config("brain")


# -- checkpoint ------------------------------------------------------------------------------------
def test_save_load_round_trip_is_bit_exact(tmp_path):
    config, modules = tiny_config(), tiny_modules()
    folder = save_checkpoint(tmp_path / "ckpt", config, modules)
    assert sorted(os.listdir(folder)) == sorted([CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME])
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary folder left behind
    loaded_config, states = load_checkpoint(folder)
    assert loaded_config == config
    assert list(states) == ["vae", "tddm", "i2v"]
    for name, module in modules.items():
        expected = module.state_dict()
        assert sorted(states[name]) == sorted(expected)
        for key, tensor in expected.items():
            got = states[name][key]
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), f"{name}.{key}"
    assert states["tddm"]["1.num_batches_tracked"].dtype == torch.int64
    # a path to a file inside the folder is accepted too
    assert load_checkpoint(folder / CONFIG_NAME)[0] == config


def test_loaded_weights_reproduce_the_network(tmp_path):
    config, modules = tiny_config(), tiny_modules()
    save_checkpoint(tmp_path / "ckpt", config, {"vae": modules["vae"]})
    loaded_config, states = load_checkpoint(tmp_path / "ckpt")
    torch.manual_seed(123)  # a differently initialised network
    fresh = KLAutoencoder.from_config(loaded_config.vae)
    assert load_module_weights(fresh, states["vae"], name="vae") is fresh
    x = torch.randn(1, 1, *config.grid.shape_kji)
    with torch.no_grad():
        assert torch.equal(fresh(x, sample=False)[0], modules["vae"].eval()(x, sample=False)[0])


def test_weights_that_do_not_fit_are_refused(tmp_path):
    save_checkpoint(tmp_path / "ckpt", tiny_config(), {"vae": tiny_modules()["vae"]})
    _, states = load_checkpoint(tmp_path / "ckpt")
    wider = KLAutoencoder(latent_channels=4, channels=(8, 24), down_factors=((1, 2, 2),), num_res_blocks=1)
    with pytest.raises(InputError, match="'vae' do not fit.*shape"):
        load_module_weights(wider, states["vae"], name="vae")
    partial = dict(states["vae"])
    partial.pop("enc_in.weight")
    same = KLAutoencoder.from_config(TINY_VAE)
    with pytest.raises(InputError, match="1 missing \\(e.g. 'enc_in.weight'\\)"):
        load_module_weights(same, partial, name="vae")
    load_module_weights(same, partial, strict=False)  # allowed when not strict
    assert torch.equal(same.dec_out.weight, states["vae"]["dec_out.weight"])


def test_existing_checkpoint_is_refused_without_overwrite(tmp_path):
    folder = save_checkpoint(tmp_path / "ckpt", tiny_config(), tiny_modules())
    before = sha256_file(folder / WEIGHTS_NAME)
    changed = dataclasses.replace(tiny_config(), latent_scale=2.0)
    with pytest.raises(OutputError, match="already exists"):
        save_checkpoint(folder, changed, {"vae": nn.Linear(2, 2)})
    assert sha256_file(folder / WEIGHTS_NAME) == before and load_checkpoint(folder)[0].latent_scale == 0.8731
    save_checkpoint(folder, changed, {"vae": nn.Linear(2, 2)}, overwrite=True)
    config, states = load_checkpoint(folder)
    assert config.latent_scale == 2.0 and list(states) == ["vae"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_a_failed_save_leaves_nothing_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="identifier"):
        save_checkpoint(tmp_path / "ckpt", tiny_config(), {"vae.encoder": nn.Linear(2, 2)})
    with pytest.raises(InputError, match="not a tensor"):
        save_checkpoint(tmp_path / "ckpt", tiny_config(), {"vae": {"w": [1.0, 2.0]}})
    assert os.listdir(tmp_path) == []

    folder = save_checkpoint(tmp_path / "ckpt", tiny_config(), tiny_modules())
    before = sha256_file(folder / WEIGHTS_NAME)

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr("MoDiffLib.models.checkpoint.save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "other", tiny_config(), tiny_modules())
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(folder, tiny_config(), tiny_modules(), overwrite=True)
    assert os.listdir(tmp_path) == ["ckpt"]
    assert sha256_file(folder / WEIGHTS_NAME) == before
    assert load_checkpoint(folder)[0] == tiny_config()


def test_missing_paths_and_files_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        load_checkpoint(stray)
    folder = save_checkpoint(tmp_path / "ckpt", tiny_config(), tiny_modules())
    (folder / MANIFEST_NAME).unlink()  # an unsealed (older) folder: the reader's own checks still hold
    (folder / WEIGHTS_NAME).unlink()
    with pytest.raises(InputError, match=f"has no {WEIGHTS_NAME}"):
        load_checkpoint(folder)
    (folder / CONFIG_NAME).unlink()
    with pytest.raises(InputError, match=f"has no {CONFIG_NAME}"):
        load_checkpoint(folder)


@pytest.mark.parametrize("keep", [0, 7, 100, 0.5, -1])
def test_truncated_weights_raise_input_error(tmp_path, keep):
    folder = save_checkpoint(tmp_path / "ckpt", tiny_config(), tiny_modules())
    (folder / MANIFEST_NAME).unlink()  # an unsealed (older) folder: the reader's own checks still hold
    weights = folder / WEIGHTS_NAME
    data = weights.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    weights.write_bytes(data[:cut])
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_checkpoint(folder)


def test_foreign_safetensors_and_bad_config_files_are_named(tmp_path):
    from safetensors.torch import save_file

    folder = save_checkpoint(tmp_path / "ckpt", tiny_config(), tiny_modules())
    (folder / MANIFEST_NAME).unlink()  # an unsealed (older) folder: the reader's own checks still hold
    save_file({"w": torch.zeros(2)}, str(folder / WEIGHTS_NAME))  # no MoDiff metadata
    with pytest.raises(InputError, match="not a MoDiff checkpoint"):
        load_checkpoint(folder)
    data = json.loads((folder / CONFIG_NAME).read_text())
    data["vae"]["depth"] = 3
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"config.json' is unusable: .*unknown key 'vae.depth'"):
        load_checkpoint(folder)
    data["vae"].pop("depth")
    data["format_version"] = 99
    (folder / CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(InputError, match="format_version 99"):
        load_checkpoint(folder)
    (folder / CONFIG_NAME).write_text('{"format_version": 1,')
    with pytest.raises(InputError, match="not valid JSON"):
        load_checkpoint(folder)


def test_sha256_file(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    assert sha256_file(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = tmp_path / "big.bin"
    payload = os.urandom(3 * 1024 + 17)
    big.write_bytes(payload)
    assert sha256_file(big, chunk_bytes=1024) == hashlib.sha256(payload).hexdigest()
    with pytest.raises(InputError, match="no such file"):
        sha256_file(tmp_path / "missing.bin")
