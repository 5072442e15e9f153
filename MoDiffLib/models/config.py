"""Model configuration: every fact a checkpoint needs besides its weights.

A :class:`ModelConfig` is the one place for the model grid, the intensity recipe, the frame
limit, the network hyper-parameters, the latent and field scales, the amplitude condition, the
diffusion schedule and the training provenance (STYLE.md: "one place for each fact"). It is
stored as ``config.json`` beside the weights (see :mod:`MoDiffLib.models.checkpoint`).

All classes are frozen dataclasses validated on construction, so a config that exists is
consistent; change one with :func:`dataclasses.replace` (which validates again). JSON I/O is
strict: an unknown key anywhere raises :class:`~MoDiffLib.errors.InputError` naming the key, a
key whose default would silently change the result (:data:`REQUIRED_KEYS`, per family) must be
present, other missing keys take their defaults, and ``format_version`` must equal
:data:`CONFIG_FORMAT_VERSION`. The dataclass defaults serve code that builds configs
(:func:`default_config`); a ``config.json`` read from disk must state what was trained.

This module imports no torch; the networks read their arguments from ``VAEConfig.kwargs()``,
``ModelConfig.tddm`` and ``ModelConfig.i2v`` (plain dictionaries of constructor arguments).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InputError
from ..volume import MAX_VOXELS

#: Version of the ``config.json`` layout that this code reads and writes.
CONFIG_FORMAT_VERSION = 1

#: Default reverse steps per sampler (TDDM and I2V each). Measured with `modiff bench` on the
#: 2-core CPU: the default lung model generates 10 frames in about 28 s at 20 steps (README).
DEFAULT_SAMPLING_STEPS = 20

KINDS = ("lung", "cardiac")
MODALITIES = ("CT", "MR")
#: ``window``: clip to [lo, hi] input units, map linearly to [-1, 1].
#: ``percentile``: the same with lo/hi taken per volume at the given percentiles (MR).
INTENSITY_METHODS = ("window", "percentile")
BETA_SCHEDULES = ("linear", "scaled_linear", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: ``latent``: the paper's variant (VAE latents, intensity differences, I2V).
#: ``motion``: TDDM over displacement differences on an anatomy grid, residual on the population
#: motion, frames by warping the input (:mod:`MoDiffLib.motion_pipeline`).
FAMILIES = ("latent", "motion")
#: Largest model grid (voxels of one frame): 256^3, 16 times the paper's 64 x 128 x 128 grid. A
#: config is checked against it (and the frame stack against MAX_VOXELS) when it is read, before
#: any network or buffer is built, so a hostile ``config.json`` fails in one line, not after
#: minutes and gigabytes.
MAX_GRID_VOXELS = 256**3
#: Largest latent of the whole frame stack (channels x latent voxels x max_frames values).
MAX_LATENT_VALUES = 1 << 28

#: Keys a ``config.json`` must hold, per family, beyond those without a default (name, version,
#: kind, modality, grid, intensity). Each is a measured or trained fact whose dataclass default
#: (1.0 scales, the default schedule, default networks, no amplitude condition) would let a
#: damaged config run with silently wrong results. ``family`` itself is not required: the
#: bundled phantom models predate it and mean ``latent``. Nested keys are ``table.key``.
_COMMON_REQUIRED = (
    "max_frames", "tddm", "field_scale", "amplitude", "sampling_steps",
    "intensity.method", "intensity.window", "intensity.percentiles", "intensity.unit",
    "diffusion", "diffusion.num_train_timesteps", "diffusion.beta_schedule", "diffusion.beta_start",
    "diffusion.beta_end", "diffusion.prediction_type",
)
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "latent": _COMMON_REQUIRED + (
        "latent_scale", "i2v", "vae", "vae.latent_channels", "vae.down_factors", "vae.channels",
        "vae.num_res_blocks", "vae.norm_num_groups",
    ),
    # What training/motion.py reads without a default (residual and prompt_antialias have
    # documented defaults in MoDiffLib.motion_pipeline and are not written by every trainer).
    "motion": _COMMON_REQUIRED + ("motion", "motion.num_phases", "motion.population_through_origin"),
}


# -- helpers -----------------------------------------------------------------------------------------
def _fail(where: str, problem: str) -> InputError:
    return InputError(f"model config field '{where}' {problem}")


def _set(obj: Any, name: str, value: Any) -> None:
    """Assign to a frozen dataclass during ``__post_init__`` (normalised values)."""
    object.__setattr__(obj, name, value)


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, f"must be at least {minimum}, got {value}")
    return value


def _float(value: Any, where: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise _fail(where, f"must be positive, got {value}")
    return float(value)


def _str(value: Any, where: str, choices: tuple[str, ...] | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(where, f"must be a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _numbers(value: Any, where: str, length: int, kind: type) -> tuple:
    """A tuple of ``length`` ints or floats (``kind``) from a JSON list or a tuple."""
    noun = "integers" if kind is int else "numbers"
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise _fail(where, f"must be a list of {length} {noun}, got {value!r}")
    for v in value:
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if not ok or (kind is int and float(v) != int(v)):
            raise _fail(where, f"must be a list of {length} {noun}, got {value!r}")
    return tuple(kind(v) for v in value)


def _json_object(value: Any, where: str) -> dict:
    """A JSON-normalised copy of a dictionary (tuples become lists, as after a round trip)."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _fail(where, f"must be a JSON object with string keys, got {value!r}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise _fail(where, f"must hold JSON values only ({e})") from None


