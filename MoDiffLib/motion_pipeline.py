"""``MotionPipeline``: one 3D volume + N -> an N-frame cine made by moving the input itself.

The ``motion`` family of Mo-Diff (see :mod:`MoDiffLib.models.motion_tddm`). Stages, each reported
through ``progress``:

``load`` -> ``preprocess`` (the anatomy box of frame 0 and its coarse anatomy grid; frame 0 and
its anatomy mask on that grid, the prompt) -> ``tddm`` (residual displacement differences, K
samples at once) -> ``fields`` (population motion + residual, mean and spread over the samples)
-> ``warp`` (the input moved at its full resolution, one resample per frame; CT lung density
follows mass conservation) -> ``propagate`` (only with a label map: frame 0's labels carried into
every frame by the same fields, so they lie on the anatomy of each frame). Their labels and weights
are :mod:`MoDiffLib.progress`'s (:data:`~MoDiffLib.progress.MOTION_GENERATION`).

The result holds the cine and the motion itself on the input grid
(:class:`~MoDiffLib.motion.MotionFields`), so points, labels and planning follow the generated
motion exactly, without estimating it back from the images.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .labelmap import LabelMap, check_label_map
from .models.checkpoint import save_checkpoint
from .models.config import ModelConfig
from .models.diffusion import NoiseSchedule
from .models.motion_tddm import MotionTDDM, sample_motion
from .motion.anatomy import AnatomyBox, anatomy_box, lung_mask, foreground_mask
from .motion.fields import MotionFields
from .motion.population import PopulationMotion, frame_phases, from_low_rank, from_modes, low_rank, low_rank_phases
from .motion.known_frames import (
    at_phases,
    check_known_frames,
    check_modes,
    end_phase,
    fit_on_line,
    image_end_phase,
    model_on_grid,
    on_working_grid,
    register_known,
    through_known,
    working_grid,
)
from .motion.transfer import carry_labels, warp_input
from .motion.typicality import Typicality
from .pipeline import (
    GenerationResult,
    check_generate_request,
    check_seed,
    config_window,
    normalise_amplitude,
    provenance_head,
    provenance_tail,
    resolve_device,
)
from .preprocess import cast_like, resample
from .progress import (
    MOTION_GENERATION,
    CancelFlag,
    ProgressCallback,
    StageReporter,
    check_callbacks,
    motion_generation_stages,
)
from .volume import Geometry, Volume, VolumeSequence

#: Samples drawn when none are asked for: their mean is the point estimate.
DEFAULT_SAMPLES = 4
#: Frames of the whole model cycle in which the two-frame mode looks for the end frame's phase.
END_CYCLE_FRAMES = 20
#: Share of the model's motion beyond what the given frames explain (see known_frames.through_known):
#: on 6 held-out lung phantoms 1 scored 0.99 mm (two-frame) / 0.98 mm (partial), 0 1.04 / 0.97 mm.
KNOWN_MODEL_SHARE = 1.0
#: Weight of the model's pattern at the given frames' strength (known_frames.through_known, CT): on
#: the 20 held-out phantoms of modiff evaluate, 0.5 scored lung 1.04 / 0.98 mm (two-frame /
#: partial); 0 (the registered motion alone) 1.13 / 1.08 mm. MR inputs are not registered: the
#: population motion is taken at the EF the given frames show (known_frames.fit_on_line). On lung
#: CT a strength fitted by the images (the model's pattern scaled per given frame) changed nothing
#: (6 validation phantoms: 1.50 / 1.17 vs 1.48 / 1.15 mm), so CT keeps the registration.
KNOWN_PATTERN_WEIGHT = 0.5
#: Largest number of samples one request may draw.
MAX_SAMPLES = 32


def population_tensors(population: PopulationMotion) -> dict[str, torch.Tensor]:
    """The population motion as checkpoint tensors (module ``population``): ``B0, B1`` as phase
    coefficients times spatial modes (:func:`~.motion.population.low_rank_phases`) where that is
    smaller, so a fine population grid stays a small file."""
    time0, time1, modes = low_rank_phases(population)
    if modes.size + time0.size + time1.size < 2 * population.b0.size:
        out = {"b0_phases": torch.from_numpy(time0), "b1_phases": torch.from_numpy(time1), "modes": torch.from_numpy(modes)}
    else:
        out = {"b0": torch.from_numpy(population.b0), "b1": torch.from_numpy(population.b1)}
    out["stats"] = torch.tensor([population.amplitude_mean, population.amplitude_std, float(population.cases)],
                                dtype=torch.float64)
    if population.trace_basis is not None:
        out["trace"] = torch.from_numpy(population.trace_basis)
    if population.strength_map is not None:
        out["strength_map"] = torch.tensor(population.strength_map, dtype=torch.float64)
    if population.typical is not None:
        coef, modes = low_rank(population.typical)
        out["typical_phases"], out["typical_modes"] = torch.from_numpy(coef), torch.from_numpy(modes)
    return out


def population_from_tensors(state: dict[str, torch.Tensor], where: str) -> PopulationMotion:
    factored = {"b0_phases", "b1_phases", "modes"}
    missing = ({"stats"} | (factored if "modes" in state else {"b0", "b1"})) - set(state)
    if missing:
        raise InputError(f"model '{where}' lacks population motion tensors {sorted(missing)}")
    if "modes" in state:
        b0, b1 = from_low_rank(state["b0_phases"].float().numpy(), state["b1_phases"].float().numpy(),
                               state["modes"].float().numpy())
    else:
        b0, b1 = state["b0"].float().numpy(), state["b1"].float().numpy()
    stats = state["stats"].double().tolist()
    trace, strength_map = state.get("trace"), state.get("strength_map")
    typical = None
    if "typical_modes" in state:
        typical = from_modes(state["typical_phases"].float().numpy(), state["typical_modes"].float().numpy())
    return PopulationMotion(b0, b1, stats[0], stats[1], int(stats[2]), None if trace is None else trace.float().numpy(),
                            None if strength_map is None else tuple(strength_map.double().tolist()), typical)


def typicality_tensors(typicality: Typicality) -> dict[str, torch.Tensor]:
    """The training-input summary as checkpoint tensors (module ``typicality``)."""
    return {"mean": torch.from_numpy(typicality.mean), "std": torch.from_numpy(typicality.std),
            "distances": torch.from_numpy(typicality.distances),
            "box": torch.from_numpy(np.stack([typicality.box_min_mm, typicality.box_max_mm])),
            "cases": torch.tensor([float(typicality.cases)], dtype=torch.float64)}


def typicality_from_tensors(state: dict[str, torch.Tensor] | None) -> Typicality | None:
    if not state:
        return None
    box = state["box"].double().numpy()
    return Typicality(state["mean"].float().numpy(), state["std"].float().numpy(), state["distances"].double().numpy(),
                      box[0], box[1], int(state["cases"].item()))


def antialias(array: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """``array`` on ``source`` low-pass filtered for sampling at ``target``'s spacing: a Gaussian of
    half the target spacing (mm, isotropic), so that one anatomy looks the same on the coarse grid
    whatever resolution it was scanned at."""
    from scipy import ndimage

    sigma_mm = 0.5 * float(np.mean(target.spacing))
    sigma_kji = [max(sigma_mm / float(s) - 0.5, 0.0) for s in source.spacing[::-1]]  # 0.5: the voxel's own extent
    if max(sigma_kji) == 0.0:
        return np.asarray(array, dtype=np.float32)
    return ndimage.gaussian_filter(np.asarray(array, dtype=np.float32), sigma_kji, mode="nearest")


def motion_prompt(config: ModelConfig, volume: Volume, grid: Geometry) -> np.ndarray:
    """(2, K, J, I) float32 prompt of a motion model: frame 0 normalised to [-1, 1] by the model's
    intensity recipe and its anatomy mask (-1 / 1), on the anatomy grid ``grid``.

    Models with ``config.motion["prompt_antialias"]`` low-pass both before sampling (see
    :func:`antialias`); earlier models were trained on plain linear samples and keep them.
    """
    window = config_window(config, volume)
    mask = (lung_mask(volume) if config.modality == "CT" else foreground_mask(volume)).astype(np.float32)
    image = volume.array
    if config.motion.get("prompt_antialias", False):
        image, mask = antialias(image, volume.geometry, grid), antialias(mask, volume.geometry, grid)
    image = window.normalise(resample(image, volume.geometry, grid, order=1, fill=window.low))
    mask_on_grid = resample(mask, volume.geometry, grid, order=1, fill=0.0)
    return np.stack([image, 2.0 * mask_on_grid - 1.0]).astype(np.float32)


def antialiased(config: ModelConfig) -> ModelConfig:
    """``config`` with ``motion.prompt_antialias`` on (itself if it already is)."""
    if config.motion.get("prompt_antialias", False):
        return config
    return ModelConfig.from_dict({**config.to_dict(), "motion": {**config.motion, "prompt_antialias": True}})


def typicality_prompt(config: ModelConfig, volume: Volume, grid: Geometry) -> np.ndarray:
    """The prompt :class:`~MoDiffLib.motion.typicality.Typicality` measures: the anti-aliased one,
    whether or not the model's network was trained on it (a measure must not depend on the scan's resolution)."""
    return motion_prompt(antialiased(config), volume, grid)


def population_shape(config: ModelConfig) -> tuple[int, int, int]:
    """The population motion's grid of a motion config: ``motion["population_shape_kji"]``, else the network's."""
    shape = config.motion.get("population_shape_kji", config.grid.shape_kji)
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 256 for v in shape)):
        raise InputError(f"model '{config.name}': motion.population_shape_kji must be three whole numbers from 2 to "
                         f"256, got {shape!r}")
    return tuple(int(v) for v in shape)  # type: ignore[return-value]


def build_motion_network(config: ModelConfig) -> MotionTDDM:
    """The residual denoiser of a motion model configuration, with fresh weights (and an empty basis)."""
    return MotionTDDM(grid_shape=config.grid.shape_kji, max_frames=config.max_frames,
                      use_amplitude=config.amplitude is not None, **config.tddm)


class MotionPipeline:
    """Mo-Diff over motion: population motion + learned residual, frames by warping the input.

    Args:
        config: a ``family == "motion"`` model configuration.
        tddm: the residual denoiser.
        population: the population motion, on the anatomy grid of ``config.motion["population_shape_kji"]``
            where the config names one (finer than the network's grid: the LV of a heart is a few
            network voxels across, and its volume change needs finer fields), else on the network's.
        source: where the weights came from, for provenance.
        typicality: summary of the training inputs; each input is measured against it and an
            atypical one is reported in ``provenance["warnings"]`` (None: not checked).
    """

    #: The stages :meth:`generate` reports, with their shares of the run.
    stages = MOTION_GENERATION

    @staticmethod
    def generation_stages(with_labels: bool = False, with_known: bool = False) -> dict[str, float]:
        """The stages of :meth:`generate` (given frames add ``motion``, labels ``propagate``)."""
        return motion_generation_stages(with_labels, with_known)

    def __init__(self, config: ModelConfig, tddm: MotionTDDM, population: PopulationMotion, source: str = "",
                 typicality: Typicality | None = None) -> None:
        if config.family != "motion":
            raise InputError(f"model '{config.name}' is of the {config.family} family, not a motion model")
        expected = population_shape(config)
        if population.grid_shape != expected:
            raise InputError(f"population motion grid {population.grid_shape} does not match the model's "
                             f"{'population' if 'population_shape_kji' in config.motion else 'anatomy'} grid {expected}")
        self.config = config
        self.tddm = tddm.eval()
        self.population = population
        self.source = source
        self.typicality = typicality
        self.schedule = NoiseSchedule.from_config(config.diffusion)

    @classmethod
    def from_states(cls, config: ModelConfig, states: dict[str, dict[str, torch.Tensor]], source: str) -> "MotionPipeline":
        from .models.checkpoint import load_module_weights

        if "tddm" not in states:
            raise InputError(f"checkpoint '{source}' has no weights for the tddm network")
        tddm = build_motion_network(config)
        load_module_weights(tddm, states["tddm"])
        return cls(config, tddm, population_from_tensors(states.get("population", {}), source), source,
                   typicality_from_tensors(states.get("typicality")))

    def save_pretrained(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the release format (config.json + model.safetensors) atomically."""
        modules = {"tddm": self.tddm, "population": population_tensors(self.population)}
        if self.typicality is not None:
            modules["typicality"] = typicality_tensors(self.typicality)
        return save_checkpoint(path, self.config, modules, overwrite=overwrite)

    def parameter_counts(self) -> dict[str, int]:
        return {"tddm": sum(p.numel() for p in self.tddm.parameters()), "population": int(self.population.b0.size * 2)}

    # -- shared steps (also used by training and evaluation) ------------------------------------
    def window(self, volume: Volume):
        return config_window(self.config, volume)

    def anatomy(self, volume: Volume) -> tuple[AnatomyBox, Geometry]:
        """The anatomy box of ``volume`` and the model's anatomy grid spanning it."""
        box = anatomy_box(volume, self.config.modality)
        return box, box.grid(self.config.grid.shape_kji)

    def motion_grid(self, box: AnatomyBox) -> Geometry:
        """The grid the motion is given on: the population's anatomy grid spanning ``box``."""
        return box.grid(self.population.grid_shape)

    def prompt(self, volume: Volume, grid: Geometry) -> np.ndarray:
        """(2, K, J, I) float32: frame 0 normalised to [-1, 1] and its anatomy mask, on ``grid``."""
        return motion_prompt(self.config, volume, grid)

    def fields_on_grid(self, prompt: np.ndarray, num_frames: int, amplitude: float | None = None,
                       trace_mm: np.ndarray | None = None, samples: int = DEFAULT_SAMPLES, steps: int | None = None,
                       seed: int = 0, residual: bool = True, device: torch.device | str = "cpu",
                       progress: ProgressCallback | None = None, cancel: CancelFlag | None = None) -> np.ndarray:
        """(K, N, 3, k, j, i) displacement samples on the population's anatomy grid (population + residual;
        the residual, on the network's coarser grid, is interpolated there: both grids' voxel edges span
        the same box, which is ``align_corners=False``).

        ``residual=False`` gives the population motion alone (the anatomy-aligned mean motion; with
        a trace, the population's trace regression). With the residual, the network adds to the
        population motion in the strength and takes the trace as a condition (it was trained so).
        """
        cfg = self.config
        n = int(num_frames)
        if not residual:
            if trace_mm is not None:
                return self.population.trace_fields(np.asarray(trace_mm, dtype=float)[:n])[None]
            return self.population.fields(frame_phases(n), amplitude)[None]
        # the network learned its residual on the line itself (no strength map, no typical motion)
        base = self.population.fields(frame_phases(n), amplitude, calibrated=False)  # (N, 3, k, j, i)
        dev = torch.device(device)
        self.tddm.to(dev)
        amp = normalise_amplitude(cfg, amplitude)
        trace = None
        if trace_mm is not None:
            padded = np.zeros((samples, cfg.max_frames), dtype=np.float32)  # frames >= N: finite padding
            padded[:, :n] = np.asarray(trace_mm, dtype=np.float32)[None, :n]
            trace = torch.from_numpy(padded).to(dev)
        p = torch.from_numpy(prompt)[None].to(dev).expand(samples, -1, -1, -1, -1).contiguous()
        scaled = sample_motion(self.tddm, p, n, steps=int(steps or cfg.sampling_steps), seed=seed, amplitude=amp,
                               trace=trace, schedule=self.schedule, progress=progress, cancel=cancel)
        with torch.no_grad():
            residual = self.tddm.basis.decode(scaled.float() / cfg.field_scale)  # (K, N, 3, k, j, i); r_0 = 0
            if tuple(residual.shape[-3:]) != self.population.grid_shape:
                k, f = residual.shape[:2]
                residual = torch.nn.functional.interpolate(
                    residual.reshape(k * f, *residual.shape[2:]), size=self.population.grid_shape, mode="trilinear",
                    align_corners=False).reshape(k, f, 3, *self.population.grid_shape)
        return base[None] + residual.cpu().numpy()

    def population_on_grid(self, amplitude: float, num_frames: int, grid: Geometry, work: Geometry) -> np.ndarray:
        """(N, K, J, I, 3) population motion at ``amplitude`` (a whole cycle of N frames) moved from
        the anatomy ``grid`` onto the working grid ``work``."""
        fields = self.population.fields(frame_phases(int(num_frames)), amplitude)
        return model_on_grid(np.ascontiguousarray(fields.transpose(0, 2, 3, 4, 1)), grid, work)

    def uses_residual(self, residual: bool | None, with_trace: bool) -> bool:
        """Whether :meth:`generate` runs the network for a ``residual`` request (None: the model's default)."""
        if residual is not None:
            return bool(residual)
        return bool(self.config.motion.get("residual", True)) or (with_trace and not self.population.has_trace)

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
        samples: int = DEFAULT_SAMPLES,
        trace_mm: np.ndarray | None = None,
        residual: bool | None = None,
        labels: Volume | LabelMap | None = None,
        known: Mapping[int, Volume] | None = None,
        end: Volume | None = None,
    ) -> GenerationResult:
        """Synthesise ``num_frames`` frames of motion starting at ``volume`` (see the module docstring).

        Args:
            volume, num_frames, steps, seed, amplitude, device, progress, cancel: as
                :meth:`MoDiffLib.pipeline.MoDiffPipeline.generate`.
            sampler: ``ddim`` (the only sampler of motion models).
            transfer: ``warp`` or None (motion models always move the input itself).
            samples: K motion samples drawn at once; the cine shows their mean, ``spread`` their
                per-voxel standard deviation (mm, the length of the std vector).
            trace_mm: optional per-frame diaphragm descent (mm, 0 at frame 0), the breathing trace.
            residual: False gives the population motion alone (no network is run; with a trace,
                the population's trace regression); None: the model's default
                (``config.motion["residual"]``, True unless the model's evaluation showed the
                learned residual to lose to the population motion), and True with a trace where
                the population has no trace regression (the network is then the only part that
                follows it).
            labels: a frame-0 label map on the input's voxel grid (or a crop of it; see
                :func:`MoDiffLib.labelmap.check_label_map`), carried into every frame by the
                generated motion (``result.labels``, names in ``result.label_names``).
            known: partial-sequence mode: frames of the same cycle the user has, by index (1..N-1,
                on the input's grid); the motion passes through them (:mod:`MoDiffLib.motion.known_frames`)
                and they are returned exactly. Over one whole cycle, as without them.
            end: two-frame mode: the last frame (N-1) of a cine from ``volume`` to ``end`` (e.g.
                end-exhale to end-inhale, ED to ES); the frames between follow the model's time
                course up to the phase where ``end`` sits in its cycle. Not with ``known`` or
                ``trace_mm``.

        Returns:
            the cine on the input's geometry and dtype (frame 0 = the input), its provenance, the
            motion (``result.motion``), the spread (``result.spread``, None for one sample) and
            the carried labels (``result.labels``, None without ``labels``).
        """
        cfg = self.config
        n, steps = check_generate_request(cfg, volume, num_frames, steps)
        seed = check_seed(seed)
        cancel = check_callbacks(progress, cancel)
        residual = self.uses_residual(residual, trace_mm is not None)
        if trace_mm is not None and not residual and not self.population.has_trace:
            raise InputError(f"model '{cfg.name}' follows a breathing trace only through its network; "
                             "run it with the residual on")
        if transfer not in (None, "warp"):
            raise InputError(f"motion model '{cfg.name}' moves the input itself; transfer must be 'warp', got {transfer!r}")
        if sampler != "ddim":
            raise InputError(f"motion models sample with ddim only, got {sampler!r}")
        if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or not 1 <= samples <= MAX_SAMPLES:
            raise InputError(f"samples must be an integer from 1 to {MAX_SAMPLES}, got {samples!r}")
        if trace_mm is not None:
            trace_mm = np.asarray(trace_mm, dtype=float)
            if trace_mm.shape != (n,) or not np.all(np.isfinite(trace_mm)):
                raise InputError(f"the breathing trace must hold {n} finite values (one per frame), got shape {trace_mm.shape}")
        normalise_amplitude(cfg, amplitude)  # range check before any work
        label_map = None if labels is None else check_label_map(labels, volume.geometry, f"input volume '{volume.name}'")
        check_modes(end is not None, known is not None, trace_mm is not None)
        given = None
        if known is not None:
            given = check_known_frames(known, n, volume.geometry, f"input volume '{volume.name}'")
        elif end is not None:
            given = check_known_frames({n - 1: end}, n, volume.geometry, f"input volume '{volume.name}'")
        dev = resolve_device(device)
        report = StageReporter(progress, self.generation_stages(label_map is not None, given is not None), "generation")
        t_start = time.perf_counter()

        def stage_done(name: str, t0: float) -> None:
            report.stage_done(name, t0, cancel)

        t0 = time.perf_counter()
        self.tddm.to(dev)
        stage_done("load", t0)

        t0 = time.perf_counter()
        box, grid = self.anatomy(volume)
        prompt = self.prompt(volume, grid)
        typical = None
        if self.typicality is not None:
            same = cfg.motion.get("prompt_antialias", False)
            typical = self.typicality.assess(prompt if same else typicality_prompt(cfg, volume, grid), box.size_mm)
        stage_done("preprocess", t0)

        t0 = time.perf_counter()
        # two-frame mode: a whole cycle of the model's motion, to find where the end frame sits in it
        drawn_frames = max(n, min(cfg.max_frames, END_CYCLE_FRAMES)) if end is not None else n
        drawn = self.fields_on_grid(prompt, drawn_frames, amplitude, trace_mm, samples, steps, seed, residual, dev,
                                    progress=report.within("tddm"), cancel=cancel)
        grid = self.motion_grid(box)
        stage_done("tddm", t0)

        t0 = time.perf_counter()
        mean = drawn.mean(axis=0)  # (N, 3, k, j, i)
        coarse = MotionFields(np.ascontiguousarray(mean.transpose(0, 2, 3, 4, 1)), grid,
                              {"method": "modiff-motion", "model": cfg.name, "samples": int(drawn.shape[0])})
        spread, samples_fields = None, None
        if drawn.shape[0] > 1:
            samples_fields = [MotionFields(np.ascontiguousarray(d.transpose(0, 2, 3, 4, 1)), grid,
                                           {"method": "modiff-motion sample", "model": cfg.name, "sample": k})
                              for k, d in enumerate(drawn)]
            std = np.sqrt(np.sum(drawn.std(axis=0) ** 2, axis=1))  # (N, k, j, i) mm
            spread_fine = np.stack([resample(s, grid, volume.geometry, order=1, fill=0.0) for s in std])
            spread = VolumeSequence(spread_fine.astype(np.float32), volume.geometry, name=f"{volume.name} motion spread",
                                    index_name="frame")
        stage_done("fields", t0)

        conditioned, strengths = None, None
        if given is not None:
            t0 = time.perf_counter()
            work = working_grid(volume.geometry)
            model = model_on_grid(coarse.displacements, coarse.geometry, work)
            phase, registration = None, {}
            if cfg.modality == "CT":
                registered, registration = register_known(volume, given, work, progress=report.within("motion"),
                                                          cancel=cancel)
                if end is not None:
                    phase = end_phase(model, registered[n - 1])
                    model = at_phases(model, np.linspace(0.0, phase, n))
                fields_work = through_known(model, registered, KNOWN_MODEL_SHARE, KNOWN_PATTERN_WEIGHT)
            else:  # MR: the images, not a registration, say which strength (EF) the given frames show
                frame0_work = on_working_grid(volume, work)
                given_work = {t: on_working_grid(v, work) for t, v in given.items()}
                if end is not None:
                    phase = image_end_phase(frame0_work, given_work[n - 1], model, work)
                    model = at_phases(model, np.linspace(0.0, phase, n))
                fields_work = model  # a strength asked for, a model without one, or a residual: as drawn
                if amplitude is None and cfg.amplitude is not None and not residual:
                    a = cfg.amplitude
                    low, high = (self.population_on_grid(v, drawn_frames, grid, work) for v in (a.min, a.max))
                    if end is not None:
                        low, high = (at_phases(m, np.linspace(0.0, phase, n)) for m in (low, high))
                    f = fit_on_line(frame0_work, given_work, low, high, work)
                    strengths = {"fitted": a.min + f * (a.max - a.min), "unit": a.unit}
                    fields_work = (low + np.float32(f) * (high - low)).astype(np.float32)
            coarse = MotionFields(fields_work, work, {"method": "modiff-motion through given frames", "model": cfg.name})
            # the samples' spread is that of the unconditioned motion: not shown for this mode
            spread, samples_fields = None, None
            conditioned = {"mode": "two-frame" if end is not None else "partial", "given_frames": list(given),
                           "end_phase": None if phase is None else round(phase, 4),
                           "working_grid": work.describe(), "registration_seconds": registration.get("seconds"),
                           "method": "registration" if cfg.modality == "CT" else
                           "image-fitted strength" if strengths is not None else "the model's motion",
                           "fitted_strength": None if strengths is None else
                           f"{strengths['fitted']:.1f} {strengths['unit']}"}
            stage_done("motion", t0)

        t0 = time.perf_counter()
        frames, fields = warp_input(volume, coarse, mass_conservation=cfg.modality == "CT",
                                    progress=report.within("warp"), cancel=cancel, device=dev)
        if given is not None:
            for t, frame in given.items():  # the user's frames, exactly
                frames[t] = cast_like(np.asarray(frame.array, dtype=np.float32), volume.array.dtype) \
                    if frame.array.dtype != volume.array.dtype else frame.array
        sequence = VolumeSequence(frames, volume.geometry, name=f"{volume.name} cine", index_name="frame")
        stage_done("warp", t0)

        carried = None
        if label_map is not None:
            t0 = time.perf_counter()
            # the coarse fields, resampled exactly as for the images: labels and frames agree
            carried = carry_labels(label_map.volume, coarse, progress=report.within("propagate"), cancel=cancel)
            carried.name = f"{volume.name} labels"
            stage_done("propagate", t0)

        provenance = {
            **provenance_head(cfg, self.source),
            "family": "motion",
            "frames": n,
            "steps": steps if residual else 0,
            "sampler": sampler,
            "transfer": "warp",
            "samples": int(drawn.shape[0]),
            "residual": bool(residual),
            "trace": None if trace_mm is None else [round(float(v), 3) for v in trace_mm],
            "anatomy": box.describe(),
            "labels": None if label_map is None else {str(v): n for v, n in label_map.named().items()},
            "given_frames": conditioned,
            "typicality": typical,
            "warnings": ([] if typical is None else list(typical["warnings"])) + (
                ["no lungs were found in frame 0 (fewer than 0.2 % of voxels below -400 HU inside the body); the "
                 "breathing motion was placed on the body's box"] if box.method == "body" else []),
            "amplitude_used": float(strengths["fitted"] if strengths is not None else
                                    self.population.amplitude_mean if amplitude is None else amplitude),
            # which population motion was used: the typical motion, or the line at a strength (mapped)
            "population_motion": ("typical" if amplitude is None and not residual and self.population.typical is not None
                                  else {"line_strength": round(self.population.line_strength(amplitude, calibrated=not residual), 4)}),
            **provenance_tail(cfg, seed, amplitude, dev, t_start),
        }
        return GenerationResult(sequence, provenance, report.timings, motion=fields, spread=spread,
                                motion_samples=samples_fields, labels=carried,
                                label_map=label_map)
