"""Evaluation of generated cines against ground truth, and the baselines they are compared with.

``modiff evaluate`` (:mod:`.run`) scores MoDiff and its baselines on held-out 4D cases; one module
per job:

* :mod:`.methods` -- the compared methods (names, privileged input, descriptions);
* :mod:`.baselines` -- static, mean training motion (with and without the true strength) and the
  two-frame interpolations given the true key frame;
* :mod:`.landmarks` -- landmark error through the motion estimated on a cine;
* :mod:`.physiology` -- lung volume, diaphragm position, LV volume and EF curves;
* :mod:`.perceptual` -- why LPIPS and FVD are not reported;
* :mod:`.case` -- :func:`evaluate_case`: every method on one case (also for ``modiff demo``);
* :mod:`.report` -- aggregation, ``report.json``, ``report.md`` and plots;
* :mod:`.run` -- input checks, the loop over cases and the atomic output folder.
"""

import importlib

#: Public name -> defining module (imported on first use, so ``modiff --help`` stays fast).
_EXPORTS = {
    "MeanMotion": "baselines", "cycle_fractions": "baselines", "key_frame": "baselines",
    "evaluate_case": "case", "metric_keys": "case",
    "METHOD_INFO": "methods", "METHODS": "methods", "parse_methods": "methods",
    "execute": "run", "prepare": "run", "run_evaluation": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
