"""A folder of 4D files: every 4D NIfTI (``.nii``, ``.nii.gz``) and Slicer ``.seq.nrrd`` in it.

One case per file, named after the file. 3D files in the folder (single frames, label maps) are
left out and listed in ``skipped``. Headers are read at construction; a file whose header cannot
be read raises there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import split_suffix
from ..errors import InputError
from .base import Case4D, CaseDataset, existing_folder
from .files import read_sequence_file, sequence_frame_count

#: File endings scanned (lower case).
FOLDER_SUFFIXES = (".nii.gz", ".nii", ".seq.nrrd")


@dataclass(frozen=True)
class _FileEntry:
    case_id: str
    path: str
    num_frames: int


class Folder4DDataset(CaseDataset):
    """Every 4D NIfTI / ``.seq.nrrd`` file in a folder, one case each, sorted by name.

    Args:
        root: the folder.
        recursive: also scan its sub-folders (case ids then include the relative folder).
        min_frames: files with fewer frames are left out (default 2: a 4D file).

    Raises:
        InputError: at construction, if the folder holds no 4D file or a header is unreadable.
    """

    source = "folder"

    def __init__(self, root: str | os.PathLike, recursive: bool = False, min_frames: int = 2) -> None:
        super().__init__()
        self.root = existing_folder(root, "4D data")
        paths = sorted(self.root.rglob("*") if recursive else self.root.iterdir())
        for path in paths:
            if not path.is_file() or not path.name.lower().endswith(FOLDER_SUFFIXES):
                continue
            num_frames = sequence_frame_count(path)
            if num_frames < min_frames:
                self.skipped.append((str(path), f"{num_frames} frame(s); a 4D file needs {min_frames}"))
                continue
            stem = split_suffix(path)[0]
            rel = path.parent.relative_to(self.root)
            case_id = stem if rel == Path(".") else f"{rel.as_posix().replace('/', '_')}_{stem}"
            self._entries.append(_FileEntry(case_id, str(path), num_frames))
        if not self._entries:
            seen = f"; left out: {len(self.skipped)} 3D file(s)" if self.skipped else ""
            raise InputError(
                f"no 4D files in {self.root} (expected 4D NIfTI .nii/.nii.gz or Slicer .seq.nrrd "
                f"files with at least {min_frames} frames{seen})"
            )
        ids = [e.case_id for e in self._entries]
        doubled = sorted({i for i in ids if ids.count(i) > 1})
        if doubled:
            raise InputError(f"{self.root} holds several files named {doubled[0]} (e.g. .nii and .nii.gz)")

    def _load(self, entry: _FileEntry) -> Case4D:
        sequence = read_sequence_file(entry.path)
        sequence.name = entry.case_id
        meta = {"source": self.source, "file": entry.path, "patient": entry.case_id}
        return Case4D(entry.case_id, sequence, None, None, None, meta)
