"""DIR-Lab 4DCT (Castillo et al. 2009/2010): ten lung 4DCTs with expert landmarks.

Layout (``root`` may hold the ``CaseNPack`` folders or be one of them)::

    Case1Pack/Images/case1_T00_s.img ... case1_T90_s.img     raw int16, value = HU + 1024
    Case1Pack/ExtremePhases/Case1_300_T00_xyz.txt            300 landmarks at T00 (max inhale)
    Case1Pack/ExtremePhases/Case1_300_T50_xyz.txt            the same 300 at T50 (max exhale)
    Case1Pack/Sampled4D/case1_4D-75_T00.txt ... _T50.txt     75 landmarks tracked over T00..T50
    Case8Deploy/..., extremePhases/case8_dirLab300_T00_xyz.txt, case10_T10.img (no "_s"), ...

Image names may carry a suffix (``_s``, ``-ssm``) or none; names are matched case-insensitively
anywhere under a case folder. Landmark files hold one ``x y z`` row per landmark, in 1-based voxel
indices of the same grid.

The ``.img`` files have no usable header: their grid comes from :data:`DIRLAB_4DCT_GEOMETRY`
(the values DIR-Lab publishes per case), or from a ``dirlab_geometry.json`` sidecar in the case
folder (or below it), ``{"size_xyz": [256, 256, 94], "spacing_mm": [0.97, 0.97, 2.5]}``, which takes precedence
(needed for a case number outside 1..10). Each file's size is checked against it at construction.

Orientation (an assumption, stated once and used for images and landmarks alike): DIR-Lab
documents voxel (1, 1, 1) as the centroid of the patient's right-anterior-superior corner voxel,
with x increasing right -> left, y anterior -> posterior and z superior -> inferior, and the raw
files store x fastest, then y, then z (slice 1 is the most superior). Hence::

    array[k, j, i] = raw[z, y, x];  i -> patient left (-R), j -> posterior (-A), k -> inferior (-S)
    direction_ras = diag(-1, -1, -1);  origin_ras = (0, 0, 0) at the centre of voxel (1, 1, 1)

DIR-Lab gives no scanner position, so the world origin is this convention's, not the scanner's;
a landmark ``(x, y, z)`` lies at RAS ``-((x - 1) sx, (y - 1) sy, (z - 1) sz)`` mm.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from ..volume import Geometry, VolumeSequence
from .base import Case4D, CaseDataset, existing_folder, nan_tracks, phase_percentages

#: Published grid of the ten DIR-Lab 4DCT cases: case -> ((nx, ny, nz) voxels, (sx, sy, sz) mm).
DIRLAB_4DCT_GEOMETRY: dict[int, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    1: ((256, 256, 94), (0.97, 0.97, 2.5)),
    2: ((256, 256, 112), (1.16, 1.16, 2.5)),
    3: ((256, 256, 104), (1.15, 1.15, 2.5)),
    4: ((256, 256, 99), (1.13, 1.13, 2.5)),
    5: ((256, 256, 106), (1.10, 1.10, 2.5)),
    6: ((512, 512, 128), (0.97, 0.97, 2.5)),
    7: ((512, 512, 136), (0.97, 0.97, 2.5)),
    8: ((512, 512, 128), (0.97, 0.97, 2.5)),
    9: ((512, 512, 128), (0.97, 0.97, 2.5)),
    10: ((512, 512, 120), (0.97, 0.97, 2.5)),
}

#: Stored value = HU + this offset.
DIRLAB_HU_OFFSET = 1024

#: Direction of the raw axes in RAS (see the module docstring): i -> L, j -> P, k -> I.
DIRLAB_DIRECTION_RAS = ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))

SIDECAR_NAME = "dirlab_geometry.json"

_IMAGE = re.compile(r"^case(\d+)_T(\d)0(?:[_-][a-z0-9-]+)?\.img$", re.IGNORECASE)
_LANDMARKS_300 = re.compile(r"^case(\d+)_(?:dirlab)?300_T(\d)0_xyz\.txt$", re.IGNORECASE)
_LANDMARKS_75 = re.compile(r"^case(\d+)_4D-75_T(\d)0\.txt$", re.IGNORECASE)
_CASE_FOLDER = re.compile(r"^case(\d+)(pack|deploy)$", re.IGNORECASE)


def dirlab_geometry(size_xyz: Sequence[int], spacing_mm: Sequence[float]) -> Geometry:
    """The RAS grid of a DIR-Lab raw image under the documented orientation (module docstring)."""
    nx, ny, nz = (int(v) for v in size_xyz)
    return Geometry((nz, ny, nx), tuple(float(s) for s in spacing_mm), (0.0, 0.0, 0.0), DIRLAB_DIRECTION_RAS)


def looks_like_dirlab(folder: Path) -> bool:
    """``CaseNPack``/``CaseNDeploy`` folders in ``folder``, or DIR-Lab images in it or its ``Images``."""
    if any(c.is_dir() and _CASE_FOLDER.match(c.name) for c in folder.iterdir()):
        return True
    return any(_IMAGE.match(f.name) for d in (folder, folder / "Images") if d.is_dir() for f in d.iterdir())


def read_landmark_file(path: Path) -> np.ndarray:
    """``(N, 3)`` 1-based ``x y z`` voxel positions from a DIR-Lab landmark file."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise InputError(f"{path}, line {number}: {line.strip()!r} is not 'x y z' in voxels") from None
        if len(values) != 3:
            raise InputError(f"{path}, line {number}: expected 3 numbers (x y z), got {len(values)}")
        rows.append(values)
    if not rows:
        raise InputError(f"{path} holds no landmarks")
    return np.asarray(rows, dtype=float)


