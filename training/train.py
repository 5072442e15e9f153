"""Train Mo-Diff: ``python -m training.train --config FILE --stage vae|tddm|i2v|all --out RUN_DIR``.

Stages run in the order vae -> tddm -> i2v; each later stage needs the earlier ones in the same
RUN_DIR. Everything that can be wrong with the inputs is checked before the first step: the
config (unknown keys, types, ranges), the run folder (a stage already there needs --resume),
the data (the data set's own checks, frame counts, modality) and the validation cases.

Outputs in RUN_DIR: ``model/`` (release checkpoint, loadable with
``MoDiffPipeline.from_pretrained``), ``state.pt`` (resumable state), ``log.csv`` (losses,
throughput, validation scores), ``cache/`` (frames on the model grid, VAE latents) and, in a
distributed run, ``ddp/<stage>-rank<r>.json`` (weight hashes of every process).

Distributed: ``torchrun --nproc_per_node P -m training.train ...`` (gloo on CPU, NCCL on CUDA).

Exit status: 0 done or stopped by --max-steps/--max-minutes (resumable), 2 for an input error
(message on stderr as ``train: error: ...``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from MoDiffLib.errors import InputError, MoDiffError
from MoDiffLib.datasets import open_dataset
from MoDiffLib.models.checkpoint import load_checkpoint, load_module_weights
from MoDiffLib.models.config import ModelConfig
from MoDiffLib.pipeline import MoDiffPipeline, build_networks, resolve_device

from .config import STAGES, TrainConfig, load_config
from .data import build_frame_cache, frame_cache_key
from .loop import Budget, Model, Run, cached_case_amplitudes, ensure_latents, read_state, train_stage
from .validate import load_validation_cases

#: Which earlier stages each stage needs.
NEEDS = {"vae": (), "tddm": ("vae",), "i2v": ("vae",)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the Mo-Diff frame VAE, TDDM and I2V denoiser from a TOML config.",
        epilog="Overrides: dotted keys with TOML values, e.g. tddm.steps=200 data.spec=phantom:lung:8 "
               "model.grid.shape_kji=[16,32,32].",
    )
    p.add_argument("--config", required=True, help="TOML file, e.g. training/configs/lung-phantom.toml")
    p.add_argument("--stage", required=True, choices=(*STAGES, "all"), help="stage to train (all: vae, tddm, i2v)")
    p.add_argument("--out", required=True, help="run folder (created; holds checkpoints, state, log, caches)")
    p.add_argument("--resume", action="store_true", help="continue the stage(s) from RUN_DIR/state.pt")
    p.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help="stop after N optimiser steps of this invocation (checkpointed; continue with --resume)")
    p.add_argument("--max-minutes", type=float, default=None, metavar="M",
                   help="stop after M minutes (checkpointed; continue with --resume)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, default=None, metavar="T",
                   help="CPU threads per process (default: PyTorch's choice; 1 is much faster on a busy machine)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = p.parse_intermixed_args(argv)
    if args.max_steps is not None and args.max_steps < 0:
        p.error("--max-steps must be non-negative")
    if args.max_minutes is not None and args.max_minutes <= 0:
        p.error("--max-minutes must be positive")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    started = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        device = resolve_device(args.device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if world > 1:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
            started = True
        command = "python -m training.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        train(args, device, rank, world, command)
        return 0
    except MoDiffError as e:
        print(f"train: error: {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if started:
            dist.destroy_process_group()


def train(args: argparse.Namespace, device: torch.device, rank: int, world: int, command: str) -> None:
    """Check everything, prepare the caches, then run the planned stages in order."""
    t_start = time.time()
    say = print if rank == 0 else (lambda *a, **k: None)

    # -- checks before anything is trained --------------------------------------------------------
    config = load_config(args.config, args.overrides)
    out = Path(args.out)
    state = read_state(out / "state.pt")
    plan = plan_stages(config, args.stage, state, args.resume, out)
    for stage, action in plan:
        if action != "skip" and config.stage(stage).batch_size % world:
            raise InputError(f"{stage}.batch_size {config.stage(stage).batch_size} (the global batch) must be "
                             f"divisible by the {world} processes")
    dataset = open_data(config.data.spec, config.data.options, "data")
    validation_data = open_data(config.validation.spec, config.validation.options, "validation") \
        if config.validation.spec.strip() else None
    if all(action == "skip" for _, action in plan):
        say(f"nothing to do: {', '.join(s for s, _ in plan)} already trained in {out}")
        return

    out.mkdir(parents=True, exist_ok=True)
    model, resume_state = load_model(config, plan, state, out, device)
    sync = dist.barrier if world > 1 else (lambda: None)
    pipeline = MoDiffPipeline(model.config, model.networks, source="training")
    validation_cases = (load_validation_cases(validation_data, config.validation.num_cases, config.data.subsample,
                                              pipeline) if validation_data is not None else [])
    key = frame_cache_key(config.data.spec, config.data.options, pipeline, config.data.cache_dtype)
    frames = build_frame_cache(dataset, pipeline, out / "cache" / "frames", key, config.data.subsample,
                               config.data.cache_dtype, rank, world, sync, say)
    amplitudes, outside = cached_case_amplitudes(frames.cases, model.config)
    if outside:
        say(f"note: {outside} training case(s) have an amplitude outside the model's range; trained without one")
    budget = Budget(args.max_steps, None if args.max_minutes is None else time.monotonic() + 60.0 * args.max_minutes)
    run = Run(config, out, device, rank, world, command, frames, amplitudes, validation_cases, budget, t_start)

    # -- the stages ----------------------------------------------------------------------------------
    for stage, action in plan:
        if action == "skip":
            say(f"[{stage}] already trained in {out}; skipped")
            continue
        if stage != "vae":
            run.latents = ensure_latents(run, model)
        if not train_stage(run, model, stage, resume_state if action == "resume" else None):
            return
        resume_state = None
    say(f"training finished in {(time.time() - t_start) / 60:.1f} min; model in {out / 'model'}")


def plan_stages(config: TrainConfig, which: str, state: dict[str, Any] | None, resume: bool,
                out: Path) -> list[tuple[str, str]]:
    """Per requested stage: ``fresh``, ``resume`` or ``skip``; InputError for what cannot be done."""
    stages = STAGES if which == "all" else (which,)
    completed = list(state["completed"]) if state else []
    current = None if state is None or state["finished"] else state["stage"]
    plan = []
    for stage in stages:
        if stage in completed:
            if not resume:
                raise InputError(f"{out} already holds a trained {stage} stage; pass --resume to continue that run "
                                 f"or choose another --out")
            plan.append((stage, "skip"))
            continue
        if stage == current:
            if not resume:
                raise InputError(f"{out} holds an unfinished {stage} stage (step {state['step']}); pass --resume to "
                                 f"continue it or choose another --out")
            plan.append((stage, "resume"))
        else:
            if current is not None and current not in [s for s, _ in plan]:
                raise InputError(f"{out} holds an unfinished {current} stage (step {state['step']}); finish it first "
                                 f"with --stage {current} --resume")
            plan.append((stage, "fresh"))
        before = {s for s, _ in plan[:-1]}
        needs = NEEDS[stage] + (("tddm",) if stage == "i2v" and config.i2v.tddm_field_prob > 0 else ())
        for need in needs:
            if need not in completed and need not in before:
                raise InputError(f"the {stage} stage needs a trained {need} stage in {out}; run --stage {need} first")
    if state is not None and any(a in ("resume", "skip") for _, a in plan):
        check_same_settings(config, state, [s for s, a in plan if a == "resume"], out)
    return plan


def check_same_settings(config: TrainConfig, state: dict[str, Any], stages: list[str], out: Path) -> None:
    """A resumed stage must see the settings it started with (seed, model, data, its own table)."""
    from .config import resume_differences

    old, new = state["settings"], config.resolved()
    keys = ["seed", "model", "data", *stages]
    diffs = resume_differences({k: old.get(k) for k in keys}, {k: new.get(k) for k in keys})
    if diffs:
        raise InputError(f"--resume needs the settings {out} was started with, but {', '.join(diffs[:5])} "
                         f"differ{'s' if len(diffs) == 1 else ''}; restore them or choose another --out")


def open_data(spec: str, options: dict[str, Any], table: str):
    """``open_dataset(spec, **options)`` with option mistakes reported against the config."""
    try:
        dataset = open_dataset(spec, **options)
    except TypeError as e:
        raise InputError(f"{table}.options do not fit the data set '{spec}' ({e})") from None
    if len(dataset) == 0:
        raise InputError(f"the data set '{spec}' ({table}.spec) has no cases")
    return dataset


def load_model(config: TrainConfig, plan: list[tuple[str, str]], state: dict[str, Any] | None, out: Path,
               device: torch.device) -> tuple[Model, dict[str, Any] | None]:
    """The model the first stage to train starts from, and the state to resume it from (or None).

    A resumed stage continues from ``state.pt``; a fresh later stage starts from the run's release
    checkpoint (the earlier stages' EMA weights and measured scales); a fresh first stage from new
    weights seeded by the config's seed.
    """
    first = next((s, a) for s, a in plan if a != "skip")
    torch.manual_seed(config.seed)
    if state is not None and first[1] == "resume":
        model_config = ModelConfig.from_dict(state["model_config"])
        networks = build_networks(model_config)
        for name, module in networks.items():
            load_module_weights(module, state["networks"][name], name=name)
        model = Model(model_config, networks, list(state["completed"]), dict(state["history"]))
        resume = state
    elif state is not None and state["completed"]:
        model_config, weights = load_checkpoint(out / "model")
        networks = build_networks(model_config)
        for name, module in networks.items():
            load_module_weights(module, weights[name], name=name)
        model = Model(model_config, networks, list(state["completed"]), dict(state["history"]))
        resume = None
    else:
        model = Model(config.model, build_networks(config.model))
        resume = None
    check_same_model(config.model, model.config, out)
    for module in model.networks.values():
        module.to(device)
    return model, resume


def check_same_model(wanted: ModelConfig, held: ModelConfig, out: Path) -> None:
    from .config import resume_differences

    ignore = ("latent_scale", "field_scale", "training")
    a = {k: v for k, v in held.to_dict().items() if k not in ignore}
    b = {k: v for k, v in wanted.to_dict().items() if k not in ignore}
    diffs = resume_differences(a, b)
    if diffs:
        raise InputError(f"the [model] settings differ from the model in {out} ({', '.join(diffs[:5])}); "
                         "a run keeps one model configuration for all its stages")


if __name__ == "__main__":
    sys.exit(main())
