"""``MoDiffPipeline``: one 3D volume + a frame count N -> an N-frame cine with the input's geometry.

This is the one place where preprocessing, the frame VAE, TDDM, the I2V denoiser and sampling
meet (MONAI's "inferer" role). Stages, each reported through ``progress``:

``load`` -> ``preprocess`` (resample to the model grid, normalise) -> ``encode`` (prompt latent)
-> ``tddm`` (temporal differential fields) -> ``i2v`` (frame latents guided by the fields)
-> ``decode`` -> ``postprocess`` (back onto the input grid, frame 0 = input: the input warped by
the motion of the generated frames, or their intensity differences added to it; see
:mod:`MoDiffLib.motion.transfer`). Their labels and weights are :mod:`MoDiffLib.progress`'s
(:data:`~MoDiffLib.progress.LATENT_GENERATION`).

Cancel (a ``threading.Event`` or a callable, see :func:`MoDiffLib.progress.as_cancel_flag`) is
checked before every sampling step and between stages, and raises
:class:`~MoDiffLib.errors.Cancelled`; the pipeline writes nothing, so a cancel leaves nothing behind.
"""

from __future__ import annotations

import operator
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .frame_limits import check_frame_count
from .models.checkpoint import load_checkpoint, load_module_weights, save_checkpoint
from .models.config import ModelConfig
from .models.diffusion import NoiseSchedule, sample_fields, sample_latents
from .models.i2v import I2VDenoiser
from .models.tddm import TDDM
from .models.vae import KLAutoencoder
from .motion.transfer import transfer_motion
from .preprocess import IntensityWindow, model_grid, to_model, transfer_differences, window_for
from .progress import LATENT_GENERATION, ProgressCallback, StageReporter, check_callbacks, check_cancel
from .volume import Volume, VolumeSequence

#: Orientation of every model grid: axial slices as a CT scanner writes them (LPS-aligned).
MODEL_DIRECTION_RAS = np.diag([-1.0, -1.0, 1.0])

#: How generated frames reach the input grid (see :func:`default_transfer`).
TRANSFERS = ("warp", "difference")


@dataclass
class GenerationResult:
    """A generated cine and how it was made."""

    sequence: VolumeSequence
    provenance: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    #: the generated motion on the input grid (motion models; None for the latent family)
    motion: Any = None
    #: per-voxel spread of the motion over samples, mm (T, K, J, I) on the input grid, or None
    spread: VolumeSequence | None = None
    #: the K motion samples themselves on the model's coarse anatomy grid (MotionFields), or None
    #: for one sample (their mean, upsampled, is ``motion``)
    motion_samples: list | None = None
    #: the frame-0 label map carried into every frame (T, K, J, I) on the input grid, or None
    labels: VolumeSequence | None = None
    #: the frame-0 :class:`~MoDiffLib.labelmap.LabelMap` (names, colours) of ``labels``, or None
    label_map: Any = None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto`` -> CUDA when a GPU is usable, else CPU; an explicit ``cuda`` without a GPU is an error."""
    name = str(device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(
            f"device '{name}' was requested but PyTorch sees no CUDA GPU (torch {torch.__version__}, "
            f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu or auto"
        )
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise InputError(f"unknown device '{device}' (choose auto, cpu or cuda)")
    return torch.device(name)


def normalise_amplitude(config: ModelConfig, amplitude: float | None) -> float | None:
    """Map a motion strength in its clinical unit (mm, %) to the [0, 1] range the networks see."""
    if amplitude is None:
        return None
    a = config.amplitude
    if a is None:
        raise InputError(f"model '{config.name}' has no motion-strength condition; leave the amplitude unset")
    if isinstance(amplitude, (bool, np.bool_)) or not isinstance(amplitude, (int, float, np.integer, np.floating)):
        raise InputError(f"the motion strength (amplitude) must be a number in {a.unit}, got {_shown(amplitude)}")
    value = float(amplitude)
    if not np.isfinite(value) or not a.min <= value <= a.max:
        raise InputError(
            f"motion strength {amplitude} {a.unit} is outside the range this model knows "
            f"({a.min:g}-{a.max:g} {a.unit}, {a.name})"
        )
    return (value - a.min) / (a.max - a.min)


def default_transfer(config: ModelConfig) -> str:
    """The measured better transfer for a model's kind: ``warp`` for lung CT, ``difference`` for cine MR.

    Lung motion is a 3D deformation that warping reproduces sharply at any resolution. Short-axis
    cine MR has 8 mm slices: through-plane motion shows as intensity change within a slice, which a
    warp cannot represent; on 10 held-out cardiac phantoms difference transfer gave lower landmark
    (2.20 vs 2.42 mm) and EF (9.8 vs 15.1 points) errors and higher PSNR (README).
    """
    return "difference" if config.kind == "cardiac" and config.family == "latent" else "warp"


def check_modality(volume: Volume, config: ModelConfig) -> None:
    """Refuse a volume whose intensities cannot be of the model's modality (CT HU vs MR)."""
    a = volume.array
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 0:
        raise InputError(f"{volume.name} has constant intensity {lo:g}; there is nothing to animate")
    if config.modality == "CT":
        # A thorax CT in Hounsfield units has air (about -1000) in and around the body.
        if lo > -500.0 or hi < -100.0:
            raise InputError(
                f"{volume.name} does not look like CT in Hounsfield units (intensities {lo:g}..{hi:g}); "
                f"model '{config.name}' expects a thorax CT with air near -1000 HU"
            )
    elif config.modality == "MR" and lo < -500.0:
        raise InputError(
            f"{volume.name} has intensities down to {lo:g}, like a CT in HU; model '{config.name}' expects MR"
        )


