"""The training loop of one stage, read top to bottom: load batch, forward, loss, step, EMA,
log, checkpoint, validate.

The same loop trains the three networks; what differs per stage is the batch (frames for the
VAE, latent sequences for TDDM and I2V) and the loss (``vae_loss``, ``tddm_loss``, ``i2v_loss``
of :mod:`MoDiffLib.models`). Around it:

* **optimisation**: AdamW, linear warm-up then cosine decay to zero at the stage's last step,
  global gradient-norm clipping, bf16/fp16 autocast on CUDA only (fp16 with a gradient scaler;
  cuDNN autotuning on, so GPU runs are fast but not bit-reproducible),
  an exponential moving average (EMA) of the weights that checkpoints and validation use;
* **checkpoints** every ``checkpoint_every`` steps and at the end, by process 0 only:
  ``RUN_DIR/model`` in the release format (``MoDiffPipeline.save_pretrained``, EMA weights,
  provenance in ``config.training``) and ``RUN_DIR/state.pt``, everything a resumed run needs
  (weights, EMA, optimiser, scheduler, gradient scaler, the RNG states of python, numpy and
  torch, the data cursor), written atomically;
* **exact resume**: the batch of step k is a function of (seed, stage, k) (:mod:`training.data`),
  so a run stopped after a checkpoint and resumed reaches the same weights, bit for bit on a CPU,
  as one that never stopped;
* **distributed**: under ``torchrun`` the trained network is wrapped in
  ``DistributedDataParallel`` (gloo on CPU, NCCL on CUDA), each process takes its share of the
  global batch, and process 0 alone logs, validates and writes.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from MoDiffLib import __version__ as modiff_version
from MoDiffLib.atomic import atomic_file
from MoDiffLib.errors import InputError
from MoDiffLib.models.config import ModelConfig
from MoDiffLib.models.diffusion import NoiseSchedule, i2v_loss, sample_fields, tddm_loss
from MoDiffLib.models.vae import compute_latent_scale, vae_loss
from MoDiffLib.pipeline import MoDiffPipeline, normalise_amplitude

from .config import TrainConfig
from .data import (
    CachedCase,
    FrameCache,
    LatentCache,
    build_latent_cache,
    draw_frame_batch,
    draw_sequence_batch,
    field_std,
    latent_scale_frames,
    weights_hash,
)
from .validate import MODES, ValidationCase, validate

STATE_FORMAT = "modiff-training-state"
STATE_VERSION = 1
#: ``state.pt`` is a sealed envelope: the state's ``torch.save`` bytes as a uint8 tensor and their
#: SHA-256, so a damaged state is refused instead of resumed (torch's zip reader checks no CRCs).
#: The hash lives inside the one file, not in a sidecar, so the single atomic rename of
#: ``write_state`` publishes state and checksum together: a SIGKILL between two renames could
#: otherwise leave a good state beside a stale checksum and refuse a resumable run.
SEALED_FORMAT = "modiff-training-state-sealed"
LOG_COLUMNS = ("wall_s", "stage", "step", "kind", "loss", "lr", "grad_norm", "samples_per_s",
               "psnr", "ssim", "nmse", "tce", "static_psnr", "static_ssim", "static_nmse", "static_tce")


# -- what a run holds --------------------------------------------------------------------------
@dataclass
class Budget:
    """How much this invocation may still train: optimiser steps and wall-clock time."""

    steps_left: int | None = None
    deadline: float | None = None  # time.monotonic() value

    def exhausted(self, world: int, device: torch.device) -> bool:
        stop = self.steps_left is not None and self.steps_left <= 0
        if self.deadline is not None:
            late = time.monotonic() >= self.deadline
            if world > 1:  # every process must stop at the same step: process 0's clock decides
                flag = torch.tensor([1.0 if late else 0.0], device=device)
                dist.broadcast(flag, src=0)
                late = bool(flag.item())
            stop = stop or late
        return stop

    def spend(self) -> None:
        if self.steps_left is not None:
            self.steps_left -= 1


@dataclass
class Run:
    """Everything the stages share: settings, place, processes, data, logs."""

    config: TrainConfig
    out: Path
    device: torch.device
    rank: int
    world: int
    command: str
    frames: FrameCache
    amplitudes: list[float | None]  # per cached case, normalised to [0, 1]
    validation_cases: list[ValidationCase]
    budget: Budget
    started_at: float = field(default_factory=time.time)
    latents: LatentCache | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def say(self, text: str) -> None:
        if self.is_main:
            print(text, flush=True)

    def sync(self) -> None:
        if self.world > 1:
            dist.barrier()

    def trim_log(self, stage: str, step: int) -> None:
        """Drop rows of ``stage`` after ``step`` (logged by a run that stopped before checkpointing them)."""
        path = self.out / "log.csv"
        if not self.is_main or not path.exists():
            return
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if r["stage"] != stage or int(r["step"]) <= step]
        if len(keep) == len(rows):
            return
        with atomic_file(path, overwrite=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(keep)

    def log_row(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        path = self.out / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k)) for k in LOG_COLUMNS})


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


@dataclass
class Model:
    """The model being trained: its config (with the measured scales), its three networks, and
    what has been done to it (stages completed, per-stage history for the provenance)."""

    config: ModelConfig
    networks: dict[str, nn.Module]
    completed: list[str] = field(default_factory=list)
    history: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_config(self.config.diffusion)


# -- small parts of the loop -------------------------------------------------------------------
class EMA:
    """Exponential moving average of a network's weights, kept as a network (``shadow``).

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))`` so that early averages are
    not dominated by the random initial weights.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = copy.deepcopy(net).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for mine, theirs in zip(self.shadow.parameters(), net.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - d)
        for mine, theirs in zip(self.shadow.buffers(), net.buffers()):
            mine.copy_(theirs)


