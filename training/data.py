"""Training data: caches built once per run, and a batch order that is a function of the step.

Caches (under ``RUN_DIR/cache``), so that a training step costs only the network:

* ``frames/``: every training case preprocessed exactly as inference preprocesses its input --
  the model grid centred on the case (``pipeline.grid_for(frame 0)``) and the intensity window
  of frame 0 (``pipeline.window(frame 0)``, fixed HU window for CT, percentiles for MR), applied
  to every frame with ``MoDiffLib.preprocess.to_model`` -- stored as one (T, K, J, I) ``.npy``
  per case (float16 by default: the values lie in [-1, 1], so the rounding error is below 5e-4)
  and memory-mapped when read. One window per case, from frame 0, keeps the frame-to-frame
  changes in one intensity scale, as the difference transfer at inference assumes.
* ``latents/``: after the VAE stage, the posterior mean of every cached frame under the EMA
  VAE, one (T, C, d, h, w) float32 ``.npy`` per case (unscaled; multiplied by ``latent_scale``
  when a batch is drawn). The index records a hash of the VAE weights; a cache made by other
  weights is rebuilt.

Both are rebuilt when their key (data spec and options, grid, intensity recipe; VAE weights)
changes, and reused by a resumed run. Work is split over the processes of a distributed run.

Which frames make a training sequence (``[data] subsample``). A training sequence always starts
at frame 0 of its case, because an inference input is frame 0 of the cine asked for: the phantoms'
frame 0 is end-exhale (lung) or end-diastole (cardiac) by default (``start_phase`` 0, what the
demo shows and ``modiff phantom`` writes as ``frame0.nrrd``); ACDC cases start at ED and 4D-Lung
cases at the first phase of the selection (0 %, end-inhale). A model thus learns the start phase
of its data, and its users should give it inputs in that phase. Starting at random phases would make the direction of motion ambiguous from
one frame (a half-inhaled lung may be breathing in or out). What the N frames span follows the
paper: at a fixed sampling interval a given N means a given breathing or heart period, so the
N frames of a sequence span the case's whole recorded interval:

* ``cycle`` (phantoms: T frames evenly spanning one periodic cycle): every ``s``-th frame for a
  stride ``s`` dividing T, i.e. exactly the cine ``make_phantom(num_frames=T/s)`` would give --
  one cycle in N = T/s frames; phantom cases themselves draw T per case from a range;
* ``interval`` (ACDC ED->ES, 4D-Lung phases 0-5: both end points recorded): every ``s``-th frame
  for ``s`` dividing T-1, keeping the first and last frame;
* ``prefix``: the first N frames for any N in 2..T (the motion so far, at the case's interval);
* ``none``: the whole case only.

Only choices with 2 <= N <= max_frames are used; a case with none is an error before training.

Batch order. Sample ``i`` of the global batch of step ``k`` is drawn from
``numpy.random.default_rng([seed, stage, k, i])``: its case, its frame choice, its timestep, its
noise seed (the noise itself is drawn on the training device, so it is the same for every run on
one kind of device) and whether its amplitude is dropped. Process ``r`` of ``W`` takes samples
``r, r + W, ...`` (what ``DistributedSampler`` does with an epoch). Nothing depends on what
happened before step ``k``, so a resumed run draws exactly the batches the uninterrupted run
would have drawn, and the order does not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from MoDiffLib.atomic import atomic_file
from MoDiffLib.errors import InputError
from MoDiffLib.models.tddm import fields_from_latents
from MoDiffLib.pipeline import MoDiffPipeline, check_modality
from MoDiffLib.preprocess import to_model

CACHE_VERSION = 1
#: Stage codes mixed into the batch seeds, so that the stages draw unrelated streams.
STAGE_CODES = {"vae": 1, "tddm": 2, "i2v": 3}

Sync = Callable[[], None]


def _no_sync() -> None:
    return None


# -- frame choices -----------------------------------------------------------------------------
def sequence_choices(num_frames: int, mode: str, max_frames: int) -> list[tuple[int, int]]:
    """The (stride, N) pairs a case of ``num_frames`` frames offers under ``mode``; see the module doc."""
    t = int(num_frames)
    if mode == "cycle":
        pairs = [(s, t // s) for s in range(1, t) if t % s == 0]
    elif mode == "interval":
        pairs = [(s, (t - 1) // s + 1) for s in range(1, t) if (t - 1) % s == 0]
    elif mode == "prefix":
        pairs = [(1, n) for n in range(2, t + 1)]
    elif mode == "none":
        pairs = [(1, t)]
    else:
        raise InputError(f"unknown subsample mode {mode!r}")
    return [(s, n) for s, n in pairs if 2 <= n <= max_frames]


def frame_indices(stride: int, count: int) -> list[int]:
    return [i * stride for i in range(count)]


def sample_rng(seed: int, stage: str, step: int, index: int = -1) -> np.random.Generator:
    """The random source of one sample (``index >= 0``) or of a whole step (``index = -1``)."""
    key = [int(seed), STAGE_CODES[stage], int(step)]
    return np.random.default_rng(key if index < 0 else key + [int(index)])


def shard(global_batch: int, rank: int, world: int) -> range:
    """Indices of the global batch that process ``rank`` of ``world`` takes."""
    return range(rank, global_batch, world)


# -- the frame cache ---------------------------------------------------------------------------
@dataclass
class CachedCase:
    case_id: str
    num_frames: int
    amplitude: float | None  # in the data set's clinical unit (mm, %), as given


class FrameCache:
    """Cases on the model grid, normalised: ``frames(i)`` is a (T, K, J, I) memory-mapped array."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / "index.json").read_text(encoding="utf-8"))
        self.key = index["key"]
        self.cases = [CachedCase(c["case_id"], c["num_frames"], c["amplitude"]) for c in index["cases"]]
        self._arrays = [np.load(self.folder / _case_file(i), mmap_mode="r") for i in range(len(self.cases))]

    def __len__(self) -> int:
        return len(self.cases)

    def frames(self, i: int) -> np.ndarray:
        return self._arrays[i]

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(self._arrays[0].shape[1:])  # type: ignore[return-value]


