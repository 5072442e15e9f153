"""The release format of a trained Mo-Diff model: one folder, two files.

::

    modiff-lung-0.1.0/
        config.json        the ModelConfig (MoDiffLib.models.config), indented JSON
        model.safetensors  every module's weights, keys prefixed by module name:
                           "vae.enc_in.weight", "tddm....", "i2v...."
        checksums.json     {"sha256": {"config.json": hex, "model.safetensors": hex}}

A folder (rather than a ``.safetensors`` file with a sibling ``.json``) is one path to name,
move, zip for download and write atomically (:func:`~MoDiffLib.atomic.atomic_dir`: built under
a temporary name, renamed when complete); it can hold a README or licence beside the two files.
``safetensors`` stores raw tensors with a JSON header (no pickle, so loading runs no code); its
header metadata records the module names and this format's version.

One integrity rule for every model, however it is named: :func:`load_checkpoint` verifies the
SHA-256 of each file before reading it, against the registry's ``sha256`` map for a registered
model, else against the folder's own ``checksums.json`` (written by :func:`save_checkpoint`), else
-- a folder given by path that is a byte-identical copy of a registered model's ``config.json`` --
against that registry entry. A folder with none of these (written before checksums existed)
loads with a one-line warning on stderr.

Every problem a user can cause (missing folder or file, truncated or corrupt weights, a config
with an unknown key or another format version, weights that do not fit a network) raises
:class:`~MoDiffLib.errors.InputError` naming the file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..atomic import atomic_dir
from ..checksums import sha256_file, verify_checksums
from ..errors import InputError
from ..registry import list_models
from .config import ModelConfig

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The folder's own checksums. A separate file, not a field of config.json: a file cannot hold
#: its own hash, and this has the shape of a registry entry's ``sha256`` map, so one function
#: (:func:`verify_checksums`) checks both.
MANIFEST_NAME = "checksums.json"
#: Value of the ``format`` entry in the safetensors metadata.
FORMAT_NAME = "modiff-checkpoint"
FORMAT_VERSION = 1

StateDict = dict[str, torch.Tensor]


def _check_module_name(name: object) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise InputError(f"checkpoint module name {name!r} must be a Python identifier such as 'vae'")
    return name


def save_checkpoint(
    path: str | os.PathLike,
    config: ModelConfig,
    modules: Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path``, atomically.

    Args:
        path: the checkpoint folder to create.
        config: the model configuration.
        modules: name -> network (its ``state_dict()`` is saved) or a state dict itself
            (e.g. EMA weights); names are identifiers such as ``vae``, ``tddm``, ``i2v``.
        overwrite: replace an existing folder (only after the new one is complete).

    Returns:
        The checkpoint folder.

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is false, or cannot be written.
        InputError: a module name is not an identifier, or no module is given.
    """
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
    if not modules:
        raise InputError("a checkpoint needs at least one module's weights")
    tensors: StateDict = {}
    for name, module in modules.items():
        _check_module_name(name)
        state = module.state_dict() if isinstance(module, nn.Module) else module
        for key, value in state.items():
            if not isinstance(value, torch.Tensor):
                raise InputError(f"checkpoint entry '{name}.{key}' is not a tensor")
            # Own, contiguous CPU copies: safetensors refuses tensors that share memory.
            tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous().clone()
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "modules": json.dumps(list(modules)),
    }
    with atomic_dir(path, overwrite=overwrite) as tmp:
        (tmp / CONFIG_NAME).write_text(config.to_json(), encoding="utf-8")
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=metadata)
        sums = {name: sha256_file(tmp / name) for name in (CONFIG_NAME, WEIGHTS_NAME)}
        (tmp / MANIFEST_NAME).write_text(json.dumps({"sha256": sums}, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def load_checkpoint(
    path: str | os.PathLike, sha256: Mapping[str, str] | None = None, what: str | None = None
) -> tuple[ModelConfig, dict[str, StateDict]]:
    """Read a checkpoint folder written by :func:`save_checkpoint`, its checksums verified first.

    ``path`` may also name the ``config.json`` or ``model.safetensors`` inside the folder.

    Args:
        path: the checkpoint folder.
        sha256: file name -> expected hex SHA-256 (a registry entry's map); ``None``: the folder's
            ``checksums.json``, else the registry entry whose ``config.json`` this folder's is a
            copy of, else none (a one-line warning on stderr).
        what: how messages name the model (default: the folder).

    Returns:
        ``(config, states)``: the validated :class:`ModelConfig` and, per module name, its state
        dict with the module prefix removed (CPU tensors, dtypes as saved).

    Raises:
        InputError: missing folder or file, malformed or invalid ``config.json``, or a truncated,
            corrupt or foreign ``model.safetensors``.
    """
    folder = Path(path)
    if folder.is_file() and folder.name in (CONFIG_NAME, WEIGHTS_NAME):
        folder = folder.parent
    if not folder.exists():
        raise InputError(f"model checkpoint '{folder}' does not exist")
    if not folder.is_dir():
        raise InputError(
            f"model checkpoint '{folder}' is a file; a checkpoint is a folder holding "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}"
        )
    _verify_folder(folder, sha256, what or f"model checkpoint '{folder}'")
    config = _read_config(folder / CONFIG_NAME)
    states = _read_weights(folder / WEIGHTS_NAME)
    return config, states


def _read_manifest(file: Path) -> dict[str, str]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"model checksums '{file}' cannot be read ({e})") from None
    sums = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(sums, dict) or not sums or not all(isinstance(v, str) for v in sums.values()):
        raise InputError(f"model checksums '{file}' must be an object {{\"sha256\": {{file: hex}}}}")
    # The weights and the config must both be covered, or a manifest could vouch for nothing.
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in sums]
    if missing:
        raise InputError(f"model checksums '{file}' lack {', '.join(missing)}")
    return sums


