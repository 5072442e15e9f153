"""Training configuration: a TOML file, command-line overrides, strict checks.

A config file has these tables (every key optional except ``[model] kind`` and ``[data] spec``)::

    name = "lung-phantom"          # run name, for logs and provenance
    seed = 0                       # network init and the whole batch order

    [model]                        # default_config(kind) with these fields replaced
    kind = "lung"                  # lung | cardiac
    max_frames = 16                # any ModelConfig field: grid, intensity, vae, tddm, i2v,
    [model.vae]                    # amplitude ("none" = no amplitude condition), diffusion,
    channels = [16, 32, 64]        # sampling_steps, name, version, max_frames, modality

    [data]
    spec = "phantom:lung:64"       # MoDiffLib.datasets.open_dataset spec
    options = { num_frames = [6, 16] }   # keyword arguments of the data set
    subsample = "cycle"            # cycle | interval | prefix | none (see training.data)
    cache_dtype = "float16"        # frames cached on the model grid as float16 or float32

    [validation]
    spec = "phantom:lung:2:val"    # held-out cases ("" = no validation)
    options = { num_frames = 10 }
    every = 1000                   # steps between validation passes (and one at the end)
    num_cases = 2
    sampling_steps = 10
    seed = 0

    [vae] / [tddm] / [i2v]         # one table per stage: StageConfig fields

Overrides on the command line use dotted keys and TOML values: ``tddm.steps=200``,
``data.spec=phantom:lung:8``, ``model.grid.shape_kji=[16,32,32]``; a value that is not valid TOML
is taken as a string. An unknown key, in the file or in an override, raises
:class:`~MoDiffLib.errors.InputError` naming the key and where it came from, before anything
else happens.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from MoDiffLib.errors import InputError
from MoDiffLib.models.config import ModelConfig, default_config

STAGES = ("vae", "tddm", "i2v")
SUBSAMPLE_MODES = ("cycle", "interval", "prefix", "none")
CACHE_DTYPES = ("float16", "float32")
#: ModelConfig fields that training measures or writes; a config file may not set them.
MEASURED_MODEL_FIELDS = ("latent_scale", "field_scale", "training", "format_version")
#: Keys that may change between an interrupted run and its --resume (they do not touch the weights).
RESUME_FREE_KEYS = ("validation", "log_every", "checkpoint_every")


@dataclass(frozen=True)
class StageConfig:
    """Optimisation settings shared by the three stages.

    Attributes:
        steps: optimiser steps of the stage (the cosine schedule ends here).
        batch_size: GLOBAL batch (samples per step over all processes); must divide by the
            number of processes. Keeping it global makes the batch order independent of it.
        lr: peak learning rate of AdamW.
        warmup_steps: linear warm-up from lr/warmup_steps to lr.
        weight_decay: AdamW weight decay.
        ema_decay: decay of the exponential moving average of the weights (checkpoints and
            validation use the average).
        grad_clip: maximum global gradient norm.
        checkpoint_every: steps between checkpoints (release folder + resumable state).
        log_every: steps between progress lines and rows of log.csv.
    """

    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    log_every: int = 10


@dataclass(frozen=True)
class VAEStageConfig(StageConfig):
    """The frame VAE: L1 + ``kl_weight`` KL (+ ``gradient_weight`` gradient L1).

    ``latent_scale_frames``: frames (spread evenly over the cached cases) from which
    ``compute_latent_scale`` measures the latent scale after training.
    """

    lr: float = 2e-4
    kl_weight: float = 1e-6
    gradient_weight: float = 0.0
    latent_scale_frames: int = 64


@dataclass(frozen=True)
class TDDMStageConfig(StageConfig):
    """TDDM on scaled latent differences; amplitudes are dropped with ``amplitude_dropout``."""

    amplitude_dropout: float = 0.2


@dataclass(frozen=True)
class I2VStageConfig(StageConfig):
    """The I2V denoiser, conditioned on ground-truth fields, or with probability
    ``tddm_field_prob`` per step on fields sampled from the run's TDDM in ``tddm_field_steps``
    DDIM steps (closer to inference, slower)."""

    amplitude_dropout: float = 0.2
    tddm_field_prob: float = 0.0
    tddm_field_steps: int = 10


@dataclass(frozen=True)
class DataConfig:
    """Training cases: ``open_dataset(spec, **options)``; see :mod:`training.data` for
    ``subsample``."""

    spec: str
    options: dict[str, Any] = field(default_factory=dict)
    subsample: str = "cycle"
    cache_dtype: str = "float16"


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out cases generated every ``every`` steps and at the end of each stage."""

    spec: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    every: int = 1000
    num_cases: int = 2
    sampling_steps: int = 10
    seed: int = 0