def _case_file(i: int, prefix: str = "case") -> str:
    return f"{prefix}-{i:05d}.npy"


def frame_cache_key(spec: str, options: dict[str, Any], pipeline: MoDiffPipeline, dtype: str) -> str:
    cfg = pipeline.config
    text = json.dumps(
        {"version": CACHE_VERSION, "spec": spec, "options": options, "grid": dataclasses.asdict(cfg.grid),
         "intensity": dataclasses.asdict(cfg.intensity), "dtype": dtype},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_frame_cache(
    dataset: Sequence,
    pipeline: MoDiffPipeline,
    folder: Path,
    key: str,
    mode: str,
    dtype: str = "float16",
    rank: int = 0,
    world: int = 1,
    sync: Sync = _no_sync,
    say: Callable[[str], None] = print,
) -> FrameCache:
    """Preprocess every case of ``dataset`` onto the model grid (once per run; reused if ``key`` matches).

    Raises:
        InputError: a case whose modality does not fit the model (e.g. MR for a CT model), or
            whose frame count offers no sequence of 2..max_frames frames under ``mode``.
    """
    folder = Path(folder)
    cfg = pipeline.config
    if _index_key(folder) == key:
        cache = FrameCache(folder)
        for case in cache.cases:
            _check_choices(case.case_id, case.num_frames, mode, cfg.max_frames)
        return cache
    folder.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    mine = list(shard(n, rank, world))
    if rank == 0:
        say(f"caching {n} training case(s) on the model grid {list(cfg.grid.shape_kji)} (K, J, I) in {folder}")
    for count, i in enumerate(mine, start=1):
        case = dataset[i]
        frames = case.frames
        _check_choices(case.case_id, frames.num_frames, mode, cfg.max_frames)
        first = frames.frame(0)
        try:
            check_modality(first, cfg)
        except InputError as e:
            raise InputError(f"training case {case.case_id}: {e}") from None
        grid, window = pipeline.grid_for(first), pipeline.window(first)
        array = np.stack([to_model(frames.frame(t), grid, window) for t in range(frames.num_frames)])
        with atomic_file(folder / _case_file(i), overwrite=True) as tmp:
            np.save(tmp, array.astype(dtype))
        meta = {"case_id": case.case_id, "num_frames": frames.num_frames,
                "amplitude": None if case.amplitude is None else float(case.amplitude)}
        with atomic_file(folder / f"case-{i:05d}.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(meta), encoding="utf-8")
        if rank == 0 and (count % 8 == 0 or count == len(mine)):
            say(f"  cached {count}/{len(mine)} case(s) of this process")
    sync()
    if rank == 0:
        cases = [json.loads((folder / f"case-{i:05d}.json").read_text(encoding="utf-8")) for i in range(n)]
        _write_index(folder, {"version": CACHE_VERSION, "key": key, "cases": cases})
    sync()
    return FrameCache(folder)


def _check_choices(case_id: str, num_frames: int, mode: str, max_frames: int) -> None:
    if not sequence_choices(num_frames, mode, max_frames):
        raise InputError(
            f"training case {case_id} has {num_frames} frames, which give no sequence of 2..{max_frames} "
            f"frames with data.subsample '{mode}'; raise model.max_frames or change data.subsample"
        )


def _index_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / "index.json").read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError):
        return None