def _check_keys(cls: type, data: Any, where: str) -> dict:
    """The JSON object ``data`` for dataclass ``cls``: unknown keys and missing required keys fail."""
    label = where or "model config"
    if not isinstance(data, Mapping):
        raise InputError(f"{label} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            path = f"{where}.{key}" if where else str(key)
            raise InputError(f"model config has an unknown key '{path}'")
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            path = f"{where}.{name}" if where else name
            raise InputError(f"model config lacks the required key '{path}'")
    return dict(data)


def _check_required(data: Mapping[str, Any]) -> None:
    """Refuse a config lacking one of its family's :data:`REQUIRED_KEYS`, naming the key."""
    family = data.get("family", "latent")
    if family not in REQUIRED_KEYS:
        return  # ModelConfig reports the bad family
    for key in REQUIRED_KEYS[family]:
        table, _, sub = key.partition(".")
        if sub:
            # A table of the wrong type is reported by its own from_dict, naming it.
            present = not isinstance(data.get(table), Mapping) or sub in data[table]
        else:
            present = table in data
        if not present:
            raise InputError(f"model config lacks the required key '{key}' (a {family} model must state it)")


def _check_format_version(version: Any) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version != CONFIG_FORMAT_VERSION:
        raise InputError(
            f"model config has format_version {version!r}, but this MoDiff reads version "
            f"{CONFIG_FORMAT_VERSION} only (use a matching MoDiff release)"
        )


# -- parts ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridConfig:
    """The voxel grid the model works on; inputs are resampled to it.

    Attributes:
        shape_kji: array shape (K slices, J rows, I columns) = the VAE's (D, H, W).
        spacing_ijk_mm: voxel size in mm, (i, j, k) order as everywhere in MoDiff.
    """

    shape_kji: tuple[int, int, int]
    spacing_ijk_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        shape = _numbers(self.shape_kji, "grid.shape_kji", 3, int)
        if min(shape) < 1:
            raise _fail("grid.shape_kji", f"must hold positive sizes, got {list(shape)}")
        check_grid_size(shape, "grid.shape_kji")
        spacing = _numbers(self.spacing_ijk_mm, "grid.spacing_ijk_mm", 3, float)
        if min(spacing) <= 0:
            raise _fail("grid.spacing_ijk_mm", f"must hold positive spacings, got {list(spacing)}")
        _set(self, "shape_kji", shape)
        _set(self, "spacing_ijk_mm", spacing)

    @classmethod
    def from_dict(cls, data: Any) -> "GridConfig":
        return cls(**_check_keys(cls, data, "grid"))


def check_grid_size(shape_kji: tuple[int, ...], where: str) -> None:
    """Refuse a model grid of more than :data:`MAX_GRID_VOXELS` voxels; ``where`` names the key."""
    voxels = math.prod(int(s) for s in shape_kji)
    if voxels > MAX_GRID_VOXELS:
        raise _fail(where, f"{list(shape_kji)} declares {voxels} voxels; MoDiff models work on at most "
                           f"{MAX_GRID_VOXELS} (256^3)")


@dataclass(frozen=True)
class IntensityConfig:
    """How input intensities become network values in [-1, 1].

    ``method == "window"``: clip to ``window = (lo, hi)`` in input units (HU for CT), map lo to
    -1 and hi to +1 linearly. ``method == "percentile"``: the same with lo and hi measured per
    volume at ``percentiles = (p_lo, p_hi)`` (MR has no absolute unit); ``window`` stays None.
    """

    method: str = "window"
    window: tuple[float, float] | None = (-1000.0, 600.0)
    percentiles: tuple[float, float] | None = None
    unit: str = "HU"

    def __post_init__(self) -> None:
        method = _str(self.method, "intensity.method", INTENSITY_METHODS)
        _str(self.unit, "intensity.unit")
        if method == "window":
            if self.window is None:
                raise _fail("intensity.window", "is required when method is 'window'")
            if self.percentiles is not None:
                raise _fail("intensity.percentiles", "must be null when method is 'window'")
            lo, hi = _numbers(self.window, "intensity.window", 2, float)
            if not lo < hi:
                raise _fail("intensity.window", f"must have lo < hi, got [{lo}, {hi}]")
            _set(self, "window", (lo, hi))
        else:
            if self.percentiles is None:
                raise _fail("intensity.percentiles", "is required when method is 'percentile'")
            if self.window is not None:
                raise _fail("intensity.window", "must be null when method is 'percentile'")
            lo, hi = _numbers(self.percentiles, "intensity.percentiles", 2, float)
            if not 0.0 <= lo < hi <= 100.0:
                raise _fail("intensity.percentiles", f"must satisfy 0 <= lo < hi <= 100, got [{lo}, {hi}]")
            _set(self, "percentiles", (lo, hi))

    @classmethod
    def from_dict(cls, data: Any) -> "IntensityConfig":
        return cls(**_check_keys(cls, data, "intensity"))


@dataclass(frozen=True)
class VAEConfig:
    """Constructor arguments of :class:`~MoDiffLib.models.vae.KLAutoencoder` (one frame, 1 channel).

    Attributes:
        latent_channels: C_lat.
        down_factors: per level, the (D, H, W) downsampling factor.
        channels: widths per level, full resolution first (``len(down_factors) + 1`` values).
        num_res_blocks: residual blocks per level (same length as ``channels``).
        norm_num_groups: GroupNorm groups (divides every width).
    """

    latent_channels: int = 8
    down_factors: tuple[tuple[int, int, int], ...] = ((2, 2, 2), (1, 2, 2))
    channels: tuple[int, ...] = (16, 32, 64)
    num_res_blocks: tuple[int, ...] = (0, 1, 1)
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        _set(self, "latent_channels", _int(self.latent_channels, "vae.latent_channels", 1))
        groups = _int(self.norm_num_groups, "vae.norm_num_groups", 1)
        _set(self, "norm_num_groups", groups)
        if not isinstance(self.down_factors, (list, tuple)) or not self.down_factors:
            raise _fail("vae.down_factors", f"must be a non-empty list of [D, H, W] factors, got {self.down_factors!r}")
        factors = tuple(_numbers(level, "vae.down_factors", 3, int) for level in self.down_factors)
        for f in factors:
            if min(f) < 1 or max(f) > 8:
                raise _fail("vae.down_factors", f"must hold factors in 1..8, got {list(f)}")
        _set(self, "down_factors", factors)
        levels = len(factors) + 1
        widths = _numbers(self.channels, "vae.channels", levels, int)
        if any(c < 1 or c % groups for c in widths):
            raise _fail("vae.channels", f"must be positive multiples of norm_num_groups={groups}, got {list(widths)}")
        _set(self, "channels", widths)
        blocks = _numbers(self.num_res_blocks, "vae.num_res_blocks", levels, int)
        if min(blocks) < 0:
            raise _fail("vae.num_res_blocks", f"must be non-negative, got {list(blocks)}")
        _set(self, "num_res_blocks", blocks)

    @property
    def total_factor(self) -> tuple[int, int, int]:
        """Product of the level factors per axis (D, H, W)."""
        return tuple(math.prod(level[a] for level in self.down_factors) for a in range(3))  # type: ignore[return-value]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the VAE constructor."""
        return {
            "latent_channels": self.latent_channels,
            "channels": self.channels,
            "down_factors": self.down_factors,
            "num_res_blocks": self.num_res_blocks,
            "norm_num_groups": self.norm_num_groups,
        }

    @classmethod
    def from_dict(cls, data: Any) -> "VAEConfig":
        return cls(**_check_keys(cls, data, "vae"))


@dataclass(frozen=True)
class AmplitudeConfig:
    """The motion amplitude the user may ask for (a scalar condition), e.g. diaphragm travel.

    Attributes:
        name: what is measured, unit in the name, e.g. ``diaphragm_si_mm`` or ``ejection_fraction_pct``.
        unit: display unit, e.g. ``mm`` or ``%``.
        min, max: the range the model was trained on; requests outside are refused.
        population_mean: the value used when the user asks for none.
    """

    name: str
    unit: str
    min: float
    max: float
    population_mean: float

    def __post_init__(self) -> None:
        _str(self.name, "amplitude.name")
        _str(self.unit, "amplitude.unit")
        lo = _float(self.min, "amplitude.min")
        hi = _float(self.max, "amplitude.max")
        mean = _float(self.population_mean, "amplitude.population_mean")
        _set(self, "min", lo)
        _set(self, "max", hi)
        _set(self, "population_mean", mean)
        if not lo < hi:
            raise _fail("amplitude", f"must have min < max, got [{lo}, {hi}]")
        if not lo <= mean <= hi:
            raise _fail("amplitude.population_mean", f"must lie in [{lo}, {hi}], got {mean}")

    @classmethod
    def from_dict(cls, data: Any) -> "AmplitudeConfig":
        return cls(**_check_keys(cls, data, "amplitude"))


@dataclass(frozen=True)
class DiffusionConfig:
    """The training noise schedule shared by both denoisers (paper eq. 1-2)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        _set(self, "num_train_timesteps", _int(self.num_train_timesteps, "diffusion.num_train_timesteps", 2))
        _str(self.beta_schedule, "diffusion.beta_schedule", BETA_SCHEDULES)
        start = _float(self.beta_start, "diffusion.beta_start", positive=True)
        end = _float(self.beta_end, "diffusion.beta_end", positive=True)
        if not start < end < 1.0:
            raise _fail("diffusion", f"needs 0 < beta_start < beta_end < 1, got {start} and {end}")
        _set(self, "beta_start", start)
        _set(self, "beta_end", end)
        _str(self.prediction_type, "diffusion.prediction_type", PREDICTION_TYPES)

    @classmethod
    def from_dict(cls, data: Any) -> "DiffusionConfig":
        return cls(**_check_keys(cls, data, "diffusion"))


# -- the whole model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    """Everything about a released Mo-Diff model except its weights.

    Attributes:
        name: model identifier, e.g. ``modiff-lung``.
        version: release version of the model, e.g. ``0.1.0``.
        kind: ``lung`` (respiration) or ``cardiac``.
        modality: ``CT`` or ``MR``.
        grid: the model grid (inputs are resampled to it).
        intensity: the intensity recipe to [-1, 1].
        max_frames: F, the padded temporal length; a request may ask for 2..F frames.
        vae: frame VAE hyper-parameters.
        tddm, i2v: constructor keyword arguments of the two denoisers (empty = their defaults).
        latent_scale: multiply VAE latents by this before diffusion (1 / latent std).
        field_scale: multiply temporal differential fields by this before diffusion.
        amplitude: the amplitude condition, or None for a model without one.
        diffusion: the training noise schedule.
        sampling_steps: default number of sampling (DDIM) steps at inference.
        training: provenance, free form (command, data, seeds, steps, time, hardware, git commit).
        family: ``latent`` (the paper's variant) or ``motion`` (see :data:`FAMILIES`). For
            ``motion`` the grid is the anatomy grid (its shape; the spacing is nominal: the grid
            spans each input's anatomy box), ``tddm`` holds the MotionTDDM arguments, ``field_scale``
            scales the residual displacement differences and the VAE and I2V settings are unused.
        motion: settings of the ``motion`` family (``num_phases`` of the stored population pattern).
        format_version: layout version of this JSON; must be :data:`CONFIG_FORMAT_VERSION`.
    """

    name: str
    version: str
    kind: str
    modality: str
    grid: GridConfig
    intensity: IntensityConfig
    max_frames: int = 16
    vae: VAEConfig = field(default_factory=VAEConfig)
    tddm: dict[str, Any] = field(default_factory=dict)
    i2v: dict[str, Any] = field(default_factory=dict)
    latent_scale: float = 1.0
    field_scale: float = 1.0
    amplitude: AmplitudeConfig | None = None
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling_steps: int = DEFAULT_SAMPLING_STEPS
    training: dict[str, Any] = field(default_factory=dict)
    family: str = "latent"
    motion: dict[str, Any] = field(default_factory=dict)
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_format_version(self.format_version)
        _str(self.name, "name")
        _str(self.version, "version")
        _str(self.kind, "kind", KINDS)
        _str(self.modality, "modality", MODALITIES)
        for name, cls in (("grid", GridConfig), ("intensity", IntensityConfig), ("vae", VAEConfig),
                          ("diffusion", DiffusionConfig)):
            if not isinstance(getattr(self, name), cls):
                raise _fail(name, f"must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.amplitude is not None and not isinstance(self.amplitude, AmplitudeConfig):
            raise _fail("amplitude", f"must be an AmplitudeConfig or None, got {type(self.amplitude).__name__}")
        _set(self, "max_frames", _int(self.max_frames, "max_frames", 2))
        _set(self, "sampling_steps", _int(self.sampling_steps, "sampling_steps", 1))
        if self.sampling_steps > self.diffusion.num_train_timesteps:
            raise _fail("sampling_steps", f"must not exceed diffusion.num_train_timesteps, got {self.sampling_steps}")
        _set(self, "latent_scale", _float(self.latent_scale, "latent_scale", positive=True))
        _set(self, "field_scale", _float(self.field_scale, "field_scale", positive=True))
        _str(self.family, "family", FAMILIES)
        for name in ("tddm", "i2v", "training", "motion"):
            _set(self, name, _json_object(getattr(self, name), name))
        shape, factor = self.grid.shape_kji, self.vae.total_factor
        if self.family == "latent" and any(s % f for s, f in zip(shape, factor)):
            raise _fail(
                "grid.shape_kji",
                f"{list(shape)} is not divisible by the VAE downsampling {list(factor)} (per D, H, W)",
            )
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The frame stack and its latent against the budgets, before anything is allocated."""
        stack = self.max_frames * math.prod(self.grid.shape_kji)
        if stack > MAX_VOXELS:
            raise _fail("max_frames", f"{self.max_frames} frames of the {list(self.grid.shape_kji)} grid are "
                                      f"{stack} voxels; at most {MAX_VOXELS} are supported")
        if self.family == "latent":
            latent = self.vae.latent_channels * math.prod(self.latent_shape) * self.max_frames
            if latent > MAX_LATENT_VALUES:
                raise _fail("vae.latent_channels", f"{self.vae.latent_channels} channels of {list(self.latent_shape)} "
                                                   f"latents x {self.max_frames} frames are {latent} values; at "
                                                   f"most {MAX_LATENT_VALUES} are supported")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Latent (d, h, w) of one frame on the model grid."""
        return tuple(s // f for s, f in zip(self.grid.shape_kji, self.vae.total_factor))  # type: ignore[return-value]

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (tuples become lists, ``format_version`` first); inverse of
        :meth:`from_dict`."""
        data = dataclasses.asdict(self)
        data = {"format_version": data.pop("format_version"), **data}
        return json.loads(json.dumps(data, allow_nan=False))

    @classmethod
    def from_dict(cls, data: Any) -> "ModelConfig":
        """Parse and validate a dictionary read from JSON (strict: unknown keys fail, and
        ``format_version`` is required and checked before anything else)."""
        if isinstance(data, Mapping):
            if "format_version" not in data:
                raise InputError("model config lacks the required key 'format_version'")
            _check_format_version(data["format_version"])
        d = _check_keys(cls, data, "")
        _check_required(d)
        d["grid"] = GridConfig.from_dict(d["grid"])
        d["intensity"] = IntensityConfig.from_dict(d["intensity"])
        if "vae" in d:
            d["vae"] = VAEConfig.from_dict(d["vae"])
        if "diffusion" in d:
            d["diffusion"] = DiffusionConfig.from_dict(d["diffusion"])
        if d.get("amplitude") is not None:
            d["amplitude"] = AmplitudeConfig.from_dict(d["amplitude"])
        return cls(**d)

    def to_json(self) -> str:
        """Indented JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        """Parse JSON text (InputError on malformed JSON or an invalid config)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"model config is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
        return cls.from_dict(data)


def default_config(kind: str) -> ModelConfig:
    """Defaults for a ``lung`` (4D CT) or ``cardiac`` (cine MR) model before training.

    Lung: 128 x 128 x 64 voxels (I x J x K) of 2.5 x 2.5 x 4 mm, HU window [-1000, 600], VAE
    factors (2,2,2) then (1,2,2) -> 32^3 latents, diaphragm SI amplitude 5-35 mm (XCAT normal 20).
    Cardiac: 128 x 128 x 16 of 1.5 x 1.5 x 8 mm, 0.5-99.5 percentile window, in-plane-only VAE
    factors -> 32 x 32 x 16 latents, ejection fraction 10-80 % (normal about 60).
    ``latent_scale`` and ``field_scale`` stay 1.0 until training measures them.
    """
    if kind == "lung":
        return ModelConfig(
            name="modiff-lung",
            version="0.1.0",
            kind="lung",
            modality="CT",
            grid=GridConfig(shape_kji=(64, 128, 128), spacing_ijk_mm=(2.5, 2.5, 4.0)),
            intensity=IntensityConfig(method="window", window=(-1000.0, 600.0), unit="HU"),
            max_frames=16,
            vae=VAEConfig(down_factors=((2, 2, 2), (1, 2, 2))),
            amplitude=AmplitudeConfig(
                name="diaphragm_si_mm", unit="mm", min=5.0, max=35.0, population_mean=20.0
            ),
        )
    if kind == "cardiac":
        return ModelConfig(
            name="modiff-cardiac",
            version="0.1.0",
            kind="cardiac",
            modality="MR",
            grid=GridConfig(shape_kji=(16, 128, 128), spacing_ijk_mm=(1.5, 1.5, 8.0)),
            intensity=IntensityConfig(method="percentile", window=None, percentiles=(0.5, 99.5), unit="a.u."),
            max_frames=16,
            vae=VAEConfig(down_factors=((1, 2, 2), (1, 2, 2))),
            amplitude=AmplitudeConfig(
                name="ejection_fraction_pct", unit="%", min=10.0, max=80.0, population_mean=60.0
            ),
        )
    raise InputError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
