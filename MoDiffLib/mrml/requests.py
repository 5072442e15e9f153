"""What the Slicer panel asks for, checked before anything runs: a cine of a volume, a plan on a cine.

:func:`generate_request` and :func:`plan_request` take the nodes and values the panel (or a
script) gives and return a :class:`GenerateRequest` / :class:`PlanRequest`, or raise
:class:`~MoDiffLib.errors.InputError` with one sentence saying what to change. Nothing is
written and the scene is not touched; :mod:`MoDiffLib.mrml.jobs` runs a checked request.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..frame_limits import check_frame_count, max_frames
from ..volume import Volume

#: Compute devices of ``modiff generate --device``: ``auto`` is the GPU when PyTorch sees one.
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class GenerateRequest:
    """A checked request for a cine of ``volume_node`` (see :func:`generate_request`)."""

    scene: Any
    volume_node: Any
    frames: int
    #: registered model name or checkpoint folder
    model: str
    steps: int | None
    seed: int | None
    device: str
    amplitude: float | None
    output_sequence: Any = None
    #: frame-0 labels to carry through the frames (a :class:`~MoDiffLib.labelmap.LabelMap` on the input's grid)
    labels: Any = None
    #: a breathing trace to follow, as the text of a ``trace.csv`` (:mod:`MoDiffLib.trace`), checked
    trace_csv: str | None = None
    #: two-frame mode: the cine's last frame (N-1), a :class:`~MoDiffLib.volume.Volume` on the input's grid
    end: Volume | None = None
    #: partial mode: frames 1..N-1 the user has, by index, on the input's grid (kept exactly)
    known: dict[int, Volume] | None = None

    def provenance(self) -> dict[str, Any]:
        """The requested settings, for the cine's ``MoDiff.*`` attributes (what actually ran overrides them)."""
        values = {"model": self.model, "frames": self.frames, "steps": self.steps, "seed": self.seed,
                  "device": self.device, "amplitude": self.amplitude}
        return {k: v for k, v in values.items() if v is not None}


@dataclass(frozen=True)
class PlanRequest:
    """A checked request for a puncture plan on a cine (see :func:`plan_request`)."""

    scene: Any
    cine_node: Any
    browser: Any
    #: entry and target, RAS mm in the cine's own coordinates (frame 0)
    entry_ras: np.ndarray
    target_ras: np.ndarray
    margin_mm: float
    tolerance_mm: float
    risk: Volume | None = None
    risk_names: dict[int, str] = field(default_factory=dict)