def _write_index(folder: Path, index: dict[str, Any]) -> None:
    with atomic_file(folder / "index.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(index, indent=1), encoding="utf-8")


# -- the latent cache --------------------------------------------------------------------------
def weights_hash(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes), hex."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """Unscaled VAE posterior means of every cached frame: ``latents(i)`` is (T, C, d, h, w)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / "index.json").read_text(encoding="utf-8"))
        self.key = index["key"]
        self.num_cases = int(index["num_cases"])
        self._arrays = [np.load(self.folder / _case_file(i, "latent"), mmap_mode="r") for i in range(self.num_cases)]

    def latents(self, i: int) -> np.ndarray:
        return self._arrays[i]

    def __len__(self) -> int:
        return self.num_cases


@torch.no_grad()
def build_latent_cache(
    frames: FrameCache,
    vae: torch.nn.Module,
    folder: Path,
    key: str,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    sync: Sync = _no_sync,
    say: Callable[[str], None] = print,
) -> LatentCache:
    """Encode every cached frame with ``vae`` (one frame at a time, as the pipeline encodes its input)."""
    folder = Path(folder)
    if _index_key(folder) == key:
        return LatentCache(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vae.eval()
    if rank == 0:
        say(f"encoding the frames of {len(frames)} case(s) into {folder}")
    for i in shard(len(frames), rank, world):
        video = frames.frames(i)
        means = []
        for t in range(video.shape[0]):
            x = torch.from_numpy(np.array(video[t], dtype=np.float32))[None, None].to(device)
            means.append(vae.encode(x)[0][0].float().cpu().numpy())
        with atomic_file(folder / _case_file(i, "latent"), overwrite=True) as tmp:
            np.save(tmp, np.stack(means))
    sync()
    if rank == 0:
        _write_index(folder, {"version": CACHE_VERSION, "key": key, "num_cases": len(frames)})
    sync()
    return LatentCache(folder)


def latent_scale_frames(frames: FrameCache, count: int) -> list[torch.Tensor]:
    """Up to ``count`` frames spread evenly over all cached frames, as (1, 1, K, J, I) batches."""
    where = [(i, t) for i in range(len(frames)) for t in range(frames.cases[i].num_frames)]
    picks = np.unique(np.linspace(0, len(where) - 1, min(count, len(where))).round().astype(int))
    return [torch.from_numpy(np.array(frames.frames(where[p][0])[where[p][1]], dtype=np.float32))[None, None]
            for p in picks]


def field_std(latents: LatentCache, latent_scale: float) -> float:
    """Standard deviation of the scaled latent differences z_t - z_(t-1) of consecutive cached frames."""
    count, total, total_sq = 0, 0.0, 0.0
    for i in range(len(latents)):
        z = torch.from_numpy(np.asarray(latents.latents(i), dtype=np.float64)) * latent_scale
        d = z[1:] - z[:-1]
        count += d.numel()
        total += float(d.sum())
        total_sq += float((d * d).sum())
    if count < 2:
        raise InputError("measuring the field scale needs cases with at least two frames")
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0) * count / (count - 1)
    if not var > 0:
        raise InputError("the training cases do not move (all latent differences are zero); cannot scale the fields")
    return var**0.5


# -- batches -----------------------------------------------------------------------------------
@dataclass
class FrameBatch:
    """VAE batch: frames (B, 1, K, J, I) and the seed of the posterior noise."""

    frames: torch.Tensor
    noise_seed: int


