"""A user's 4D data: a 4D file, a folder of 4D files, a folder of per-frame 3D files, or case folders.

Layouts read (one case per 4D file, per frame series, or per case sub-folder)::

    cine.nii.gz                          one 4D file (NIfTI or Slicer .seq.nrrd): a one-case data set
    cines/a.nii.gz, cines/b.seq.nrrd     a folder of 4D files
    case1/img_tf0.nii.gz .. img_tf14     per-frame 3D files (any of .nii(.gz), .nrrd, .mha), ordered by
                                         the last number in the name, all on one grid
    cases/patientA/img_tf*.nii.gz, ...   case sub-folders (read when the folder itself holds no images)

Label maps are found beside the images by name (:mod:`.naming`: ``seg``, ``label(s)``, ``gt``,
``mask`` words): they are never taken as images; a per-frame label (``img_tf3_gt``, ``seg_tf3``)
goes with the image frame of the same number, a 4D label file (``cine_seg.nii.gz``) with the 4D
image of the same name (or the folder's only image). A label map that does not fit its image
(another grid, another frame count: e.g. a 4th axis of slices) is left out with the reason in
``skipped``. An optional sidecar JSON (:mod:`.sidecar`) gives kind, label names, ED / ES / EF or
the phases; ED / ES / EF are otherwise computed from the LV label (:mod:`.cycle`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..volume import Volume, VolumeSequence
from .base import Case4D, CaseDataset
from .cycle import place_in_cycle
from .files import image_header, image_suffix, read_sequence_file, read_volume_file
from .naming import file_stem, frame_number, image_key, is_label_name, series_key, series_name
from .sidecar import Sidecar, find_sidecar, read_sidecar, sidecar_dict

#: 4D file endings (lower case); the per-frame loaders also read .nrrd, .nhdr, .mha and .mhd.
FOLDER_SUFFIXES = (".nii.gz", ".nii", ".seq.nrrd")


@dataclass(frozen=True)
class _FileEntry:
    """One case: its image file(s), label file(s) and sidecar, checked at the scan."""

    case_id: str
    images: tuple[str, ...]  # one 4D file, or the 3D frames in order
    num_frames: int
    labels_4d: str | None = None
    labels_3d: tuple[tuple[int, str], ...] = ()  # (frame index, 3D label file)
    sidecar: Sidecar = field(default_factory=Sidecar)

    @property
    def path(self) -> str:
        return self.images[0]


@dataclass
class _Image:
    path: Path
    frames: int
    geometry: object


def _headers(folder: Path, skipped: list[tuple[str, str]]) -> tuple[list[_Image], list[_Image]]:
    """(images, labels) of the image files directly in ``folder``, with their headers."""
    images, labels = [], []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or image_suffix(path) is None:
            continue
        header = image_header(path)
        (labels if is_label_name(path) else images).append(_Image(path, header.num_frames, header.geometry))
    return images, labels


def _series(images: list[_Image], min_frames: int, skipped: list[tuple[str, str]]):
    """(4D images, frame series ``key -> [(number, image), ...]`` in frame order)."""
    four_d = [im for im in images if im.frames >= 2]
    groups: dict[str, list[tuple[int, _Image]]] = {}
    for im in images:
        if im.frames >= 2:
            continue
        number = frame_number(im.path)
        if number is None:
            skipped.append((str(im.path), "a 3D image with no frame number in its name"))
            continue
        groups.setdefault(series_key(im.path), []).append((number, im))
    series = {}
    for key, members in sorted(groups.items()):
        members.sort(key=lambda m: m[0])
        if len(members) < min_frames:
            for _, im in members:
                skipped.append((str(im.path), f"a single 3D frame; a cine needs at least {min_frames}"))
            continue
        numbers = [n for n, _ in members]
        doubled = sorted({n for n in numbers if numbers.count(n) > 1})
        if doubled:
            same = [im.path.name for n, im in members if n == doubled[0]]
            raise InputError(f"{members[0][1].path.parent}: frame number {doubled[0]} appears twice ({', '.join(same)})")
        first = members[0][1]
        for _, im in members[1:]:
            if not im.geometry.is_close(first.geometry, atol_mm=1e-3):
                raise InputError(f"{im.path} is on another grid ({im.geometry.describe()}) than {first.path.name} "
                                 f"({first.geometry.describe()}); the frames of a cine share one grid")
        series[key] = members
    return four_d, series


def _fits(label: _Image, frames: int, geometry, image: Path, skipped) -> bool:
    if label.frames != frames:
        what = "a 3D map" if label.frames == 1 else f"{label.frames} frames"
        skipped.append((str(label.path), f"label map with {what} for the {frames} frame(s) of {image.name} "
                                         "(a 4th axis of slices, or another cine?)"))
        return False
    if not label.geometry.is_close(geometry, atol_mm=1e-3):
        skipped.append((str(label.path), f"label map on another grid ({label.geometry.describe()}) than "
                                         f"{image.name} ({geometry.describe()})"))
        return False
    return True


def scan_case_folder(folder: Path, prefix: str, min_frames: int = 2,
                     only: Path | None = None) -> tuple[list[_FileEntry], list[tuple[str, str]]]:
    """The cases of the image files directly in ``folder`` (ids prefixed by ``prefix``), and what was left out.

    ``only``: a single 4D file of ``folder`` to read (with its labels and sidecar).

    Raises:
        InputError: a frame series with doubled frame numbers or frames on different grids, a
            label map that no image can be paired with, or a bad sidecar.
    """
    skipped: list[tuple[str, str]] = []
    images, labels = _headers(folder, skipped)
    if only is not None:
        images = [im for im in images if im.path == only]
        if not images:
            raise InputError(f"{only} is not an image file MoDiff reads ({', '.join(FOLDER_SUFFIXES)})")
        if images[0].frames < 2:
            raise InputError(f"{only} holds one 3D frame; give a 4D file or the folder of its frames")
    four_d, series = _series(images, min_frames, skipped)
    cases = len(four_d) + len(series)
    lone = cases == 1 and only is None  # the folder's only case takes every label map in it
    entries: list[_FileEntry] = []
    used: set[Path] = set()

    def case_id(name: str, series: bool) -> str:
        if series and lone:
            return prefix or folder.name  # a case folder of frames: the case is named after its folder
        return f"{prefix}_{name}" if prefix else name

    for im in four_d:
        stem = file_stem(im.path)
        mine = [lb for lb in labels if lb.frames >= 2 and image_key(lb.path) == image_key(im.path)]
        if lone:  # the folder's only image: every label map in it is meant for it (or does not fit)
            mine = list(labels)
        fitting = [lb for lb in mine if _fits(lb, im.frames, im.geometry, im.path, skipped)]
        used.update(lb.path for lb in mine)
        if len(fitting) > 1:
            raise InputError(f"{im.path.name} has several label maps ({', '.join(lb.path.name for lb in fitting)}); "
                             "keep one")
        sidecar = read_sidecar(find_sidecar(folder, [stem]))
        entries.append(_FileEntry(case_id(stem, False), (str(im.path),), im.frames,
                                  str(fitting[0].path) if fitting else None, (), sidecar))
    for key, members in series.items():
        number_to_index = {n: t for t, (n, _) in enumerate(members)}
        first = members[0][1]
        mine = [lb for lb in labels if lb.frames == 1 and series_key(lb.path) == key]
        if not mine and len(series) == 1:
            mine = [lb for lb in labels if lb.frames == 1 and lb.path not in used]
        pairs = []
        for lb in mine:
            used.add(lb.path)
            number = frame_number(lb.path)
            if number not in number_to_index:
                skipped.append((str(lb.path), f"label map of frame {number}, which series {series_name(key)} lacks"))
            elif _fits(lb, 1, first.geometry, first.path, skipped):
                pairs.append((number_to_index[number], str(lb.path)))
        indices = [t for t, _ in pairs]
        if len(set(indices)) != len(indices):
            raise InputError(f"{folder}: several label maps for one frame of series {series_name(key)} "
                             f"({', '.join(Path(p).name for _, p in pairs)})")
        labels_4d = None
        if len(series) == 1:  # a 4D label map beside the frames of the folder's only series
            four = [lb for lb in labels if lb.frames >= 2 and lb.path not in used]
            used.update(lb.path for lb in four)
            four = [lb for lb in four if _fits(lb, len(members), first.geometry, first.path, skipped)]
            if four and pairs:
                raise InputError(f"{folder} holds per-frame and 4D label maps for one series; keep one kind")
            labels_4d = str(four[0].path) if four else None
        name = series_name(key)
        sidecar = read_sidecar(find_sidecar(folder, [name, key.replace("#", "")]))
        entries.append(_FileEntry(case_id(name, True), tuple(str(im.path) for _, im in members), len(members),
                                  labels_4d, tuple(sorted(pairs)), sidecar))
    for lb in labels:
        if lb.path not in used and only is None:
            if not entries:
                skipped.append((str(lb.path), "a label map with no image beside it"))
            else:
                raise InputError(f"cannot pair the label map {lb.path} with an image of {folder}: name it like its "
                                 "image plus a label word (img_tf3 -> img_tf3_gt, cine -> cine_seg)")
    return entries, skipped


class Folder4DDataset(CaseDataset):
    """A user's 4D data (see the module docstring), one case per 4D file or frame series, sorted by name.

    Args:
        root: a folder, or one 4D file.
        recursive: scan every sub-folder too (case ids then start with the relative folder);
            without it, the sub-folders are scanned only when ``root`` itself holds no images.
        min_frames: 4D files and frame series with fewer frames are left out (default 2).

    Raises:
        InputError: at construction, if nothing yields a case, a header is unreadable, frames of a
            series disagree, or a label map or sidecar cannot be used.
    """

    source = "folder"

    def __init__(self, root: str | os.PathLike, recursive: bool = False, min_frames: int = 2) -> None:
        super().__init__()
        p = Path(root).expanduser()
        if not p.exists():
            raise InputError(f"4D data {p} does not exist")
        if p.is_file():
            entries, self.skipped = scan_case_folder(p.parent, "", min_frames, only=p)
            self.root = p.parent
            self._entries = entries
            return
        self.root = p
        entries, skipped = scan_case_folder(p, "", min_frames)
        self.skipped += skipped
        has_images = any(image_suffix(c) for c in p.iterdir() if c.is_file())
        if recursive:
            folders = sorted(d for d in p.rglob("*") if d.is_dir())
        else:
            folders = [] if has_images else sorted(d for d in p.iterdir() if d.is_dir())
        for d in folders:
            sub, skipped = scan_case_folder(d, d.relative_to(p).as_posix().replace("/", "_"), min_frames)
            entries += sub
            self.skipped += skipped
        if not entries:
            seen = f"; left out: {len(self.skipped)} file(s), e.g. {Path(self.skipped[0][0]).name}: " \
                   f"{self.skipped[0][1]}" if self.skipped else ""
            raise InputError(
                f"no 4D files or frame series in {p} (expected 4D NIfTI .nii/.nii.gz or Slicer .seq.nrrd files, "
                f"or numbered 3D frames such as img_tf0.nii.gz .. img_tf14.nii.gz, with at least {min_frames} "
                f"frames{seen})"
            )
        ids = [e.case_id for e in entries]
        doubled = sorted({i for i in ids if ids.count(i) > 1})
        if doubled:
            raise InputError(f"{p} holds several cases named {doubled[0]} (e.g. .nii and .nii.gz)")
        self._entries = entries

    def _load(self, entry: _FileEntry) -> Case4D:
        if len(entry.images) == 1:
            sequence = read_sequence_file(entry.path)
        else:
            volumes = [read_volume_file(p) for p in entry.images]
            first = volumes[0]
            for p, v in zip(entry.images, volumes):
                if not v.geometry.is_close(first.geometry, atol_mm=1e-3):
                    raise InputError(f"{p} is on another grid than {Path(entry.path).name}")
            sequence = VolumeSequence(np.stack([v.array for v in volumes]), first.geometry)
        sequence.name = entry.case_id
        labels = None
        if entry.labels_4d is not None:
            maps = read_sequence_file(entry.labels_4d)
            if not maps.geometry.is_close(sequence.geometry, atol_mm=1e-3) or maps.num_frames != sequence.num_frames:
                raise InputError(f"{entry.labels_4d} does not fit the grid and frames of {entry.path}")
            labels = VolumeSequence(np.rint(maps.frames).astype(np.uint8 if maps.frames.max() < 256 else np.int32),
                                    maps.geometry, name=f"{entry.case_id}_labels")
        elif entry.labels_3d:
            labels = {}
            for t, path in entry.labels_3d:
                v = read_volume_file(path)
                labels[t] = Volume(np.rint(v.array).astype(np.uint8 if v.array.max() < 256 else np.int32),
                                   v.geometry, name=f"{entry.case_id}_frame{t}_labels")
        meta = {"source": self.source, "file": entry.path, "files": list(entry.images), "patient": entry.case_id,
                "label_files": ([entry.labels_4d] if entry.labels_4d else [p for _, p in entry.labels_3d]),
                "sidecar": sidecar_dict(entry.sidecar) if entry.sidecar.path else None}
        return place_in_cycle(entry.case_id, sequence, labels, entry.sidecar, meta)
