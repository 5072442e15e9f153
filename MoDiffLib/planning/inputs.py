"""Inputs of puncture planning, checked: RAS points, the risk label map and its structure names.

Every problem raises :class:`~MoDiffLib.errors.InputError` with one sentence naming it, before
any work is done.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Geometry, Volume, VolumeSequence

#: Shortest path (mm) between entry and target that is still a path.
MIN_PATH_MM = 1.0
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf|infinity)"


def parse_point(text: str, what: str = "point") -> np.ndarray:
    """``"R,A,S"`` (mm; commas and/or spaces, optional brackets) -> a finite (3,) RAS array.

    Raises:
        InputError: not three numbers, or a NaN / infinite coordinate.
    """
    if not isinstance(text, str):
        return check_point(text, what)
    stripped = text.strip().strip("[]()").strip()
    parts = [p for p in re.split(r"[,\s]+", stripped) if p]
    if len(parts) != 3 or not all(re.fullmatch(_NUMBER, p, re.IGNORECASE) for p in parts):
        raise InputError(f"{what} must be three numbers R,A,S in mm (e.g. 12.5,-40,-160), got {text!r}")
    return check_point([float(p) for p in parts], what)


def check_point(point, what: str = "point") -> np.ndarray:
    """A point given as numbers -> a finite (3,) float array (InputError otherwise)."""
    try:
        p = np.asarray(point, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be three numbers R,A,S in mm, got {point!r}") from None
    if p.shape != (3,):
        raise InputError(f"{what} must have three coordinates R,A,S, got {p.size}")
    if not np.all(np.isfinite(p)):
        raise InputError(f"{what} has a NaN or infinite coordinate: {point!r}")
    return p


def check_entry_and_target(entry_ras, target_ras, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Entry and target as finite points inside the volume, at least :data:`MIN_PATH_MM` apart."""
    entry = check_point(entry_ras, "the entry point")
    target = check_point(target_ras, "the target point")
    for name, p in (("entry", entry), ("target", target)):
        if not bool(geometry.contains_ras(p)):
            raise InputError(
                f"the {name} point ({', '.join(f'{c:g}' for c in p)}) RAS lies outside the volume "
                f"({geometry.describe()}); place it on frame 0 of the cine"
            )
    distance = float(np.linalg.norm(target - entry))
    if distance < MIN_PATH_MM:
        raise InputError(
            f"the entry and the target are {distance:.2g} mm apart; they must be different points "
            f"(at least {MIN_PATH_MM:g} mm)"
        )
    return entry, target


# -- structure names ---------------------------------------------------------------------------------
def _label_value(text) -> int:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"label value {text!r} is not a whole number") from None
    if not math.isfinite(value) or value != int(value) or value <= 0:
        raise InputError(f"label value {text!r} must be a whole number above 0")
    return int(value)


def _names_from_mapping(mapping: Mapping, source: str) -> dict[int, str]:
    if "label_names" in mapping and isinstance(mapping["label_names"], Mapping):
        mapping = mapping["label_names"]  # a phantom's params.json
    names = {}
    for key, value in mapping.items():
        # {"5": "vessels"} or {"vessels": 5}
        if isinstance(value, str) and not re.fullmatch(r"\d+", value.strip()):
            names[_label_value(key)] = value.strip()
        else:
            names[_label_value(value)] = str(key).strip()
    if not names:
        raise InputError(f"no label names found in {source}")
    if any(not n for n in names.values()):
        raise InputError(f"{source} has an empty structure name")
    return names