@dataclass(frozen=True)
class _DirLabEntry:
    case_id: str
    case_number: int
    folder: str
    images: tuple[str, ...]  # one per selected phase
    phases: tuple[float, ...]
    size_xyz: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    geometry_source: str
    landmark_files: tuple[tuple[str, int, str], ...]  # (set name, phase percent, path)


class DirLabDataset(CaseDataset):
    """DIR-Lab 4DCT cases with their landmarks in RAS mm.

    Args:
        root: the folder holding ``Case1Pack`` .. ``Case10Pack`` (or one of them).
        phases: ``"0-5"`` (T00..T50, max inhale to max exhale, the common protocol; the 300
            landmarks then sit on the first and last frame), ``"all"`` (T00..T90) or percentages.

    Landmarks: ``"dirlab300_001"`` .. (rows at T00 and T50) and ``"dirlab75_01"`` .. (rows at
    T00..T50 where the 4D-75 files exist); NaN rows elsewhere.

    Raises:
        InputError: at construction, if no case is found, a phase image is missing or doubled,
            a file's size does not match the case's grid, a sidecar is malformed, or a landmark
            file is malformed, lies outside the grid, or its T00 and T50 counts differ.
    """

    source = "dirlab"

    def __init__(self, root: str | os.PathLike, phases: str | Sequence[float] = "0-5") -> None:
        super().__init__()
        self.root = existing_folder(root, "DIR-Lab")
        self.phases = phase_percentages(phases)
        images: dict[int, dict[float, list[Path]]] = {}
        folders: dict[int, Path] = {}
        for path in sorted(self.root.rglob("*")):
            m = _IMAGE.match(path.name)
            if not (m and path.is_file()):
                continue
            case = int(m.group(1))
            folder = self._case_folder(path)
            if case in folders and folders[case] != folder:
                raise InputError(f"DIR-Lab case {case} appears in two folders: {folders[case]} and {folder}")
            folders[case] = folder
            images.setdefault(case, {}).setdefault(float(m.group(2)) * 10.0, []).append(path)
        if not images:
            raise InputError(
                f"no DIR-Lab images under {self.root} (expected CaseNPack/Images/caseN_T00_s.img .. "
                "caseN_T90_s.img, raw int16)"
            )
        for case in sorted(images):
            self._entries.append(self._scan_case(case, folders[case], images[case]))

    def _case_folder(self, image: Path) -> Path:
        """The ``CaseNPack`` folder above ``image``, else the root."""
        for parent in image.parents:
            if parent == self.root or self.root not in parent.parents:
                return self.root
            if _CASE_FOLDER.match(parent.name) and not _CASE_FOLDER.match(parent.parent.name):
                return parent
        return self.root

    def _scan_case(self, case: int, folder: Path, by_phase: dict[float, list[Path]]) -> _DirLabEntry:
        for phase, paths in by_phase.items():
            if len(paths) > 1:
                raise InputError(
                    f"DIR-Lab case {case} has {len(paths)} images for T{int(phase):02d}: "
                    f"{', '.join(str(p) for p in paths)}; keep one"
                )
        missing = [p for p in self.phases if p not in by_phase]
        if missing:
            raise InputError(
                f"DIR-Lab case {case} in {folder} lacks phase image(s) "
                f"{', '.join(f'T{int(p):02d}' for p in missing)}"
            )
        size_xyz, spacing, geometry_source = self._case_grid(case, folder)
        expected = int(np.prod(size_xyz)) * 2
        chosen = [by_phase[p][0] for p in self.phases]
        for path in chosen:
            actual = path.stat().st_size
            if actual != expected:
                raise InputError(
                    f"{path} has {actual} bytes, but the grid of case {case} from {geometry_source} "
                    f"({'x'.join(map(str, size_xyz))} int16 voxels) needs {expected}; put the right "
                    f"size_xyz and spacing_mm in {folder / SIDECAR_NAME}"
                )

        landmark_files = []
        for path in sorted(folder.rglob("*.txt")):
            for name, pattern in (("dirlab300", _LANDMARKS_300), ("dirlab75", _LANDMARKS_75)):
                m = pattern.match(path.name)
                if m and int(m.group(1)) == case:
                    landmark_files.append((name, float(m.group(2)) * 10.0, path))
        counts: dict[str, int] = {}
        for name, phase, path in landmark_files:
            points = read_landmark_file(path)
            if name in counts and counts[name] != len(points):
                raise InputError(f"{path} holds {len(points)} landmarks, the other {name[6:]}-point files {counts[name]}")
            counts[name] = len(points)
            upper = np.asarray(size_xyz, dtype=float) + 0.5
            if np.any(points < 0.5) or np.any(points > upper):
                raise InputError(
                    f"{path} has landmarks outside the {'x'.join(map(str, size_xyz))} grid of case {case} "
                    f"(1-based x y z expected; is the grid from {geometry_source} right?)"
                )
        return _DirLabEntry(
            case_id=f"case{case}",
            case_number=case,
            folder=str(folder),
            images=tuple(str(p) for p in chosen),
            phases=self.phases,
            size_xyz=size_xyz,
            spacing_mm=spacing,
            geometry_source=geometry_source,
            landmark_files=tuple((n, p, str(f)) for n, p, f in landmark_files),
        )

    def _case_grid(self, case: int, folder: Path):
        sidecar = folder / SIDECAR_NAME
        if not sidecar.is_file():
            sidecar = next(iter(sorted(folder.rglob(SIDECAR_NAME))), sidecar)
        if sidecar.is_file():
            try:
                data = json.loads(sidecar.read_text(encoding="utf-8"))
                size = tuple(int(v) for v in data["size_xyz"])
                spacing = tuple(float(v) for v in data["spacing_mm"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(
                    f"{sidecar} must be JSON like {{\"size_xyz\": [256, 256, 94], \"spacing_mm\": [0.97, 0.97, 2.5]}} "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            if len(size) != 3 or len(spacing) != 3 or min(size) < 1 or min(spacing) <= 0:
                raise InputError(f"{sidecar}: size_xyz and spacing_mm need three positive numbers each")
            return size, spacing, str(sidecar)
        if case not in DIRLAB_4DCT_GEOMETRY:
            raise InputError(
                f"DIR-Lab case {case} is not one of the published cases 1-10, so its grid is unknown; "
                f"give it in {sidecar}"
            )
        size, spacing = DIRLAB_4DCT_GEOMETRY[case]
        return size, spacing, "the published DIR-Lab table"

    def _load(self, entry: _DirLabEntry) -> Case4D:
        nx, ny, nz = entry.size_xyz
        geometry = dirlab_geometry(entry.size_xyz, entry.spacing_mm)
        frames = np.empty((len(entry.images), nz, ny, nx), dtype=np.int16)
        for t, path in enumerate(entry.images):
            raw = np.fromfile(path, dtype="<i2")
            if raw.size != nx * ny * nz:
                raise InputError(f"{path} has {raw.size} voxels; the grid of {entry.case_id} needs {nx * ny * nz}")
            hu = raw.astype(np.int32) - DIRLAB_HU_OFFSET
            frames[t] = np.clip(hu, -32768, 32767).reshape(nz, ny, nx)
        sequence = VolumeSequence(frames, geometry, name=entry.case_id)

        position = {phase: t for t, phase in enumerate(entry.phases)}
        tracks: dict[str, np.ndarray] = {}
        for name, phase, path in entry.landmark_files:
            if phase not in position:
                continue
            points_ras = geometry.ijk_to_ras_points(read_landmark_file(Path(path)) - 1.0)
            width = 3 if name == "dirlab300" else 2
            names = [f"{name}_{n + 1:0{width}d}" for n in range(len(points_ras))]
            for n, label in enumerate(names):
                if label not in tracks:
                    tracks.update(nan_tracks(len(entry.phases), [label]))
                tracks[label][position[phase]] = points_ras[n]
        meta = {
            "source": self.source,
            "patient": entry.case_id,
            "case_number": entry.case_number,
            "folder": entry.folder,
            "phases": [f"T{int(p):02d}" for p in entry.phases],
            "phases_percent": list(entry.phases),
            "files": list(entry.images),
            "geometry_source": entry.geometry_source,
            "orientation_assumption": "raw x->L, y->P, z->I; voxel (1,1,1) at RAS origin",
            "modality": "CT",
        }
        return Case4D(entry.case_id, sequence, None, tracks or None, None, meta)