class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = int(warmup), int(total)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def autocast(device: torch.device):
    """bf16 (or fp16 on GPUs without bf16) autocast on CUDA; nothing on CPU."""
    if device.type != "cuda":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)


def uses_fp16(device: torch.device) -> bool:
    return device.type == "cuda" and not torch.cuda.is_bf16_supported()


def wrap_distributed(net: nn.Module, run: Run) -> nn.Module:
    """DDP around ``net`` in a distributed run (the losses read these attributes from the model)."""
    if run.world == 1:
        return net
    ids = [run.device.index] if run.device.type == "cuda" else None
    wrapped = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    for name in ("max_frames", "latent_channels", "residual_to_fields"):
        if hasattr(net, name):
            setattr(wrapped, name, getattr(net, name))
    return wrapped


def mean_over_processes(value: float, run: Run) -> float:
    if run.world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=run.device)
    dist.all_reduce(t)
    return float(t.item()) / run.world


# -- RNG and state files ---------------------------------------------------------------------------
def rng_states() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def read_state(path: Path) -> dict[str, Any] | None:
    """The resumable state of a run folder, or None when it has none; its checksum is verified
    first, so a damaged ``state.pt`` is a one-line InputError, never resumed. A state written
    before states were sealed loads with a one-line warning on stderr."""
    if not path.exists():
        return None
    state = _load_state(path, path)
    if isinstance(state, dict) and state.get("format") == SEALED_FORMAT:
        payload, digest = state.get("payload"), state.get("sha256")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not isinstance(digest, str):
            raise InputError(f"the training state '{path}' is damaged: its checksum envelope is malformed; "
                             "remove it to start over")
        data = payload.numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise InputError(f"{path.name} is damaged: checksum mismatch ('{path}'); remove it to start over")
        state = _load_state(io.BytesIO(data), path)
    elif isinstance(state, dict) and state.get("format") == STATE_FORMAT:
        print(f"train: warning: the training state '{path}' has no checksum (written by an older MoDiff); "
              "it is resumed unverified", file=sys.stderr)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise InputError(f"'{path}' is not a MoDiff training state")
    if state.get("version") != STATE_VERSION:
        raise InputError(f"'{path}' has training-state version {state.get('version')}; this trainer reads {STATE_VERSION}")
    return state


def _load_state(source: Path | io.BytesIO, path: Path) -> Any:
    """``torch.load`` without code execution; any failure is a one-line InputError naming ``path``."""
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise InputError(f"the training state '{path}' cannot be read ({e}); remove it to start over") from None


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, sealed with its SHA-256 (see :data:`SEALED_FORMAT`)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    sealed = {
        "format": SEALED_FORMAT,
        "sha256": hashlib.sha256(data).hexdigest(),
        "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8),
    }
    with atomic_file(path, overwrite=True) as tmp:
        torch.save(sealed, tmp)


# -- provenance ----------------------------------------------------------------------------------
def git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}
    if sha.returncode != 0:
        return {"git_commit": None}
    return {"git_commit": sha.stdout.strip(), "git_dirty": bool(status.stdout.strip())}


