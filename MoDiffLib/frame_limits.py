"""How many frames a model makes: the one place the pipelines, the command line and the Slicer panel read.

A cine has at least :data:`MIN_FRAMES` frames (frame 0, the input, and one generated frame) and at
most the model's ``max_frames``, the padded temporal length it was trained with. That maximum is a
fact of the checkpoint (``config.json``, :class:`~MoDiffLib.models.config.ModelConfig`);
:func:`frame_range` reads it from there without loading any weights (no torch), so the panel can
bound its slider by it, and :func:`check_frame_count` is the check every generator applies.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError
from .models.config import ModelConfig

#: Fewest frames of a cine: the input (frame 0) and one generated frame.
MIN_FRAMES = 2
#: File name of a checkpoint's configuration (:data:`MoDiffLib.models.checkpoint.CONFIG_NAME`,
#: repeated because that module loads torch, which the Slicer panel must not).
CONFIG_FILE = "config.json"


def check_frame_count(num_frames: int, max_frames: int, model: str) -> int:
    """``num_frames`` if it lies in ``MIN_FRAMES..max_frames`` for ``model`` (its name, for the message).

    Raises:
        InputError: a frame count outside the range, naming the range and the model.
    """
    if not MIN_FRAMES <= num_frames <= max_frames:
        raise InputError(f"the frame count must be between {MIN_FRAMES} and {max_frames} for model '{model}', "
                         f"got {num_frames}")
    return num_frames


def _is_path(model: str | os.PathLike) -> bool:
    return Path(model).exists() or os.sep in str(model)


def _config_max_frames(folder: Path) -> int:
    file = folder / CONFIG_FILE
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"model checkpoint '{folder}' has no {CONFIG_FILE}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read model config '{file}' ({e})") from None
    try:
        return ModelConfig.from_json(text).max_frames
    except InputError as e:
        raise InputError(f"model config '{file}' is unusable: {e}") from None


def max_frames(model: str | os.PathLike | None = None, kind: str | None = None) -> int:
    """The most frames ``model`` makes, frame 0 included: ``max_frames`` of its checkpoint config.

    Args:
        model: a registered model name, a checkpoint folder, or ``None`` for the default model
            (of ``kind`` if given), as :func:`MoDiffLib.registry.resolve_model` takes them.
        kind: ``lung`` or ``cardiac``, for ``model=None``.

    A registered model that is not installed yet (one to download) has no config to read: its
    registry entry's copy of the value is returned.

    Raises:
        InputError: an unknown model, a folder that does not exist, an unusable config.
    """
    from .registry import default_model, find_model, resolve_model

    try:
        folder, _entry = resolve_model(model, kind=kind, verify=False)
    except InputError:
        if model is not None and _is_path(model):
            raise
        entry = find_model(str(model)) if model is not None else default_model(kind)
        return entry.max_frames
    return _config_max_frames(folder)


def frame_range(model: str | os.PathLike | None = None, kind: str | None = None) -> tuple[int, int]:
    """``(MIN_FRAMES, max_frames(model, kind))``: the frame counts ``model`` accepts, e.g. for a slider."""
    return MIN_FRAMES, max_frames(model, kind)
