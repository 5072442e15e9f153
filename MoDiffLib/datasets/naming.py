"""What a file name says in a folder of user data: image or label map, frame number, series.

Users name their files freely (``img_tf0.nii.gz``, ``frame_000.nrrd``, ``patient001_frame01_gt.nii.gz``,
``seg_tf3.nii.gz``, ``cine_labels.nii.gz``); the folder loaders read three things from a name:

* **label files** -- a name holding one of :data:`LABEL_TOKENS` as a word of its own (letters not
  joined to other letters: ``img_tf0_gt``, ``seg3``, ``mask``; not ``segment`` or ``gtx``) is a
  label map, never an image;
* **frame number** -- the last run of digits in the name (``img_tf14`` -> 14, ``frame_007`` -> 7);
* **series key** -- the name in lower case without its label words and with its frame number
  replaced by ``#`` (``img_tf3_gt`` and ``img_tf3`` -> ``img_tf#``), so the frames of one series
  share a key and a per-frame label map names the image frame it belongs to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..atomic import split_suffix

#: Words that mark a label map (segmentation, ground truth, mask).
LABEL_TOKENS = ("segmentation", "labels", "label", "mask", "seg", "lbl", "gt")
_LABEL_WORD = re.compile(r"(?<![a-z])(" + "|".join(LABEL_TOKENS) + r")(?![a-z])")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def file_stem(path: str | os.PathLike) -> str:
    """The name without its image ending (``img_tf0.nii.gz`` -> ``img_tf0``)."""
    return split_suffix(Path(path))[0]


def is_label_name(path: str | os.PathLike) -> bool:
    """Whether the file name marks a label map (a word of :data:`LABEL_TOKENS`)."""
    return _LABEL_WORD.search(file_stem(path).lower()) is not None


def frame_number(path: str | os.PathLike) -> int | None:
    """The last number in the file's name, or None where it has none."""
    m = _LAST_NUMBER.search(file_stem(path))
    return int(m.group(1)) if m else None


def _tidy(text: str) -> str:
    return re.sub(r"[^a-z0-9#]+", "_", text).strip("_")


def image_key(path: str | os.PathLike) -> str:
    """The stem in lower case without label words (``cine_gt`` -> ``cine``): pairs 4D labels with images."""
    return _tidy(_LABEL_WORD.sub("", file_stem(path).lower()))


def series_key(path: str | os.PathLike) -> str:
    """:func:`image_key` with the frame number replaced by ``#`` (the frames of one series share it)."""
    return _tidy(_LAST_NUMBER.sub("#", _LABEL_WORD.sub("", file_stem(path).lower())))


def series_name(key: str) -> str:
    """A series key as a case name (``img_tf#`` -> ``img_tf``; ``#`` alone -> ``frames``)."""
    return _tidy(key.replace("#", "")) or "frames"