def _whole_number(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _registry_entry(model: str | os.PathLike | None):
    """The registry entry of a model name (``None``: the default, first one); ``None`` for a folder."""
    from ..registry import default_model, find_model

    if model is None:
        return default_model()
    if os.path.exists(str(model)) or os.sep in str(model):
        return None
    return find_model(str(model))


def check_model_installed(model: str | os.PathLike | None) -> str:
    """The model's name (or folder) once its files are found; a missing model says where to put it.

    Raises:
        InputError: an unknown name, a folder that does not exist, or a registered model whose
            folder is nowhere MoDiff looks (the message names the folder to copy it to).
    """
    from ..registry import resolve_model, user_cache_dir

    entry = _registry_entry(model)
    if entry is None:
        resolve_model(model, verify=False)  # a folder: it must exist
        return os.fspath(model)
    cache = user_cache_dir() / entry.name  # a cache variable naming a file is its own error
    try:
        resolve_model(entry.name, verify=False)
    except InputError:
        where = f"'{cache}'"
        if os.environ.get("MODIFF_MODELS_DIR"):
            where += f" or '{os.path.join(os.environ['MODIFF_MODELS_DIR'], entry.name)}'"
        how = f", or download it with `modiff models --download {entry.name}`" if entry.url else ""
        raise InputError(f"model '{entry.name}' is not installed: copy its folder (config.json, model.safetensors) "
                         f"to {where}{how}") from None
    return entry.name


def generate_request(volume_node, frames: int = 10, model: str | os.PathLike | None = None, steps: int | None = None,
                     seed: int | None = None, device: str = "auto", amplitude: float | None = None,
                     output_sequence=None, labels_node=None, trace_node=None, end_node=None,
                     known_sequence_node=None) -> GenerateRequest:
    """Check a request for a cine of ``volume_node`` (frame 0) before anything runs.

    Args:
        volume_node: the 3D scalar volume node to animate (in a scene).
        frames: frames of the cine, frame 0 included (:func:`MoDiffLib.frame_limits.frame_range`).
        model: registered model name or checkpoint folder; ``None``: the default (first) model.
        steps: sampling steps (``None``: the model's default); seed: 0..2**32-1 or ``None``.
        device: one of :data:`DEVICES`; amplitude: motion strength in the model's unit or ``None``.
        output_sequence: sequence node to fill, or ``None`` to create (and on re-runs reuse) one.
        labels_node: a label map volume or segmentation of the input to carry through every frame
            (motion models only), or ``None``.
        trace_node: a table node holding a breathing trace (motion models; see
            :func:`trace_table_text`), or ``None``.
        end_node: two-frame mode (motion models, not with a trace): a scalar volume node on the
            input's grid that becomes the cine's last frame, the motion running from the input to
            it; or ``None``.
        known_sequence_node: partial mode (motion models): a sequence node of scalar volumes on the
            input's grid whose index values are frame numbers, e.g. items at 3 and 6 of a 10-frame
            cine (gaps are the frames to generate); the motion passes through them and they are
            kept exactly. An item at index 0 is the input's own frame and is ignored. Not with
            ``end_node``. ``None``: no known frames (see :func:`known_frames_of`).

    Raises:
        InputError: with one sentence saying what to change.
    """
    from .volumes import check_volume_node

    check_volume_node(volume_node)
    scene = volume_node.GetScene()
    if scene is None:
        raise InputError(f"input volume '{volume_node.GetName()}' is not in a scene")
    entry = _registry_entry(model)
    name = check_model_installed(model)
    if not _whole_number(frames):
        raise InputError(f"the number of frames must be a whole number, got {frames!r}")
    check_frame_count(int(frames), max_frames(name), entry.name if entry else name)
    if steps is not None and (not _whole_number(steps) or steps < 1):
        raise InputError(f"the number of sampling steps must be a positive whole number, got {steps!r}")
    if seed is not None and (not _whole_number(seed) or not 0 <= seed < 2**32):
        raise InputError(f"the seed must be a whole number from 0 to 2^32-1, got {seed!r}")
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if amplitude is not None:
        try:
            amplitude = float(amplitude)
        except (TypeError, ValueError):
            raise InputError(f"the amplitude must be a number, got {amplitude!r}") from None
        if not math.isfinite(amplitude) or amplitude < 0:
            raise InputError(f"the amplitude must be a finite number of at least 0, got {amplitude}")
        limits = (entry.amplitude if entry else None) or {}
        if "min" in limits and "max" in limits and not float(limits["min"]) <= amplitude <= float(limits["max"]):
            raise InputError(f"the amplitude must lie between {limits['min']} and {limits['max']} "
                             f"{limits.get('unit', '')} for this model (0 = automatic), got {amplitude:g}")
    if output_sequence is not None and not output_sequence.IsA("vtkMRMLSequenceNode"):
        raise InputError(f"the output must be a sequence node, got a {output_sequence.GetClassName()}")
    labels, trace_csv, end, known = None, None, None, None
    if end_node is not None or known_sequence_node is not None:
        from ..motion.known_frames import check_modes

        check_modes(end_node is not None, known_sequence_node is not None, trace_node is not None)
    motion_options = {"carrying labels through the frames": labels_node, "following a breathing trace": trace_node,
                      "an end frame (two-frame mode)": end_node, "known frames (partial mode)": known_sequence_node}
    if any(node is not None for node in motion_options.values()):
        family = entry.family if entry is not None else _folder_family(name)
        if family != "motion":
            what = next(what for what, node in motion_options.items() if node is not None)
            raise InputError(f"{what} needs a motion model; '{name}' is the paper's latent variant")
    if labels_node is not None:
        from .labels import labels_from_node

        labels = labels_from_node(labels_node, volume_node)
    if trace_node is not None:
        from ..trace import parse_trace_text

        trace_csv = trace_table_text(trace_node)
        parse_trace_text(trace_csv, int(frames), cyclic=True, source=f"table '{trace_node.GetName()}'")  # checked now
    if end_node is not None or known_sequence_node is not None:
        from ..motion.known_frames import check_known_frames
        from .volumes import check_volume_node, volume_from_node

        frame0 = volume_from_node(volume_node)
        input_name = f"input volume '{volume_node.GetName()}'"
        if end_node is not None:
            check_volume_node(end_node, "end frame")
            end = volume_from_node(end_node)
            try:
                check_known_frames({int(frames) - 1: end}, int(frames), frame0.geometry, input_name)
            except InputError as e:
                raise InputError(f"the end frame is frame {int(frames) - 1} of the cine: {e}") from None
        else:
            known = check_known_frames(known_frames_of(known_sequence_node, int(frames)), int(frames),
                                       frame0.geometry, input_name)
    return GenerateRequest(scene, volume_node, int(frames), name, None if steps is None else int(steps),
                           None if seed is None else int(seed), device, amplitude, output_sequence, labels, trace_csv,
                           end, known)


def known_frames_of(sequence_node, frames: int) -> dict[int, Volume]:
    """The frames of a sequence node of scalar volumes as frame index -> :class:`Volume`.

    The index values are frame numbers (whole numbers, e.g. ``3`` or ``3.0``) from 1 to
    ``frames - 1``, each once; an item at 0 is the input's own frame and is left out. The grid
    is not checked here (:func:`~MoDiffLib.motion.known_frames.check_known_frames` does).

    Raises:
        InputError: not a sequence node, no items besides frame 0, an index value that is not a
            whole number or is outside 1..frames-1 (both named), a frame given twice, or an item
            that is not a scalar volume.
    """
    from .volumes import check_volume_node, volume_from_node

    if sequence_node is None or not hasattr(sequence_node, "IsA") or not sequence_node.IsA("vtkMRMLSequenceNode"):
        raise InputError("the known frames must be a sequence node of volumes")
    label = f"sequence '{sequence_node.GetName()}'"
    known: dict[int, Volume] = {}
    for item in range(sequence_node.GetNumberOfDataNodes()):
        value = sequence_node.GetNthIndexValue(item)
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number != round(number):
            raise InputError(f"{label}: index value '{value}' is not a frame number (a whole number from 1 to "
                             f"{frames - 1})")
        t = int(round(number))
        if t == 0:
            continue  # frame 0 is the input itself
        if not 1 <= t < frames:
            raise InputError(f"{label}: frame {t} is outside the cine's frames 1 to {frames - 1} ({frames} frames)")
        if t in known:
            raise InputError(f"{label} gives frame {t} twice")
        node = sequence_node.GetNthDataNode(item)
        check_volume_node(node, f"known frame {t} of {label}")
        known[t] = volume_from_node(node)
    if not known:
        raise InputError(f"{label} holds no frame besides frame 0; give frames 1 to {frames - 1} the cine passes through")
    return known


def trace_table_text(table_node) -> str:
    """A table node's breathing trace as ``trace.csv`` text: its columns, header first.

    The layouts of :mod:`MoDiffLib.trace`: one column (one value per frame), or ``time_s`` and
    value columns (resampled over one cycle), optionally after a ``frame`` column.

    Raises:
        InputError: not a table node, or a table without rows.
    """
    if table_node is None or not hasattr(table_node, "IsA") or not table_node.IsA("vtkMRMLTableNode"):
        raise InputError("the breathing trace must be a table node")
    table = table_node.GetTable()
    columns = [table.GetColumn(c) for c in range(table.GetNumberOfColumns())]
    rows = table.GetNumberOfRows()
    if not columns or rows == 0:
        raise InputError(f"table '{table_node.GetName()}' holds no breathing trace (no rows)")
    names = [table_node.GetColumnName(c) or f"column {c + 1}" for c in range(len(columns))]
    lines = [",".join(name.replace(",", " ") for name in names)]
    for r in range(rows):
        lines.append(",".join(str(column.GetValue(r)).strip() for column in columns))
    return "\n".join(lines) + "\n"


def _folder_family(folder: str) -> str:
    """The family (``motion`` / ``latent``) of a model folder, from its config."""
    from ..models.config import ModelConfig

    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return ModelConfig.from_json(f.read()).family
    except OSError as e:
        raise InputError(f"cannot read the model's configuration '{path}': {e.strerror or e}") from None


def browser_of(cine_node):
    """The sequence browser that plays ``cine_node`` (InputError if it is not a cine in a scene)."""
    from .cine import find_browser

    if cine_node is None or not hasattr(cine_node, "IsA") or not cine_node.IsA("vtkMRMLSequenceNode"):
        raise InputError("select the cine (a sequence node) to plan on")
    scene = cine_node.GetScene()
    browser = find_browser(scene, cine_node) if scene is not None else None
    if browser is None:
        raise InputError(f"the cine '{cine_node.GetName()}' is not played by a sequence browser")
    return browser


def plan_request(cine_node, entry_node, target_node, risk_node=None, margin_mm: float = 5.0,
                 tolerance_mm: float = 3.0) -> PlanRequest:
    """Check a request for a puncture plan on a cine before anything runs.

    The entry and the target are the first control points of their point lists, placed on frame 0
    in world coordinates (brought back into the cine's own coordinates). A risk label map must be
    on the cine's grid; its colour table names its structures.

    Raises:
        InputError: one sentence saying what to change.
    """
    from ..planning import check_entry_and_target, check_length_mm, risk_structures
    from .planning import cine_geometry, label_names_of, labelmap_from_node, markup_position, world_to_cine

    browser = browser_of(cine_node)
    if cine_node.GetNumberOfDataNodes() < 2:
        raise InputError("the cine has fewer than two frames; there is no motion to plan over")
    geometry = cine_geometry(browser)
    entry = world_to_cine(browser, markup_position(entry_node, 0, "entry point"))
    target = world_to_cine(browser, markup_position(target_node, 0, "target point"))
    entry, target = check_entry_and_target(entry, target, geometry)
    check_length_mm(margin_mm, "safety margin")
    check_length_mm(tolerance_mm, "target tolerance")
    risk, names = None, {}
    if risk_node is not None:
        risk = labelmap_from_node(risk_node)
        names = label_names_of(risk_node)
        risk_structures(risk, geometry, cine_node.GetNumberOfDataNodes(), names, None, entry, target)
    return PlanRequest(cine_node.GetScene(), cine_node, browser, np.asarray(entry, float), np.asarray(target, float),
                       float(margin_mm), float(tolerance_mm), risk, names)
