"""What every data set yields, and the sequence protocol they share.

A data set is a plain Python sequence of :class:`Case4D` records (``len(ds)``, ``ds[i]``), so
``torch.utils.data.DataLoader`` and ``DistributedSampler`` work on it directly (give the loader a
``collate_fn``: the records hold volumes, not tensors). Construction scans the files and checks
every header it can read cheaply (names, counts, sizes, geometry), so a broken data set fails
before any training starts; voxel data is read when an item is requested.

Cases come in input units (CT in HU, MR as stored) on their own grids: the preprocessing recipe
of a model (crop, resample, intensity window) belongs to the model config, not to the loaders.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..volume import Volume, VolumeSequence


@dataclass
class Case4D:
    """One 4D case (a cine over part or all of a breathing or cardiac cycle).

    Attributes:
        case_id: unique name within its data set (e.g. ``"patient001"``, ``"case3"``).
        frames: the T frames on one shared geometry, in input units (HU for CT).
        labels: label maps where the source has them: ``{frame_index: Volume}`` for some frames
            (ACDC: ED and ES), a :class:`VolumeSequence` with one map per frame (phantoms), or
            ``None``. Frame indices count within ``frames``.
        landmarks: ``name -> (T, 3)`` RAS positions in mm; a row is NaN where that frame has no
            position for the landmark. ``None`` where the source has none.
        amplitude: motion strength where known (phantoms: diaphragm SI excursion in mm for lung,
            ejection fraction in % for cardiac), else ``None``.
        meta: source-specific facts (``source``, patient, phases, group, files, ...).
        trace_mm: the breathing trace where known, ``(T,)`` S coordinate (RAS mm) of the diaphragm
            dome per frame (descent since frame 0 is ``trace_mm[0] - trace_mm``; see
            :mod:`MoDiffLib.trace`), else ``None``.
    """

    case_id: str
    frames: VolumeSequence
    labels: dict[int, Volume] | VolumeSequence | None = None
    landmarks: dict[str, np.ndarray] | None = None
    amplitude: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    trace_mm: np.ndarray | None = None

    def __post_init__(self) -> None:
        t = self.frames.num_frames
        if self.trace_mm is not None:
            self.trace_mm = np.asarray(self.trace_mm, dtype=float)
            if self.trace_mm.shape != (t,) or not np.all(np.isfinite(self.trace_mm)):
                raise InputError(f"{self.case_id}: the breathing trace must be {t} finite values (one per frame), "
                                 f"got shape {self.trace_mm.shape}")
        if isinstance(self.labels, dict):
            for index, label in self.labels.items():
                if not 0 <= index < t:
                    raise InputError(f"{self.case_id}: labels given for frame {index} of a {t}-frame case")
                if not label.geometry.is_close(self.frames.geometry, atol_mm=1e-3):
                    raise InputError(f"{self.case_id}: the labels of frame {index} are not on the frames' grid")
        elif isinstance(self.labels, VolumeSequence) and self.labels.num_frames != t:
            raise InputError(f"{self.case_id}: {self.labels.num_frames} label maps for {t} frames")
        for name, track in (self.landmarks or {}).items():
            if np.shape(track) != (t, 3):
                raise InputError(f"{self.case_id}: landmark {name} has shape {np.shape(track)}, expected ({t}, 3)")

    @property
    def num_frames(self) -> int:
        return self.frames.num_frames


class CaseDataset(Sequence):
    """Base of the loaders: a sequence of cases, scanned at construction, loaded per item.

    Subclasses fill ``self._entries`` (one cheap, picklable description per case, validated) in
    ``__init__`` and implement :meth:`_load`. ``skipped`` lists ``(path, reason)`` for things the
    scan saw but deliberately left out (e.g. RTSTRUCT series next to CT phases).
    """

    #: Short name of the source, also ``Case4D.meta["source"]``.
    source = "dataset"

    def __init__(self) -> None:
        self._entries: list[Any] = []
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Case4D:  # type: ignore[override]
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(index).__name__}")
        n = len(self._entries)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"{type(self).__name__} has {n} cases; index {i} is out of range")
        return self._load(self._entries[i % n])

    def _load(self, entry: Any) -> Case4D:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def case_ids(self) -> list[str]:
        """The ``case_id`` of every case, in order, without loading voxels."""
        return [self._case_id(e) for e in self._entries]

    def _case_id(self, entry: Any) -> str:
        return entry.case_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} cases)"


# -- helpers shared by the loaders --------------------------------------------------------


def existing_folder(root: str | os.PathLike, what: str) -> Path:
    """``root`` as a Path, or an :class:`InputError` saying it is not a folder."""
    p = Path(root).expanduser()
    if not p.exists():
        raise InputError(f"{what} folder {p} does not exist")
    if not p.is_dir():
        raise InputError(f"{what} must be a folder, but {p} is a file")
    return p


def frames_ed_to_es(ed: int, es: int, num_frames: int) -> list[int]:
    """0-based frame indices from end-diastole to end-systole, both included.

    ``ed`` and ``es`` are 0-based. The cardiac cycle is periodic, so an ES that comes before ED
    in the recording wraps around the end (``ed, ed+1, ..., T-1, 0, ..., es``).
    """
    if num_frames < 1:
        raise InputError(f"a cine needs at least one frame, got {num_frames}")
    for name, value in (("ED", ed), ("ES", es)):
        if not 0 <= value < num_frames:
            raise InputError(f"{name} frame {value + 1} is outside the {num_frames} frames of the cine")
    if es >= ed:
        return list(range(ed, es + 1))
    return list(range(ed, num_frames)) + list(range(0, es + 1))


#: Respiratory phase selections understood by the lung loaders: name -> phase percentages.
PHASE_SELECTIONS: dict[str, tuple[float, ...]] = {
    "all": tuple(float(p) for p in range(0, 100, 10)),
    # phases 0..5 = 0 %..50 %: end-inhale to end-exhale, the half cycle of the common protocol
    "0-5": tuple(float(p) for p in range(0, 60, 10)),
}


def phase_percentages(phases: str | Sequence[float]) -> tuple[float, ...]:
    """Resolve a phase selection (``"all"``, ``"0-5"`` or percentages) to sorted percentages."""
    if isinstance(phases, str):
        key = phases.strip().lower()
        if key not in PHASE_SELECTIONS:
            raise InputError(
                f"unknown phase selection {phases!r}; use one of {', '.join(PHASE_SELECTIONS)} "
                "or a list of percentages such as [0, 10, 20]"
            )
        return PHASE_SELECTIONS[key]
    try:
        values = sorted({float(p) for p in phases})
    except (TypeError, ValueError):
        raise InputError(f"phases must be 'all', '0-5' or a list of percentages, got {phases!r}") from None
    if not values or any(not 0.0 <= v < 100.0 for v in values):
        raise InputError(f"phase percentages must lie in [0, 100), got {list(phases)!r}")
    return tuple(values)


def nan_tracks(num_frames: int, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Landmark tracks ``name -> (T, 3)`` filled with NaN, to be set per frame."""
    return {name: np.full((num_frames, 3), np.nan) for name in names}