def hardware(run: Run) -> dict[str, Any]:
    info = {"device": str(run.device), "processes": run.world, "host": platform.node(),
            "platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
    if run.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(run.device)
    return info


def provenance(run: Run, model: Model) -> dict[str, Any]:
    """``config.training`` of a release checkpoint: how these weights were made."""
    settings = run.config.resolved()
    settings.pop("model")  # the checkpoint's config is the model section
    return {
        "command": run.command,
        "config_file": run.config.source,
        "settings": settings,
        "data": {"spec": run.config.data.spec, "options": settings["data"]["options"], "num_cases": len(run.frames),
                 "subsample": run.config.data.subsample},
        "seed": run.config.seed,
        "stages": model.history,
        "stages_completed": list(model.completed),
        "wall_s": round(sum(h.get("wall_s", 0.0) for h in model.history.values()), 1),
        "hardware": hardware(run),
        "modiff_version": modiff_version,
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **git_commit(),
    }


def save_release(run: Run, model: Model, current: dict[str, nn.Module] | None = None) -> Path:
    """Write ``RUN_DIR/model`` (release format) with ``current`` networks in place of the model's."""
    config = replace(model.config, training=provenance(run, model))
    networks = {**model.networks, **(current or {})}
    return MoDiffPipeline(config, networks, source="training").save_pretrained(run.out / "model", overwrite=True)


def state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


# -- one stage -------------------------------------------------------------------------------------
def train_stage(run: Run, model: Model, stage: str, resume: dict[str, Any] | None = None) -> bool:
    """Train ``stage`` from step 0, or from ``resume`` (a state written by this function).

    Returns True when the stage is complete (its EMA weights are then the model's network),
    False when the budget (--max-steps / --max-minutes) stopped it after a checkpoint.
    """
    sc = run.config.stage(stage)
    net = model.networks[stage].train()
    ema = EMA(net, sc.ema_decay)
    optimizer = torch.optim.AdamW(net.parameters(), lr=sc.lr, weight_decay=sc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(sc.warmup_steps, sc.steps))
    scaler = torch.amp.GradScaler("cuda", enabled=uses_fp16(run.device))
    step, wall_s = 0, 0.0
    if resume is not None:
        net.load_state_dict(resume["networks"][stage])
        ema.shadow.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        set_rng_states(resume["rng"])
        step, wall_s = int(resume["step"]), float(resume["wall_s"])
        run.trim_log(stage, step)
        run.say(f"[{stage}] resuming at step {step} of {sc.steps}")
    network = wrap_distributed(net, run)
    schedule = model.schedule
    history = model.history.setdefault(stage, {})
    history.update({"steps_planned": sc.steps, "global_batch": sc.batch_size, "processes": run.world})
    if stage != "vae" and run.latents is None:
        raise RuntimeError("the latent cache must be ready before a diffusion stage")  # pragma: no cover
    val_every = run.config.validation.every if run.validation_cases else None
    run.say(f"[{stage}] training {sum(p.numel() for p in net.parameters()):,} parameters for {sc.steps} steps, "
            f"global batch {sc.batch_size} on {run.world} x {run.device}")

    def checkpoint(finished: bool) -> None:
        history.update({"steps": step, "wall_s": round(wall_s, 1), "finished": finished})
        if not run.is_main:
            return
        state = {
            "format": STATE_FORMAT, "version": STATE_VERSION,
            "stage": stage, "step": step, "finished": finished, "completed": list(model.completed),
            "model_config": model.config.to_dict(),
            "networks": {name: state_dict_cpu(m) for name, m in model.networks.items()},
            "ema": state_dict_cpu(ema.shadow),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_states(),
            "data": {"seed": run.config.seed, "next_step": step, "global_batch": sc.batch_size},
            "settings": run.config.resolved(), "history": copy.deepcopy(model.history),
            "wall_s": wall_s,
        }
        write_state(run.out / "state.pt", state)
        save_release(run, model, {stage: ema.shadow})

    meter = {"loss": 0.0, "grad_norm": 0.0, "count": 0, "seconds": 0.0}
    while step < sc.steps:
        if run.budget.exhausted(run.world, run.device):
            checkpoint(finished=False)
            dump_rank_hash(run, stage, net, ema, step)
            run.say(f"[{stage}] stopped at step {step} of {sc.steps} (budget of this run); continue with --resume")
            return False
        t0 = time.perf_counter()

        # 1. load batch ------------------------------------------------------------------------
        batch = load_batch(run, model, stage, step)

        # 2. forward and 3. loss -----------------------------------------------------------------
        with autocast(run.device):
            loss = stage_loss(run, model, stage, network, batch, schedule)

        # 4. optimiser step ------------------------------------------------------------------------
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(net.parameters(), sc.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        run.budget.spend()

        # 5. EMA -------------------------------------------------------------------------------------
        ema.update(net, step)

        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)  # honest step times for the throughput
        seconds = time.perf_counter() - t0
        wall_s += seconds
        meter["loss"] += loss.detach().float()  # tensors: no device sync until the log line
        meter["grad_norm"] += grad_norm.detach().float()
        meter["count"] += 1
        meter["seconds"] += seconds

        # 6. log -------------------------------------------------------------------------------------
        if step % sc.log_every == 0 or step == sc.steps:
            mean_loss = mean_over_processes(float(meter["loss"]) / meter["count"], run)
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"[{stage}] the loss became {mean_loss} by step {step}; lower {stage}.lr")
            rate = sc.batch_size * meter["count"] / max(meter["seconds"], 1e-9)
            lr = scheduler.get_last_lr()[0]
            run.say(f"[{stage}] step {step}/{sc.steps} loss {mean_loss:.5f} lr {lr:.2e} "
                    f"grad {float(meter['grad_norm']) / meter['count']:.3f} {rate:.2f} samples/s")
            run.log_row({"wall_s": time.time() - run.started_at, "stage": stage, "step": step, "kind": "train",
                         "loss": mean_loss, "lr": lr, "grad_norm": float(meter["grad_norm"]) / meter["count"],
                         "samples_per_s": rate})
            history["last_loss"] = round(mean_loss, 6)
            history["samples_per_s"] = round(rate, 3)
            meter = {"loss": 0.0, "grad_norm": 0.0, "count": 0, "seconds": 0.0}

        # 7. checkpoint ---------------------------------------------------------------------------
        if step % sc.checkpoint_every == 0 or step == sc.steps:
            checkpoint(finished=False)

        # 8. validate -------------------------------------------------------------------------------
        if val_every is not None and (step % val_every == 0 or step == sc.steps):
            run_validation(run, model, stage, ema, step)

    dump_rank_hash(run, stage, net, ema, step)
    finish_stage(run, model, stage, ema)
    checkpoint(finished=True)
    run.say(f"[{stage}] done: {step} steps in {wall_s / 60:.1f} min of training; release checkpoint {run.out / 'model'}")
    return True