#: Seeds are 32-bit (0..2**32 - 1): numpy's classic seeding takes no more, and torch would map a
#: negative seed silently onto a large one; one range for every pipeline keeps one seed one cine.
MAX_SEED = 2**32 - 1


def _shown(value: Any) -> str:
    """``value`` for a one-line message: its repr (on one line, shortened) and its type."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    text = " ".join(repr(value).split())
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _as_int(value: Any, name: str) -> int:
    """``value`` as a Python int; bools and floats are refused, because ``int()`` would turn
    ``True`` into 1 and 3.9 into 3 without a word."""
    if isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name} must be an integer, got {_shown(value)}")
    try:
        return operator.index(value)  # int, numpy integers, integer tensors; not float or str
    except TypeError:
        raise InputError(f"{name} must be an integer, got {_shown(value)}") from None


def check_volume(volume: Any) -> Volume:
    """``volume`` itself if it is a :class:`~MoDiffLib.volume.Volume`; otherwise an
    :class:`InputError` saying what was passed and how to get a Volume."""
    if isinstance(volume, Volume):
        return volume
    if isinstance(volume, VolumeSequence):
        hint = "pass one frame of it, e.g. sequence.frame(0)"
    elif isinstance(volume, np.ndarray):
        # A bare array has no spacing or orientation, and the cine must keep the input's geometry.
        hint = ("a bare array has no geometry; wrap it with MoDiffLib.Volume.from_array(array, spacing=..., "
                "origin_ras=..., direction_ras=...)")
    elif isinstance(volume, (str, os.PathLike)):
        hint = "read the file first with MoDiffLib.io.read_volume(path)"
    else:
        hint = "read it with MoDiffLib.io.read_volume or build it with MoDiffLib.Volume.from_array"
    raise InputError(f"volume must be a MoDiffLib.volume.Volume, got {_shown(volume)}; {hint}")


def check_seed(seed: Any) -> int:
    """``seed`` as an int in 0..:data:`MAX_SEED` (numpy integers accepted; bool, float, str, None refused)."""
    value = _as_int(seed, "seed")
    if not 0 <= value <= MAX_SEED:
        raise InputError(f"seed must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {value}")
    return value


def check_generate_request(config: ModelConfig, volume: Volume, num_frames: int, steps: int | None) -> tuple[int, int]:
    """Validate what every pipeline is asked (frame count, steps, a scalar 3D volume of the model's
    modality); return ``(N, steps)`` with the model's default steps filled in.

    ``num_frames`` and ``steps`` must be integers (numpy integers too): a float is refused, not
    truncated. ``steps=None`` means the model's default; 0 or less is an error.
    """
    volume = check_volume(volume)
    n = check_frame_count(_as_int(num_frames, "num_frames (the frame count)"), config.max_frames, config.name)
    top = config.diffusion.num_train_timesteps
    if steps is None:
        steps = int(config.sampling_steps)
    else:
        steps = _as_int(steps, "steps (sampling steps per stage)")
        if not 1 <= steps <= top:
            raise InputError(f"steps (sampling steps per stage) must be between 1 and {top}, got {steps}; "
                             f"leave it unset for the model's default ({config.sampling_steps})")
    if volume.is_vector:
        raise InputError(f"{volume.name} is a vector volume; MoDiff needs a scalar image")
    if min(volume.geometry.shape_kji) < 2:
        raise InputError(f"{volume.name} is a single slice ({volume.geometry.describe()}); MoDiff needs a 3D volume")
    check_modality(volume, config)
    return n, steps


def config_window(config: ModelConfig, volume: Volume) -> IntensityWindow:
    """The intensity window of a model's recipe for ``volume``."""
    recipe = config.intensity
    if recipe.method == "window":
        return window_for(volume, "fixed", *recipe.window)
    return window_for(volume, "percentile", *recipe.percentiles)