def _verify_folder(folder: Path, sha256: Mapping[str, str] | None, what: str) -> None:
    """Apply the one integrity rule (see the module docstring) to ``folder``."""
    if sha256:
        verify_checksums(folder, sha256, what)
        return
    manifest = folder / MANIFEST_NAME
    if manifest.exists():
        verify_checksums(folder, _read_manifest(manifest), what, f"its {MANIFEST_NAME}")
        return
    config = folder / CONFIG_NAME
    if not config.is_file():
        return  # _read_config reports it
    digest = sha256_file(config)
    for entry in list_models():
        # A copy of a registered model (e.g. a bundled folder given by path) has its config byte
        # for byte; its weights must then be the registered ones too.
        if entry.sha256.get(CONFIG_NAME, "").lower() == digest:
            verify_checksums(folder, entry.sha256, what, f"the registered model '{entry.name}' it copies")
            return
    print(f"modiff: warning: {what} has no {MANIFEST_NAME} (saved by an older MoDiff); its files are not "
          "verified -- re-save it to add checksums", file=sys.stderr)


def _read_config(file: Path) -> ModelConfig:
    if not file.is_file():
        raise InputError(f"model checkpoint '{file.parent}' has no {CONFIG_NAME}")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read model config '{file}' ({e})") from None
    try:
        return ModelConfig.from_json(text)
    except InputError as e:
        raise InputError(f"model config '{file}' is unusable: {e}") from None


def _read_weights(file: Path) -> dict[str, StateDict]:
    if not file.is_file():
        raise InputError(f"model checkpoint '{file.parent}' has no {WEIGHTS_NAME}")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors reports damage with several exception types
        raise InputError(f"model weights '{file}' are truncated or corrupt ({e})") from None
    if metadata.get("format") != FORMAT_NAME:
        raise InputError(f"model weights '{file}' are not a MoDiff checkpoint (no '{FORMAT_NAME}' metadata)")
    if metadata.get("format_version") != str(FORMAT_VERSION):
        raise InputError(
            f"model weights '{file}' have checkpoint format version {metadata.get('format_version')!r}, "
            f"but this MoDiff reads version {FORMAT_VERSION} only"
        )
    try:
        names = json.loads(metadata.get("modules", ""))
        names = [_check_module_name(n) for n in names]
    except (ValueError, TypeError, InputError):
        raise InputError(f"model weights '{file}' have an unreadable module list in their metadata") from None
    states: dict[str, StateDict] = {name: {} for name in names}
    for key, tensor in tensors.items():
        name, _, rest = key.partition(".")
        if name not in states or not rest:
            raise InputError(f"model weights '{file}' hold tensor '{key}' of no listed module")
        states[name][rest] = tensor
    return states


def load_module_weights(
    module: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True, name: str = "module"
) -> nn.Module:
    """Copy ``state`` into ``module``, with a clear error when the weights do not fit.

    Args:
        module: the network built from the checkpoint's config.
        state: its state dict from :func:`load_checkpoint` (prefix removed).
        strict: also require that no key is missing or unexpected (shapes are always checked).
        name: the module's name in messages, e.g. ``"vae"``.

    Returns:
        ``module``, for chaining.

    Raises:
        InputError: missing or unexpected keys (with ``strict``) or a shape mismatch.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. '{unexpected[0]}')")
        raise InputError(
            f"checkpoint weights for '{name}' do not fit the network: {' and '.join(parts)} entries"
        )
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise InputError(
                f"checkpoint weights for '{name}' do not fit the network: '{key}' has shape "
                f"{tuple(value.shape)} in the checkpoint but {tuple(own[key].shape)} in the network"
            )
    module.load_state_dict(dict(state), strict=strict)
    return module
