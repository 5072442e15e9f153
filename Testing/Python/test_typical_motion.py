"""The typical motion: what a motion model shows when no strength is given.

Checked as a user relies on it: it is the point nearest to the training cases on average (the
geometric median, not the mean), it replaces the line only when no strength is given, it survives
the checkpoint, and the refit command adds it to a model without changing anything else.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.motion.population import PopulationMotion, frame_phases
from MoDiffLib.motion_pipeline import population_from_tensors, population_tensors
from MoDiffLib.pipelines import load_pipeline

from training.typical_motion import geometric_median

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (4, 3, 2, 3, 4)  # (P, 3, K, J, I)


def population(typical=None) -> PopulationMotion:
    rng = np.random.default_rng(1)
    return PopulationMotion(rng.normal(size=SHAPE), rng.normal(size=SHAPE), 20.0, 5.0, 40, None, None, typical)


def test_geometric_median_is_nearer_to_the_cases_than_the_mean():
    rng = np.random.default_rng(0)
    # skewed cases: most move little, a few a lot (an inhale that is long in some cases only)
    size = np.where(rng.random(200) < 0.8, 1.0, 10.0)
    fields = (size[:, None, None, None, None, None] * np.ones((200, 2, 3, 1, 2, 2))).astype(np.float32)
    fields += rng.normal(scale=0.05, size=fields.shape).astype(np.float32)
    median, mean = geometric_median(fields), fields.mean(axis=0)

    def mean_distance(point):
        return np.sqrt(((fields - point[None]) ** 2).sum(axis=2)).mean()

    assert mean_distance(median) < 0.8 * mean_distance(mean)
    np.testing.assert_allclose(median, 1.0, atol=0.1)  # at the bulk of the cases, where the mean is not
    assert float(mean.mean()) > 2.0  # pulled towards the few large cases


def test_typical_motion_is_used_only_without_a_strength():
    typical = np.full(SHAPE, 0.5, dtype=np.float32)
    plain, with_typical = population(), population(typical)
    phases = frame_phases(4)
    np.testing.assert_allclose(with_typical.fields(phases), 0.5)
    np.testing.assert_allclose(with_typical.fields(phases, 25.0), plain.fields(phases, 25.0))
    # the raw line, as a learned residual was trained on
    np.testing.assert_allclose(with_typical.fields(phases, calibrated=False), plain.fields(phases))


def test_typical_motion_of_a_wrong_shape_or_not_finite_is_refused():
    with pytest.raises(InputError, match="typical motion"):
        population(np.zeros((4, 3, 2, 3, 5)))
    bad = np.zeros(SHAPE)
    bad[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="typical motion"):
        population(bad)


def test_typical_motion_survives_the_checkpoint():
    rng = np.random.default_rng(2)
    typical = rng.normal(size=SHAPE).astype(np.float32)
    back = population_from_tensors(population_tensors(population(typical)), "test")
    np.testing.assert_allclose(back.typical, typical, atol=0.01)
    assert population_from_tensors(population_tensors(population()), "test").typical is None


def test_refit_adds_the_typical_motion_and_keeps_the_line(tmp_path):
    out = tmp_path / "model"
    result = subprocess.run([sys.executable, "-m", "training.motion_refit", "--model", "modiff-lung-motion",
                             "--out", str(out), "--cases", "10", "--typical-cases", "10", "--workers", "1",
                             "--fit", "typical"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    before, after = load_pipeline("modiff-lung-motion").population, load_pipeline(str(out)).population
    assert after.typical is not None and after.typical.shape == after.b0.shape
    np.testing.assert_allclose(after.b1, before.b1, atol=1e-3)  # re-stored in low rank, within 0.01 mm at 20 mm
    phases = frame_phases(10)
    # no strength: the typical motion; it moves like the population (same direction), not like nothing
    shown, line = after.fields(phases), before.fields(phases)
    assert np.abs(shown).max() > 1.0
    assert float((shown * line).sum()) > 0.8 * float(np.sqrt((shown ** 2).sum() * (line ** 2).sum()))