@dataclass
class SequenceBatch:
    """TDDM / I2V batch.

    Attributes:
        latents: (B, C, T, d, h, w) scaled latents of frames 0..N-1 (zero beyond each N);
            T = the largest N of this process's samples.
        num_frames: (B,) N per sample.
        amplitude: (B,) normalised amplitudes, NaN where absent or dropped; None for a model
            without an amplitude condition.
        timesteps: (B,) diffusion timesteps.
        noise: like ``latents``.
        use_tddm_fields: I2V: condition this step on TDDM-sampled fields.
        field_seed: I2V: seed of that sampling.
    """

    latents: torch.Tensor
    num_frames: torch.Tensor
    amplitude: torch.Tensor | None
    timesteps: torch.Tensor
    noise: torch.Tensor
    use_tddm_fields: bool = False
    field_seed: int = 0

    @property
    def prompt(self) -> torch.Tensor:
        return self.latents[:, :, 0]

    def fields(self, field_scale: float) -> torch.Tensor:
        """Ground-truth scaled fields (B, C, T, d, h, w): ``(z_i - z_(i-1)) * field_scale``."""
        return fields_from_latents(self.latents, self.num_frames) * field_scale


def draw_frame_batch(frames: FrameCache, seed: int, step: int, global_batch: int, rank: int, world: int,
                     device: torch.device) -> FrameBatch:
    """The VAE batch of ``step`` for process ``rank``: random frames of random cases."""
    picked = []
    for i in shard(global_batch, rank, world):
        rng = sample_rng(seed, "vae", step, i)
        case = int(rng.integers(len(frames)))
        t = int(rng.integers(frames.cases[case].num_frames))
        picked.append(np.asarray(frames.frames(case)[t], dtype=np.float32))
    noise_seed = int(sample_rng(seed, "vae", step).integers(2**62)) + rank
    x = torch.from_numpy(np.stack(picked))[:, None]
    return FrameBatch(x.to(device), noise_seed)


def draw_sequence_batch(
    stage: str,
    latents: LatentCache,
    cases: list[CachedCase],
    amplitudes: list[float | None],
    *,
    mode: str,
    max_frames: int,
    latent_scale: float,
    num_train_timesteps: int,
    amplitude_dropout: float,
    has_amplitude: bool,
    seed: int,
    step: int,
    global_batch: int,
    rank: int,
    world: int,
    device: torch.device,
    tddm_field_prob: float = 0.0,
) -> SequenceBatch:
    """The TDDM/I2V batch of ``step`` for process ``rank`` (see the module doc for the order).

    ``amplitudes`` holds each case's amplitude normalised to [0, 1], or None.
    """
    videos, counts, amps, steps, noises = [], [], [], [], []
    for i in shard(global_batch, rank, world):
        rng = sample_rng(seed, stage, step, i)
        case = int(rng.integers(len(cases)))
        choices = sequence_choices(cases[case].num_frames, mode, max_frames)
        stride, n = choices[int(rng.integers(len(choices)))]
        dropped = bool(rng.random() < amplitude_dropout)
        steps.append(int(rng.integers(num_train_timesteps)))
        noise_seed = int(rng.integers(2**62))
        z = np.asarray(latents.latents(case)[frame_indices(stride, n)], dtype=np.float32)  # (N, C, d, h, w)
        videos.append(torch.from_numpy(z).transpose(0, 1) * latent_scale)  # (C, N, d, h, w)
        counts.append(n)
        a = amplitudes[case]
        amps.append(float("nan") if dropped or a is None else a)
        g = torch.Generator(device=device).manual_seed(noise_seed)
        noises.append(torch.randn(videos[-1].shape, generator=g, device=device))
    length = max(counts)

    def padded(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, 0, 0, 0, 0, 0, 0, length - x.shape[1]))

    step_rng = sample_rng(seed, stage, step)
    use_tddm = bool(step_rng.random() < tddm_field_prob)
    return SequenceBatch(
        latents=torch.stack([padded(v) for v in videos]).to(device),
        num_frames=torch.tensor(counts, dtype=torch.int64, device=device),
        amplitude=torch.tensor(amps, dtype=torch.float32, device=device) if has_amplitude else None,
        timesteps=torch.tensor(steps, dtype=torch.int64, device=device),
        noise=torch.stack([padded(e) for e in noises]),
        use_tddm_fields=use_tddm,
        field_seed=int(step_rng.integers(2**62)),
    )