def parse_label_names(text: str) -> dict[int, str]:
    """Structure names from a JSON file, a JSON string or a ``name=value`` list.

    Accepted: a path to a ``.json`` file holding ``{"5": "vessels", ...}``, ``{"vessels": 5}`` or
    a phantom's ``params.json`` (its ``label_names``); the same JSON inline; or
    ``vessels=5,ribs=11`` (``5=vessels`` also works).

    Raises:
        InputError: unreadable file, malformed text, or label values that are not whole numbers > 0.
    """
    if isinstance(text, Mapping):
        return _names_from_mapping(text, "the label names")
    text = str(text).strip()
    if not text:
        raise InputError("the structure names are empty")
    source = "the structure names"
    if not text.startswith("{") and (text.lower().endswith(".json") or Path(text).is_file()):
        path = Path(text)
        if not path.is_file():
            raise InputError(f"structure names file '{text}' does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read structure names file '{path}': {exc.strerror or exc}") from None
        source = f"'{path}'"
        if not text.strip().startswith("{"):
            raise InputError(f"{source} must hold a JSON object of label value -> structure name")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{source} is not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(data, Mapping):
            raise InputError(f"{source} must be a JSON object of label value -> structure name")
        return _names_from_mapping(data, source)
    names = {}
    for item in (p.strip() for p in text.split(",")):
        if "=" not in item:
            raise InputError(f"structure names must look like name=value (e.g. vessels=5,ribs=11), got {item!r}")
        left, right = (s.strip() for s in item.split("=", 1))
        if re.fullmatch(r"\d+", left) and not re.fullmatch(r"\d+", right):
            left, right = right, left
        if not left:
            raise InputError(f"structure name missing in {item!r}")
        names[_label_value(right)] = left
    return names


def names_beside(path: str | Path) -> dict[int, str] | None:
    """Label names from a ``params.json`` (a phantom case) or ``label_names.json`` next to a label file."""
    folder = Path(path).resolve().parent
    for candidate in ("params.json", "label_names.json"):
        p = folder / candidate
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, Mapping) and ("label_names" in data or candidate == "label_names.json"):
                try:
                    return _names_from_mapping(data, f"'{p}'")
                except InputError:
                    continue
    return None


# -- risk structures --------------------------------------------------------------------------------------
@dataclass
class RiskStructures:
    """Structures the needle must keep away from, as a label map on the cine's grid.

    Attributes:
        labels: (K, J, I) label map of frame 0 (carried into the frames by the motion), or
            (T, K, J, I) one label map per frame (used as given).
        geometry: the cine's grid.
        names: label value -> structure name, for every label considered a risk.
        ignored: structure name -> why it is not a risk (e.g. it contains the target).
    """

    labels: np.ndarray
    geometry: Geometry
    names: dict[int, str]
    ignored: dict[str, str] = field(default_factory=dict)
    _surfaces: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def per_frame(self) -> bool:
        return self.labels.ndim == 4

    def surface_centres(self, value: int, t: int = 0) -> np.ndarray:
        """RAS centres (N, 3) of the voxels of structure ``value`` on its surface (a 6-neighbour outside it).

        The voxel of a structure nearest to any point outside it is always a surface voxel (a
        neighbour towards the point would be nearer), so distances need only these. Computed once.
        """
        key = (int(value), int(t) if self.per_frame else 0)
        if key not in self._surfaces:
            from scipy import ndimage

            labels = self.labels[key[1]] if self.per_frame else self.labels
            mask = labels == value
            surface = mask & ~ndimage.binary_erosion(mask, border_value=0)
            kji = np.argwhere(surface)
            self._surfaces[key] = self.geometry.ijk_to_ras_points(kji[:, ::-1].astype(float))
        return self._surfaces[key]

    def frame0(self) -> np.ndarray:
        return self.labels[0] if self.per_frame else self.labels

    def label_at(self, points_ras, t: int = 0) -> np.ndarray:
        """Label (nearest voxel) at RAS points in frame ``t``'s map (frame 0's for a single map); 0 outside."""
        labels = self.labels[t] if self.per_frame else self.labels
        ijk = np.rint(self.geometry.ras_to_ijk_points(np.atleast_2d(points_ras))).astype(int)
        size = np.array(self.geometry.shape_kji[::-1])
        inside = np.all((ijk >= 0) & (ijk < size), axis=1)
        out = np.zeros(len(ijk), dtype=np.int64)
        i, j, k = ijk[inside].T
        out[inside] = labels[k, j, i]
        return out


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}_{n}" in taken:
        n += 1
    return f"{name}_{n}"