def build_networks(config: ModelConfig) -> dict[str, torch.nn.Module]:
    """The three networks of a model configuration, with fresh weights."""
    c = config.vae.latent_channels
    return {
        "vae": KLAutoencoder.from_config(config.vae),
        "tddm": TDDM(latent_channels=c, max_frames=config.max_frames, **config.tddm),
        "i2v": I2VDenoiser(latent_channels=c, max_frames=config.max_frames, **config.i2v),
    }


def load_model(name_or_path: str | Path | None = None,
               kind: str | None = None) -> tuple[ModelConfig, dict[str, dict[str, torch.Tensor]], str]:
    """A model's checkpoint by registry name or folder (``None``: the default model of ``kind``),
    verified once: against the registry's checksums for a name, the folder's ``checksums.json``
    (or the registered model it copies) for a path. Returns ``(config, states, source)``, where
    ``source`` is the name or the folder, as provenance records it."""
    from .registry import resolve_model

    folder, entry = resolve_model(name_or_path, kind=kind, verify=False)  # hashed below, not twice
    if entry is not None:
        config, states = load_checkpoint(folder, entry.sha256, f"model '{entry.name}'")
    else:
        config, states = load_checkpoint(folder)
    return config, states, entry.name if entry else str(folder)


class MoDiffPipeline:
    """Mo-Diff inference: VAE + TDDM + I2V with the preprocessing recipe of one model.

    Args:
        config: the model configuration (grid, intensity recipe, scales, max frames, ...).
        networks: ``{"vae": ..., "tddm": ..., "i2v": ...}`` modules.
        source: where the weights came from (a path or registry name), for provenance.
    """

    #: The stages :meth:`generate` reports, with their shares of the run.
    stages = LATENT_GENERATION

    def __init__(self, config: ModelConfig, networks: dict[str, torch.nn.Module], source: str = "") -> None:
        missing = {"vae", "tddm", "i2v"} - set(networks)
        if missing:
            raise InputError(f"a Mo-Diff pipeline needs networks {sorted(missing)}")
        self.config = config
        self.vae: KLAutoencoder = networks["vae"].eval()
        self.tddm: TDDM = networks["tddm"].eval()
        self.i2v: I2VDenoiser = networks["i2v"].eval()
        self.source = source
        self.schedule = NoiseSchedule.from_config(config.diffusion)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig) -> "MoDiffPipeline":
        """An untrained pipeline (for training and tests)."""
        return cls(config, build_networks(config), source="untrained")

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path | None = None, kind: str | None = None) -> "MoDiffPipeline":
        """Load a model by registry name (checksums verified) or checkpoint folder; ``None``: default."""
        return cls.from_states(*load_model(name_or_path, kind))

    @classmethod
    def from_states(cls, config: ModelConfig, states: dict[str, dict[str, torch.Tensor]], source: str) -> "MoDiffPipeline":
        """A pipeline from a loaded checkpoint (:func:`~.models.checkpoint.load_checkpoint`)."""
        if config.family != "latent":
            raise InputError(f"model '{source}' is a {config.family} model; load it with MoDiffLib.pipelines.load_pipeline")
        networks = build_networks(config)
        for name, module in networks.items():
            if name not in states:
                raise InputError(f"checkpoint '{source}' has no weights for the {name} network")
            load_module_weights(module, states[name])
        return cls(config, networks, source=source)

    def save_pretrained(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the release format (config.json + model.safetensors) atomically."""
        return save_checkpoint(path, self.config, {"vae": self.vae, "tddm": self.tddm, "i2v": self.i2v},
                               overwrite=overwrite)

    def parameter_counts(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in m.parameters())
                for name, m in (("vae", self.vae), ("tddm", self.tddm), ("i2v", self.i2v))}

    # -- shared steps (also used by evaluation and training) -------------------------------------
    def window(self, volume: Volume) -> IntensityWindow:
        """The intensity window of this model's recipe for ``volume``."""
        return config_window(self.config, volume)

    def grid_for(self, volume: Volume):
        """The model grid centred on ``volume``."""
        g = self.config.grid
        return model_grid(volume.geometry, g.shape_kji, g.spacing_ijk_mm, MODEL_DIRECTION_RAS)

    # -- generation -----------------------------------------------------------------------------
    def generate(
        self,
        volume: Volume,
        num_frames: int,
        steps: int | None = None,
        seed: int = 0,
        amplitude: float | None = None,
        device: str | torch.device | None = "auto",
        sampler: str = "ddim",
        progress: ProgressCallback | None = None,
        cancel: Any = None,
        transfer: str | None = None,
    ) -> GenerationResult:
        """Synthesise ``num_frames`` frames of motion starting at ``volume``.

        Args:
            volume: frame 0 (CT in HU or MR, any orientation and spacing).
            num_frames: N in [2, max_frames] (frame 0 included).
            steps: sampling steps per stage (default: the model's).
            seed: random seed, an integer in 0..2**32 - 1; the same seed on the same device gives
                the same cine.
            amplitude: optional motion strength in the model's unit (diaphragm SI mm, EF %);
                ``None`` lets the model choose (unconditioned).
            device: ``auto``, ``cpu`` or ``cuda``.
            sampler: ``ddim`` (default) or ``ddpm``.
            progress: called with a :class:`~MoDiffLib.progress.ProgressEvent` per step and
                stage (the stages of :attr:`stages`); the fraction never goes back and ends at 1.
            cancel: an object with ``is_set()`` (``threading.Event``) or a callable returning True
                to stop; when set, stops within one sampling step with
                :class:`~MoDiffLib.errors.Cancelled`.
            transfer: ``warp`` moves the input itself by the motion measured in the generated
                frames (sharp at any input resolution); ``difference`` adds their intensity
                changes to it (the paper's setting on its own grid; blurs edges of finer inputs);
                ``None``: :func:`default_transfer` of the model.

        Returns:
            the cine (frame 0 = the input, every frame on the input's geometry and dtype) and its
            provenance.
        """
        cfg = self.config
        n, steps = check_generate_request(cfg, volume, num_frames, steps)
        seed = check_seed(seed)
        cancel = check_callbacks(progress, cancel)
        transfer = transfer or default_transfer(cfg)
        if transfer not in TRANSFERS:
            raise InputError(f"transfer must be one of {', '.join(TRANSFERS)}, got {transfer!r}")
        amp = normalise_amplitude(cfg, amplitude)
        dev = resolve_device(device)
        report = StageReporter(progress, self.stages, "generation")
        timings = report.timings
        t_start = time.perf_counter()

        def stage_done(name: str, t0: float) -> None:
            report.stage_done(name, t0, cancel)

        t0 = time.perf_counter()
        for m in (self.vae, self.tddm, self.i2v):
            m.to(dev)
        stage_done("load", t0)

        t0 = time.perf_counter()
        grid = self.grid_for(volume)
        window = self.window(volume)
        x0 = torch.from_numpy(to_model(volume, grid, window))[None, None].to(dev)
        stage_done("preprocess", t0)

        with torch.inference_mode(), autocast_for(dev):
            t0 = time.perf_counter()
            mean, _ = self.vae.encode(x0)
            prompt = mean.float() * cfg.latent_scale
            stage_done("encode", t0)

            t0 = time.perf_counter()
            fields = sample_fields(self.tddm, prompt, n, steps=steps, sampler=sampler, seed=seed, amplitude=amp,
                                   progress=report.within("tddm"), cancel=cancel,
                                   schedule=self.schedule)
            timings["tddm"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            # The seed of the second stage differs from the first so the two noises are independent.
            latents = sample_latents(self.i2v, prompt, fields.float(), n, steps=steps, sampler=sampler,
                                     seed=seed + 1, amplitude=amp,
                                     progress=report.within("i2v"), cancel=cancel,
                                     schedule=self.schedule, field_scale=cfg.field_scale)
            timings["i2v"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            # Frame 0 is decoded from the prompt too: the difference transfer subtracts it.
            frames_latent = latents[:, :, :n].float() / cfg.latent_scale
            decoded = []
            for t in range(n):
                check_cancel(cancel, "generation")
                decoded.append(self.vae.decode(frames_latent[:, :, t]).float()[0, 0].cpu().numpy())
                report("decode", t + 1, n)
            timings["decode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if transfer == "warp":
            frames, _ = transfer_motion(volume, np.stack(decoded), grid, cancel=cancel,
                                        progress=report.within("postprocess"))
        else:
            frames = transfer_differences(volume, np.stack(decoded), grid, window)
        sequence = VolumeSequence(frames, volume.geometry, name=f"{volume.name} cine", index_name="frame")
        stage_done("postprocess", t0)

        provenance = {
            **provenance_head(cfg, self.source),
            "frames": n,
            "steps": steps,
            "sampler": sampler,
            "transfer": transfer,
            **provenance_tail(cfg, seed, amplitude, dev, t_start),
        }
        return GenerationResult(sequence, provenance, report.timings)


def provenance_head(config: ModelConfig, source: str) -> dict[str, Any]:
    """The first provenance entries of every pipeline: which model made the cine."""
    return {"model": config.name, "model_version": config.version, "model_source": source}


def provenance_tail(config: ModelConfig, seed: int, amplitude: float | None, device: torch.device,
                    t_start: float) -> dict[str, Any]:
    """The last provenance entries of every pipeline: seed, strength, device, time, version, host."""
    return {
        "seed": int(seed),
        "amplitude": None if amplitude is None else float(amplitude),
        "amplitude_unit": config.amplitude.unit if config.amplitude else None,
        "device": str(device),
        "elapsed_seconds": round(time.perf_counter() - t_start, 3),
        "modiff_version": modiff_version(),
        "host": platform.node(),
    }


def autocast_for(device: torch.device):
    """bf16 autocast on GPUs that support it, fp16 on older ones; nothing on CPU."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def modiff_version() -> str:
    from . import __version__

    return __version__
