"""How well can ANY method do in the two-frame mode on the held-out lung phantoms?

The phantom's breathing is ``u(p, phase) = A [s(phase) g_si(p) + s_lag(phase) (ap, lr) g_ap(p)]``
(MoDiffLib/phantom/lung.py) with the amplitude A, the AP/LR ratios and the time course (the
exponent n in 1..3, the inhale fraction, the hysteresis lag) drawn independently of the anatomy.
Two frames (frame 0 and the key frame k) fix the field at k, but not the time course between them.
This script scores, on the 20 held-out test phantoms (seeds 200000-200019, 10 frames) and in the
evaluation's landmark metric (mean over frames 1..9 without k of the mean landmark distance), two
predictors that are given MORE than a two-frame method has (the exact key-frame displacement of
every landmark, no registration error):

1. ``linear``: u_t = c(t, k, axis) u_k with the best coefficients (least squares) over 300
   training phantoms;
2. ``posterior``: the anatomy known exactly, the key field's three products (A s_k,
   A ap s_lag_k, A lr s_lag_k) known exactly, the rest drawn from the phantom's priors and
   weighted by how well it explains them: the posterior mean motion of every frame.

Run from the repository root: ``.venv/bin/python docs/evaluation/known-frames-lung/two_frame_floor.py``
(about 6 minutes on 2 cores). The numbers it printed are in the README (Two-frame and partial).
"""

from __future__ import annotations

import numpy as np

from MoDiffLib.datasets.phantom import PHANTOM_SEEDS
from MoDiffLib.phantom import waveforms
from MoDiffLib.phantom.lung import DRAWN_AMPLITUDE_RANGE, LungModel

FRAMES = 10
PHASES = np.arange(FRAMES) / FRAMES
TEST = list(PHANTOM_SEEDS["test"])[:20]
TRAIN = list(PHANTOM_SEEDS["train"])[:300]
AP_RANGE, LR_RANGE = (0.3, 0.6), (0.08, 0.18)  # the phantom's priors (LungModel.__init__)


def landmark_motion(model: LungModel) -> tuple[np.ndarray, np.ndarray]:
    """Reference landmarks (L, 3) and their displacements at every frame (T, L, 3)."""
    refs = np.array([np.asarray(p, np.float32) for p in model.landmarks_reference().values()], np.float32)
    return refs, np.stack([model.displacement(refs, ph) for ph in PHASES]).astype(float)


def key_frame(u: np.ndarray) -> int:
    """The frame of largest mean landmark displacement (the evaluation uses the whole field)."""
    size = [float(np.mean(np.linalg.norm(u[t], axis=-1))) for t in range(FRAMES)]
    size[0] = -np.inf
    return int(np.argmax(size))


def score(prediction: np.ndarray, u: np.ndarray, k: int) -> float:
    return float(np.mean([np.mean(np.linalg.norm(prediction[t] - u[t], axis=-1))
                          for t in range(1, FRAMES) if t != k]))


def linear_predictor() -> list[float]:
    num: dict = {}
    den: dict = {}
    for seed in TRAIN:
        _, u = landmark_motion(LungModel(seed))
        k = key_frame(u)
        for t in range(FRAMES):
            for axis in range(3):
                num[t, k, axis] = num.get((t, k, axis), 0.0) + float(np.sum(u[t, :, axis] * u[k, :, axis]))
                den[t, k, axis] = den.get((t, k, axis), 0.0) + float(np.sum(u[k, :, axis] ** 2))
    out = []
    for seed in TEST:
        _, u = landmark_motion(LungModel(seed))
        k = key_frame(u)
        c = np.array([[num.get((t, k, a), 0.0) / den[t, k, a] if den.get((t, k, a), 0.0) > 0 else 0.0
                       for a in range(3)] for t in range(FRAMES)])
        out.append(score(c[:, None, :] * u[k][None], u, k))
    return out


def posterior_predictor(draws: int = 6000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    n = rng.integers(1, 4, draws)
    fraction = rng.uniform(0.35, 0.5, draws)
    lag = rng.uniform(0.04, 0.10, draws)
    s = np.stack([waveforms.breathing(PHASES, a, b) for a, b in zip(n, fraction)])
    s_lag = np.stack([waveforms.breathing_lagged(PHASES, a, b, c) for a, b, c in zip(n, fraction, lag)])
    out = []
    for case in TEST:
        model = LungModel(case)
        refs, u = landmark_motion(model)
        k = key_frame(u)
        sk, slk = model.curves(PHASES[k])
        q1, q2, q3 = model.amplitude * sk, model.amplitude * model.ap_ratio * slk, model.amplitude * model.lr_ratio * slk
        amplitude = q1 / s[:, k]
        ap, lr = q2 / (amplitude * s_lag[:, k]), q3 / (amplitude * s_lag[:, k])
        ok = ((amplitude >= DRAWN_AMPLITUDE_RANGE[0]) & (amplitude <= DRAWN_AMPLITUDE_RANGE[1])
              & (ap >= AP_RANGE[0]) & (ap <= AP_RANGE[1]) & (lr >= LR_RANGE[0]) & (lr <= LR_RANGE[1]))
        # uniform priors: the density of the observed products is 1 / |d(q1, q2, q3) / d(A, ap, lr)|
        weight = np.where(ok, 1.0 / (s[:, k] * (amplitude * s_lag[:, k]) ** 2), 0.0)
        total = np.zeros_like(u)
        for i in np.flatnonzero(ok):
            model.n, model.inhale_fraction, model.hysteresis_lag = int(n[i]), float(fraction[i]), float(lag[i])
            model.amplitude, model.ap_ratio, model.lr_ratio = float(amplitude[i]), float(ap[i]), float(lr[i])
            total += weight[i] * np.stack([model.displacement(refs, ph) for ph in PHASES])
        out.append(score(total / weight.sum(), u, k))
    return out


if __name__ == "__main__":
    for name, errors in (("linear", linear_predictor()), ("posterior", posterior_predictor())):
        print(f"{name}: two-frame landmark error {np.mean(errors):.2f} +- {np.std(errors):.2f} mm "
              f"over {len(errors)} held-out lung phantoms (exact key-frame landmarks given)")
