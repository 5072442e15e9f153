"""Load any released MoDiff model as the pipeline of its family.

``latent`` models (the paper's variant: VAE, intensity differences, I2V) run in
:class:`~MoDiffLib.pipeline.MoDiffPipeline`; ``motion`` models (displacement differences on an
anatomy grid, residual on the population motion) in :class:`~MoDiffLib.motion_pipeline.MotionPipeline`.
Both have the same ``generate`` signature for what they share, so callers need not care.
"""

from __future__ import annotations

from pathlib import Path

from .models.checkpoint import load_checkpoint
from .motion_pipeline import MotionPipeline
from .pipeline import MoDiffPipeline


def load_pipeline(name_or_path: str | Path | None = None, kind: str | None = None) -> MoDiffPipeline | MotionPipeline:
    """A registered model by name or a checkpoint folder (checksums verified either way); ``None``: the default for ``kind``."""
    from .registry import resolve_model

    folder, entry = resolve_model(name_or_path, kind=kind, verify=False)
    # Verified here, the same way for a name or a path: the registry's checksums for a name,
    # the folder's checksums.json (or the registered model it copies) for a path.
    if entry is not None:
        config, states = load_checkpoint(folder, entry.sha256, f"model '{entry.name}'")
    else:
        config, states = load_checkpoint(folder)
    source = entry.name if entry else str(folder)
    if config.family == "motion":
        return MotionPipeline.from_states(config, states, source)
    return MoDiffPipeline.from_states(config, states, source)