STAGE_CLASSES = {"vae": VAEStageConfig, "tddm": TDDMStageConfig, "i2v": I2VStageConfig}
SECTION_CLASSES = {"data": DataConfig, "validation": ValidationConfig, **STAGE_CLASSES}
TOP_KEYS = ("name", "seed", "model", *SECTION_CLASSES)


@dataclass(frozen=True)
class TrainConfig:
    """A validated training configuration.

    ``table`` is the merged TOML table (file plus overrides), kept for provenance and for the
    check that a resumed run uses the same settings; ``source`` names the file.
    """

    name: str
    seed: int
    model: ModelConfig
    data: DataConfig
    validation: ValidationConfig
    vae: VAEStageConfig
    tddm: TDDMStageConfig
    i2v: I2VStageConfig
    source: str
    table: dict[str, Any]

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)

    def resolved(self) -> dict[str, Any]:
        """Every setting with its defaults filled in, as JSON values (provenance, resume check)."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, "model": self.model.to_dict()}
        for key in SECTION_CLASSES:
            out[key] = json_table(dataclasses.asdict(getattr(self, key)))
        return out


# -- loading -------------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a TOML config, apply ``KEY=VALUE`` overrides and validate everything.

    Raises:
        InputError: unreadable file, malformed TOML, an unknown key, a value of the wrong type
            or out of range, or a model section that makes an invalid ModelConfig. The message
            names the key and the file (or the override).
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"training config '{file}' does not exist")
    try:
        table = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read training config '{file}' ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"training config '{file}' is not valid TOML ({e})") from None
    config = _build(table, f"'{file}'", str(file))
    for text in overrides:
        table = apply_override(table, text)
        config = _build(table, f"command-line override '{text}'", str(file))
    return config


def apply_override(table: dict[str, Any], text: str) -> dict[str, Any]:
    """A copy of ``table`` with one ``dotted.key=value`` override applied."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part.strip() for part in key.split(".")):
        raise InputError(f"override '{text}' must read KEY=VALUE, e.g. tddm.steps=200")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    out = copy.deepcopy(table)
    node = out
    parts = [p.strip() for p in key.split(".")]
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise InputError(f"override '{text}': '{part}' is a value, not a table")
        node = child
    node[parts[-1]] = value
    return out


def _build(table: dict[str, Any], where: str, source: str) -> TrainConfig:
    _known(table, TOP_KEYS, "", where)
    name = _typed(table.get("name", Path(source).stem), str, "name", where)
    seed = _typed(table.get("seed", 0), int, "seed", where)
    if seed < 0:
        raise InputError(f"key 'seed' in {where} must be non-negative, got {seed}")
    sections = {}
    for key, cls in SECTION_CLASSES.items():
        sections[key] = _section(cls, table.get(key, {}), key, where)
    if not sections["data"].spec.strip():
        raise InputError(f"key 'data.spec' in {where} must name the training data (e.g. phantom:lung:64)")
    model = build_model_config(table.get("model"), where)
    config = TrainConfig(name=name, seed=seed, model=model, source=source, table=json_table(table), **sections)
    _check_values(config, where)
    return config