def load_batch(run: Run, model: Model, stage: str, step: int):
    """The batch of ``step`` for this process (see :mod:`training.data` for the order)."""
    sc = run.config.stage(stage)
    if stage == "vae":
        return draw_frame_batch(run.frames, run.config.seed, step, sc.batch_size, run.rank, run.world, run.device)
    cfg = model.config
    return draw_sequence_batch(
        stage, run.latents, run.frames.cases, run.amplitudes,
        mode=run.config.data.subsample, max_frames=cfg.max_frames, latent_scale=cfg.latent_scale,
        num_train_timesteps=cfg.diffusion.num_train_timesteps, amplitude_dropout=sc.amplitude_dropout,
        has_amplitude=cfg.amplitude is not None, seed=run.config.seed, step=step, global_batch=sc.batch_size,
        rank=run.rank, world=run.world, device=run.device,
        tddm_field_prob=getattr(sc, "tddm_field_prob", 0.0),
    )


def stage_loss(run: Run, model: Model, stage: str, network: nn.Module, batch, schedule: NoiseSchedule) -> torch.Tensor:
    """The stage's training loss on one batch (random draws come with the batch)."""
    sc = run.config.stage(stage)
    cfg = model.config
    if stage == "vae":
        generator = torch.Generator(device=run.device).manual_seed(batch.noise_seed)
        loss, _ = vae_loss(network, batch.frames, kl_weight=sc.kl_weight, gradient_weight=sc.gradient_weight,
                           generator=generator)
        return loss
    if stage == "tddm":
        return tddm_loss(network, batch.fields(cfg.field_scale), batch.prompt, batch.num_frames, batch.amplitude,
                         amplitude_dropout=0.0, schedule=schedule, noise=batch.noise, timesteps=batch.timesteps)
    if batch.use_tddm_fields:
        fields = sample_fields(model.networks["tddm"], batch.prompt, batch.num_frames, steps=sc.tddm_field_steps,
                               seed=batch.field_seed + run.rank, amplitude=batch.amplitude, schedule=schedule)
        fields = fields[:, :, : batch.latents.shape[2]].to(batch.latents.dtype)
    else:
        fields = batch.fields(cfg.field_scale)
    return i2v_loss(network, batch.latents, batch.prompt, fields, batch.num_frames, batch.amplitude,
                    amplitude_dropout=0.0, schedule=schedule, noise=batch.noise, timesteps=batch.timesteps,
                    field_scale=cfg.field_scale)


