"""Load any released MoDiff model as the pipeline of its family.

``latent`` models (the paper's variant: VAE, intensity differences, I2V) run in
:class:`~MoDiffLib.pipeline.MoDiffPipeline`; ``motion`` models (displacement differences on an
anatomy grid, residual on the population motion) in :class:`~MoDiffLib.motion_pipeline.MotionPipeline`.
Both have the same ``generate`` signature for what they share, so callers need not care.
"""

from __future__ import annotations

from pathlib import Path

from .motion_pipeline import MotionPipeline
from .pipeline import MoDiffPipeline, load_model


def load_pipeline(name_or_path: str | Path | None = None, kind: str | None = None) -> MoDiffPipeline | MotionPipeline:
    """A registered model by name or a checkpoint folder (checksums verified once, see
    :func:`~MoDiffLib.pipeline.load_model`); ``None``: the default for ``kind``."""
    config, states, source = load_model(name_or_path, kind)
    if config.family == "motion":
        return MotionPipeline.from_states(config, states, source)
    return MoDiffPipeline.from_states(config, states, source)