def build_model_config(section: Any, where: str) -> ModelConfig:
    """``default_config(kind)`` with the ``[model]`` table's fields replaced (validated)."""
    if not isinstance(section, dict) or "kind" not in section:
        raise InputError(f"{where} needs a [model] table with a 'kind' (lung or cardiac)")
    section = dict(section)
    kind = section.pop("kind")
    for key in MEASURED_MODEL_FIELDS:
        if key in section:
            raise InputError(f"key 'model.{key}' in {where} is measured or written by training; remove it")
    try:
        base = default_config(str(kind)).to_dict()
    except InputError as e:
        raise InputError(f"key 'model.kind' in {where}: {e}") from None
    if section.get("amplitude") == "none":
        base["amplitude"] = None
        section.pop("amplitude")
    merged = _merge(base, section)
    try:
        return ModelConfig.from_dict(merged)
    except InputError as e:
        raise InputError(f"[model] table in {where}: {e}") from None


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _section(cls: type, data: Any, name: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"'{name}' in {where} must be a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _known(data, tuple(fields), name, where)
    values = {}
    for key, f in fields.items():
        if key in data:
            values[key] = _typed(data[key], _field_type(f), f"{name}.{key}", where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise InputError(f"{where} lacks the required key '{name}.{key}'")
    return cls(**values)


def _field_type(f: dataclasses.Field) -> type:
    text = str(f.type)
    for name, t in (("dict", dict), ("int", int), ("float", float), ("str", str)):
        if text.startswith(name):
            return t
    raise TypeError(f"no type check for field {f.name} ({text})")  # pragma: no cover - schema bug


def _typed(value: Any, kind: type, key: str, where: str) -> Any:
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        noun = {int: "an integer", float: "a number", str: "a string", dict: "a table"}[kind]
        raise InputError(f"key '{key}' in {where} must be {noun}, got {value!r}")
    return value


def _known(data: Mapping[str, Any], allowed: tuple[str, ...], prefix: str, where: str) -> None:
    for key in data:
        if key not in allowed:
            path = f"{prefix}.{key}" if prefix else key
            scope = f"[{prefix}]" if prefix else "the top level"
            raise InputError(
                f"unknown key '{path}' in {where} (known keys of {scope}: {', '.join(allowed)})"
            )


def _check_values(c: TrainConfig, where: str) -> None:
    def need(ok: bool, key: str, rule: str, value: Any) -> None:
        if not ok:
            raise InputError(f"key '{key}' in {where} {rule}, got {value!r}")

    need(c.data.subsample in SUBSAMPLE_MODES, "data.subsample", f"must be one of {', '.join(SUBSAMPLE_MODES)}",
         c.data.subsample)
    need(c.data.cache_dtype in CACHE_DTYPES, "data.cache_dtype", f"must be one of {', '.join(CACHE_DTYPES)}",
         c.data.cache_dtype)
    v = c.validation
    for key in ("every", "num_cases", "sampling_steps"):
        need(getattr(v, key) >= 1, f"validation.{key}", "must be at least 1", getattr(v, key))
    need(v.sampling_steps <= c.model.diffusion.num_train_timesteps, "validation.sampling_steps",
         "must not exceed model.diffusion.num_train_timesteps", v.sampling_steps)
    need(v.seed >= 0, "validation.seed", "must be non-negative", v.seed)
    for stage in STAGES:
        s = c.stage(stage)
        for key in ("steps", "batch_size", "checkpoint_every", "log_every"):
            need(getattr(s, key) >= 1, f"{stage}.{key}", "must be at least 1", getattr(s, key))
        need(s.warmup_steps >= 0, f"{stage}.warmup_steps", "must be non-negative", s.warmup_steps)
        for key in ("lr", "grad_clip"):
            need(getattr(s, key) > 0, f"{stage}.{key}", "must be positive", getattr(s, key))
        need(s.weight_decay >= 0, f"{stage}.weight_decay", "must be non-negative", s.weight_decay)
        need(0 <= s.ema_decay < 1, f"{stage}.ema_decay", "must lie in [0, 1)", s.ema_decay)
    need(c.vae.kl_weight >= 0, "vae.kl_weight", "must be non-negative", c.vae.kl_weight)
    need(c.vae.gradient_weight >= 0, "vae.gradient_weight", "must be non-negative", c.vae.gradient_weight)
    need(c.vae.latent_scale_frames >= 1, "vae.latent_scale_frames", "must be at least 1", c.vae.latent_scale_frames)
    for stage in ("tddm", "i2v"):
        p = c.stage(stage).amplitude_dropout
        need(0 <= p <= 1, f"{stage}.amplitude_dropout", "must lie in [0, 1]", p)
    need(0 <= c.i2v.tddm_field_prob <= 1, "i2v.tddm_field_prob", "must lie in [0, 1]", c.i2v.tddm_field_prob)
    need(1 <= c.i2v.tddm_field_steps <= c.model.diffusion.num_train_timesteps, "i2v.tddm_field_steps",
         "must lie in 1..model.diffusion.num_train_timesteps", c.i2v.tddm_field_steps)


def json_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """The table as plain JSON values (TOML dates become strings)."""
    return json.loads(json.dumps(table, default=str))


def resume_differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two tables, ignoring :data:`RESUME_FREE_KEYS`."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_FREE_KEYS:
            continue
        path = f"{prefix}.{key}" if prefix else key
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += resume_differences(a, b, path)
        elif a != b:
            out.append(path)
    return out