def run_validation(run: Run, model: Model, stage: str, ema: EMA, step: int) -> None:
    """Score held-out cines made with the EMA weights (process 0; the others wait)."""
    if run.is_main:
        t0 = time.perf_counter()
        pipeline = MoDiffPipeline(model.config, {**model.networks, stage: ema.shadow}, source="validation")
        v = run.config.validation
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
            scores = validate(pipeline, stage, run.validation_cases, v.sampling_steps, v.seed, run.device)
        model.networks[stage].train()
        run.say(f"[{stage}] validation ({MODES[stage]}, {len(run.validation_cases)} case(s), "
                f"{time.perf_counter() - t0:.1f} s): PSNR {scores['psnr']:.2f} dB (static {scores['static_psnr']:.2f}) "
                f"SSIM {scores['ssim']:.4f} (static {scores['static_ssim']:.4f}) "
                f"NMSE {scores['nmse']:.4g} (static {scores['static_nmse']:.4g}) TCE {scores['tce']:.4g}")
        run.log_row({"wall_s": time.time() - run.started_at, "stage": stage, "step": step,
                     "kind": f"val-{MODES[stage]}", **scores})
        model.history.setdefault(stage, {})["validation"] = {"step": step, **{k: round(x, 5) for k, x in scores.items()}}
    run.sync()


def finish_stage(run: Run, model: Model, stage: str, ema: EMA) -> None:
    """The EMA weights become the model's network; after the VAE, measure the two scales."""
    model.networks[stage].load_state_dict(ema.shadow.state_dict())
    model.networks[stage].eval()
    if stage == "vae":
        sc = run.config.vae
        vae = model.networks["vae"]
        latent_scale = torch.zeros(1, dtype=torch.float64, device=run.device)
        if run.is_main:
            frames = [f.to(run.device) for f in latent_scale_frames(run.frames, sc.latent_scale_frames)]
            latent_scale[0] = compute_latent_scale(vae, frames, chunk_size=1)
        if run.world > 1:
            dist.broadcast(latent_scale, src=0)
        config = replace(model.config, latent_scale=float(latent_scale.item()))
        run.latents = ensure_latents(run, model)
        config = replace(config, field_scale=1.0 / field_std(run.latents, config.latent_scale))
        model.config = config
        model.history["vae"].update({"latent_scale": config.latent_scale, "field_scale": config.field_scale})
        run.say(f"[vae] latent_scale {config.latent_scale:.5g}, field_scale {config.field_scale:.5g}")
    model.completed.append(stage)


def ensure_latents(run: Run, model: Model) -> LatentCache:
    """The latent cache of the model's VAE (built, or reused when made by the same weights)."""
    vae = model.networks["vae"].eval()
    key = f"{run.frames.key}-{weights_hash(vae)[:16]}"
    return build_latent_cache(run.frames, vae, run.out / "cache" / "latents", key, run.device, run.rank, run.world,
                              run.sync, run.say)


def dump_rank_hash(run: Run, stage: str, net: nn.Module, ema: EMA, step: int) -> None:
    """In a distributed run, every process writes the hash of its weights (they must agree)."""
    if run.world == 1:
        return
    folder = run.out / "ddp"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"stage": stage, "step": step, "weights": weights_hash(net), "ema": weights_hash(ema.shadow)})
    with atomic_file(folder / f"{stage}-rank{run.rank}.json", overwrite=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def cached_case_amplitudes(cases: list[CachedCase], config: ModelConfig) -> tuple[list[float | None], int]:
    """Per case the amplitude normalised to [0, 1] (``normalise_amplitude``); None where the case
    has none, the model has no amplitude condition, or the value is outside the model's range
    (returned count)."""
    out, outside = [], 0
    for case in cases:
        if case.amplitude is None or config.amplitude is None:
            out.append(None)
            continue
        try:
            out.append(normalise_amplitude(config, case.amplitude))
        except InputError:
            out.append(None)
            outside += 1
    return out, outside
