"""The methods ``modiff evaluate`` compares, in report order, and how a ``--baselines`` list is read."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class MethodInfo:
    """One compared method.

    Attributes:
        name: the name used on the command line and in the report.
        privileged: it is given more than the one input volume (true frames of the cine).
        uses_model: it runs the MoDiff networks.
        description: one sentence for the report.
        given: which true frames a privileged method is given (:func:`given_frames`): ``key`` (the
            key frame) or ``partial`` (:data:`PARTIAL_SHARES` of the cycle).
    """

    name: str
    privileged: bool
    uses_model: bool
    description: str
    given: str = ""


METHOD_INFO: dict[str, MethodInfo] = {m.name: m for m in (
    MethodInfo("static", False, False, "every frame is frame 0 (no motion)"),
    MethodInfo("mean-motion", False, False,
               "mean ground-truth motion of training phantoms in scanner coordinates (per voxel of the phantom grid), "
               "at their mean strength, warped onto the input"),
    MethodInfo("mean-motion+amplitude", False, False,
               "the same scanner-coordinate mean motion at the case's true motion strength"),
    MethodInfo("mean-motion-aligned", False, True,
               "the motion model's population motion on the input's anatomy grid (the mean motion mapped to this "
               "anatomy by its lung / foreground box), at the population mean strength; no network"),
    MethodInfo("mean-motion-aligned+amplitude", False, True,
               "the same anatomy-aligned population motion at the case's true motion strength"),
    MethodInfo("mean-motion-aligned+trace", False, True,
               "the population's regression on the case's true breathing trace (diaphragm descent per frame; lung), "
               "on the input's anatomy grid; no network"),
    MethodInfo("modiff", False, True,
               "MoDiff, unconditioned (motion models: the mean of K samples, the default point estimate)"),
    MethodInfo("modiff-single", False, True, "MoDiff, one sample (motion models)"),
    MethodInfo("modiff+amplitude", False, True, "MoDiff conditioned on the case's true motion strength"),
    MethodInfo("modiff+trace", False, True,
               "MoDiff given the case's true breathing trace (diaphragm descent per frame; lung); with the residual "
               "off (the bundled default) this is the population's trace regression, as mean-motion-aligned+trace"),
    MethodInfo("modiff-paper", False, True,
               "the paper's variant (VAE latents, intensity differences, I2V: the --paper-model), unconditioned"),
    MethodInfo("modiff-paper+amplitude", False, True, "the paper's variant conditioned on the true motion strength"),
    MethodInfo("linear-interp", True, False,
               "intensity interpolation between frame 0 and the TRUE key frame (largest motion), up and back "
               "down the cycle", "key"),
    MethodInfo("registration-interp", True, False,
               "frame 0 warped by fractions of the registered displacement frame 0 -> TRUE key frame "
               "(DDM's two-frame setting), up and back down the cycle", "key"),
    MethodInfo("modiff-two-frame", True, True,
               "MoDiff given the TRUE key frame as registration-interp is (modiff generate --known): the key "
               "frame's registered motion spread over the cycle in the motion model's time course (motion models)",
               "key"),
    MethodInfo("modiff-partial", True, True,
               "MoDiff given TRUE frames at 30 % and 60 % of the cycle (frames 3 and 6 of 10; modiff generate "
               "--known), scored on the others (motion models)", "partial"),
)}

#: Where ``modiff-partial``'s given frames sit in the cycle (frames 3 and 6 of 10).
PARTIAL_SHARES = (0.3, 0.6)


def given_frames(name: str, num_frames: int, key: int | None) -> list[int]:
    """The true frames (besides frame 0) method ``name`` is given and not scored on, for a cine of
    ``num_frames`` whose key frame is ``key``."""
    rule = METHOD_INFO[name].given
    if rule == "key":
        return [] if key is None else [int(key)]
    if rule == "partial":
        return sorted({min(max(int(round(s * num_frames)), 1), num_frames - 1) for s in PARTIAL_SHARES})
    return []

#: Every method, in report order.
METHODS: tuple[str, ...] = tuple(METHOD_INFO)


def parse_methods(text: str | None) -> list[str]:
    """The methods of a comma-separated ``--baselines`` list (``None`` or ``all``: every method), in report order.

    Raises:
        InputError: an unknown name, or an empty list.
    """
    if text is None or text.strip().lower() == "all":
        return list(METHODS)
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise InputError(f"--baselines names no method; choose from {', '.join(METHODS)} (or all)")
    unknown = [n for n in names if n not in METHOD_INFO]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(repr(n) for n in unknown)} in --baselines; "
                         f"choose from {', '.join(METHODS)} (or all)")
    return [m for m in METHODS if m in names]
