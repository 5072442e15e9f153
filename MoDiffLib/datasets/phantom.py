"""XCAT-lite phantoms made on the fly, with disjoint seed ranges per split.

Every phantom is fully determined by its kind, seed, frame count, start phase and amplitude, so a
data set of phantoms is just a list of seeds. The seed ranges of the splits never overlap, and
they are the one definition of "held out" in MoDiff: evaluation and the demo draw their cases
from ``PHANTOM_SEEDS["test"]`` (or ``"val"``), which no training run sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..phantom import KINDS as PHANTOM_KINDS
from ..phantom import MAX_PHANTOM_FRAMES, cardiac_grid, lung_grid, make_phantom
from ..phantom.case import MAX_PHANTOM_FRAME_VOXELS, check_phantom_request
from .base import Case4D, CaseDataset

#: Seeds of each split; disjoint, so no phantom of one split appears in another.
PHANTOM_SEEDS: dict[str, range] = {
    "train": range(0, 100_000),
    "val": range(100_000, 200_000),
    "test": range(200_000, 300_000),
}

def phantom_split_of(seed: int) -> str:
    """The split a phantom seed belongs to (``InputError`` outside every split)."""
    for split, seeds in PHANTOM_SEEDS.items():
        if seed in seeds:
            return split
    raise InputError(f"phantom seed {seed} lies outside every split ({_describe_splits()})")


def _describe_splits() -> str:
    return ", ".join(f"{s}: {r.start}..{r.stop - 1}" for s, r in PHANTOM_SEEDS.items())


@dataclass(frozen=True)
class _PhantomEntry:
    case_id: str
    seed: int
    num_frames: int


class PhantomDataset(CaseDataset):
    """Synthetic 4D cases (:func:`MoDiffLib.phantom.make_phantom`), made when indexed.

    Args:
        kind: ``"lung"`` (4D CT, HU) or ``"cardiac"`` (cine MR).
        split: ``"train"``, ``"val"`` or ``"test"``; picks the seed range (:data:`PHANTOM_SEEDS`).
        num_cases: number of cases.
        num_frames: frames per case, or ``(min, max)`` for a frame count drawn per case (from its
            seed, so it is the same every time).
        seed_base: offset of the first seed within the split's range (case ``i`` has seed
            ``PHANTOM_SEEDS[split].start + seed_base + i``).
        start_phase: cycle phase of frame 0 in [0, 1) (0 = end-exhale / end-diastole).
        amplitude: fixed motion strength (diaphragm SI mm or EF %) instead of a drawn one.
        shape_ijk: grid size (i, j, k) instead of the phantom's default grid (same field of view).

    Cases carry ``labels`` (a label map per frame), ``landmarks`` (tracks in RAS mm), the drawn
    ``amplitude``, ``trace_mm`` (lung: the true breathing trace; cardiac: ``None``), and in
    ``meta``: ``seed``, ``split``, ``params``, ``label_names`` and ``motion`` (the ground-truth
    displacement from frame 0, a vector :class:`VolumeSequence` in RAS mm).

    Raises:
        InputError: an unknown kind or split, a frame count outside 2..MAX_PHANTOM_FRAMES, or
            seeds beyond the split.
    """

    source = "phantom"

    def __init__(
        self,
        kind: str,
        split: str = "train",
        num_cases: int = 100,
        num_frames: int | tuple[int, int] = 10,
        seed_base: int = 0,
        start_phase: float = 0.0,
        amplitude: float | None = None,
        shape_ijk: tuple[int, int, int] | None = None,
    ) -> None:
        super().__init__()
        if kind not in PHANTOM_KINDS:
            raise InputError(f"unknown phantom kind {kind!r}; use one of {', '.join(PHANTOM_KINDS)}")
        if split not in PHANTOM_SEEDS:
            raise InputError(f"unknown phantom split {split!r}; use one of {', '.join(PHANTOM_SEEDS)}")
        if int(num_cases) < 1:
            raise InputError(f"a phantom data set needs at least one case, got {num_cases}")
        if isinstance(num_frames, (tuple, list)):
            if len(num_frames) != 2:
                raise InputError(f"num_frames must be a number or a (min, max) pair, got {num_frames!r}")
            low, high = int(num_frames[0]), int(num_frames[1])
        else:
            low = high = int(num_frames)
        if low < 2 or high < low or high > MAX_PHANTOM_FRAMES:
            raise InputError(
                f"phantom frame counts must lie in 2..{MAX_PHANTOM_FRAMES} (min <= max), got {num_frames!r}"
            )
        # Kind, start phase and amplitude are checked by the phantom itself, now rather than per item.
        check_phantom_request(kind, low, 0, start_phase, amplitude)
        grid = lung_grid(shape_ijk) if kind == "lung" else cardiac_grid(shape_ijk)  # checks shape_ijk
        if int(np.prod(grid.shape_kji)) * high > MAX_PHANTOM_FRAME_VOXELS:
            raise InputError(
                f"{high} frames of {grid.describe()} are too many voxels for a phantom "
                f"(frames x voxels at most {MAX_PHANTOM_FRAME_VOXELS})"
            )
        seeds = PHANTOM_SEEDS[split]
        if seed_base < 0 or seed_base + num_cases > len(seeds):
            raise InputError(
                f"{num_cases} {split} phantoms from offset {seed_base} would leave the {split} seed range "
                f"{seeds.start}..{seeds.stop - 1}"
            )
        self.kind, self.split = kind, split
        self.start_phase, self.amplitude = float(start_phase), amplitude
        self.shape_ijk = None if shape_ijk is None else tuple(int(n) for n in shape_ijk)
        for i in range(int(num_cases)):
            seed = seeds[seed_base + i]
            frames = low if low == high else int(np.random.default_rng([seed, 4]).integers(low, high + 1))
            self._entries.append(_PhantomEntry(f"phantom_{kind}_{seed}", seed, frames))

    @property
    def seeds(self) -> list[int]:
        return [e.seed for e in self._entries]

    def _load(self, entry: _PhantomEntry) -> Case4D:
        case = make_phantom(
            self.kind, num_frames=entry.num_frames, seed=entry.seed, start_phase=self.start_phase,
            shape_ijk=self.shape_ijk, amplitude=self.amplitude,
        )
        meta = {
            "source": self.source,
            "kind": case.kind,
            "seed": entry.seed,
            "split": self.split,
            "start_phase": self.start_phase,
            "params": dict(case.params),
            "label_names": dict(case.label_names),
            "motion": case.motion,
            "modality": "CT" if case.kind == "lung" else "MR",
            "patient": entry.case_id,
        }
        amplitude = case.params.get("amplitude")
        return Case4D(
            entry.case_id,
            case.frames,
            case.labels,
            {name: np.asarray(track, dtype=float) for name, track in case.landmarks.items()},
            None if amplitude is None else float(amplitude),
            meta,
            trace_mm=case.trace_mm,
        )