def risk_structures(
    labels: Volume | VolumeSequence,
    geometry: Geometry,
    num_frames: int,
    names: Mapping[int, str] | None = None,
    structures: Iterable[str | int] | None = None,
    entry_ras=None,
    target_ras=None,
) -> RiskStructures:
    """Check a risk label map against the cine and decide which of its labels are risks.

    Args:
        labels: a label map of frame 0 (:class:`Volume`) or one per frame (:class:`VolumeSequence`).
        geometry, num_frames: the cine's grid and frame count (the label map must match them).
        names: label value -> name; labels without a name are called ``label_<value>``.
        structures: the risks to keep, by name or value; ``None`` keeps every label in the map
            except those that contain the entry or the target on frame 0 (the needle must pass
            through the body and the organ it aims into: those are not obstacles).
        entry_ras, target_ras: used for that automatic choice.

    Raises:
        InputError: a map on another grid, with another frame count, with fractional values, or a
            structure asked for that is not in the map.
    """
    if isinstance(labels, VolumeSequence):
        if labels.frames.ndim != 4:
            raise InputError(f"the risk label map '{labels.name}' holds vectors; it must hold labels")
        if labels.num_frames == 1:
            array = labels.frames[0]
        elif labels.num_frames != num_frames:
            raise InputError(
                f"the risk label sequence '{labels.name}' has {labels.num_frames} frames but the cine has "
                f"{num_frames}; give one label map per frame, or the label map of frame 0"
            )
        else:
            array = labels.frames
        label_geometry, label_name = labels.geometry, labels.name
    elif isinstance(labels, Volume):
        if labels.is_vector:
            raise InputError(f"the risk label map '{labels.name}' holds vectors; it must hold labels")
        array, label_geometry, label_name = labels.array, labels.geometry, labels.name
    else:
        raise InputError(f"the risk label map must be a Volume or VolumeSequence, got {type(labels).__name__}")
    if not label_geometry.is_close(geometry, atol_mm=1e-3):
        raise InputError(
            f"the risk label map '{label_name}' ({label_geometry.describe()}, origin "
            f"{tuple(round(c, 2) for c in label_geometry.origin_ras)}) is not on the grid of the cine "
            f"({geometry.describe()}, origin {tuple(round(c, 2) for c in geometry.origin_ras)}); "
            "resample it onto the cine first"
        )
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(array == np.round(array)):
            raise InputError(f"the risk label map '{label_name}' holds fractional values; labels must be whole numbers")
    if np.any(array < 0):
        raise InputError(f"the risk label map '{label_name}' holds negative labels")
    array = array.astype(np.int32 if array.max() > 255 else np.uint8)

    present = [int(v) for v in np.unique(array) if v != 0]
    names = dict(names or {})
    all_names: dict[int, str] = {}
    taken: set[str] = set()
    for v in present:
        name = _unique_name(str(names.get(v, f"label_{v}")), taken)
        taken.add(name)
        all_names[v] = name
    risk = RiskStructures(array, geometry, {})
    if structures is not None:
        wanted = [str(s).strip() for s in structures if str(s).strip()]
        by_name = {n: v for v, n in all_names.items()}
        for item in wanted:
            if item in by_name:
                risk.names[by_name[item]] = item
            elif re.fullmatch(r"\d+", item) and int(item) in all_names:
                risk.names[int(item)] = all_names[int(item)]
            else:
                available = ", ".join(all_names.values()) or "none"
                raise InputError(f"structure {item!r} is not in the risk label map (it has: {available})")
        for v, n in all_names.items():
            if v not in risk.names:
                risk.ignored[n] = "not selected"
        return risk
    touched = {}
    for point, role in ((entry_ras, "entry"), (target_ras, "target")):
        if point is not None:
            v = int(risk.label_at(np.asarray(point, float))[0])
            if v:
                touched.setdefault(v, []).append(role)
    for v, n in all_names.items():
        if v in touched:
            risk.ignored[n] = "contains the " + " and the ".join(touched[v])
        else:
            risk.names[v] = n
    return risk
