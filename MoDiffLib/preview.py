"""Preview images of cines: a few frames in two views (a slice and a cut across the slices), ground truth beside them.

The views are the middle slice of the grid's k axis and the middle row of its j axis. For a lung CT
on an axial grid they are axial and coronal; for a cardiac cine acquired in short-axis slices they
are a short-axis slice and a long-axis cut across the slices (:data:`CARDIAC_VIEWS`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume import VolumeSequence

#: Names of the two views: the k slice and the cut along k, by default (axial grids) and for cardiac cines.
DEFAULT_VIEWS = ("axial", "coronal")
CARDIAC_VIEWS = ("short axis", "long-axis cut")


def _views(frames: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Axial (middle slice) and coronal (middle row) of frame ``t``; arrays are [k, j, i]."""
    vol = frames[t]
    axial = vol[vol.shape[0] // 2]
    coronal = vol[:, vol.shape[1] // 2, :][::-1]  # superior at the top
    return axial, coronal


def save_preview(path: str | Path, generated: VolumeSequence, truth: VolumeSequence | None = None,
                 window: tuple[float, float] = (-1000.0, 400.0), num_frames: int = 4, title: str = "",
                 views: tuple[str, str] | None = None) -> None:
    """Write a PNG montage: rows = generated, [truth, |error|]; columns = frames (two views each, named by
    ``views``: :data:`DEFAULT_VIEWS` when None, :data:`CARDIAC_VIEWS` for short-axis cines)."""
    slice_name, cut_name = views or DEFAULT_VIEWS
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = generated.num_frames
    picks = sorted({int(round(x)) for x in np.linspace(0, n - 1, min(num_frames, n))})
    rows = [("generated", generated.frames)]
    if truth is not None:
        rows += [("ground truth", truth.frames), ("|error|", np.abs(generated.frames.astype(np.float32) - truth.frames))]
    aspect_cor = generated.geometry.spacing[2] / generated.geometry.spacing[0]
    fig, axes = plt.subplots(len(rows), 2 * len(picks), figsize=(2.2 * 2 * len(picks), 2.4 * len(rows)), squeeze=False)
    lo, hi = window
    for r, (label, frames) in enumerate(rows):
        for c, t in enumerate(picks):
            axial, coronal = _views(frames, t)
            vmin, vmax = (0.0, (hi - lo) / 4) if label == "|error|" else (lo, hi)
            cmap = "magma" if label == "|error|" else "gray"
            axes[r, 2 * c].imshow(axial, cmap=cmap, vmin=vmin, vmax=vmax)
            axes[r, 2 * c + 1].imshow(coronal, cmap=cmap, vmin=vmin, vmax=vmax, aspect=aspect_cor)
            axes[r, 2 * c].set_title(f"frame {t} {slice_name}", fontsize=8)
            axes[r, 2 * c + 1].set_title(f"frame {t} {cut_name}", fontsize=8)
        axes[r, 0].set_ylabel(label)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
