"""The population's strength map: a requested EF moves the LV by that EF.

The bundled cardiac model's population line is used as it is (no training here); the map is
fitted by the real fitter on a few training phantoms, and what a user would notice is checked:
the motion at a requested EF then gives the LV (through its Jacobian, as the evaluation
measures) an EF close to what the true motion gives, where the unmapped line falls short.
"""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from MoDiffLib import InputError
from MoDiffLib.motion.population import PopulationMotion, frame_phases
from MoDiffLib.motion_pipeline import population_from_tensors, population_tensors
from MoDiffLib.pipelines import load_pipeline

from training.strength_calibration import case_strength, fit_strength_map

ROOT = Path(__file__).resolve().parents[2]


def small_population(strength_map=None) -> PopulationMotion:
    rng = np.random.default_rng(0)
    b0 = rng.normal(size=(4, 3, 2, 3, 4)).astype(np.float32)
    b1 = rng.normal(size=(4, 3, 2, 3, 4)).astype(np.float32)
    return PopulationMotion(b0, b1, 45.0, 10.0, 50, None, strength_map)


def test_strength_map_moves_the_strength_along_the_line():
    plain, mapped = small_population(), small_population((-2.0, 1.2))
    phases = frame_phases(4)
    np.testing.assert_allclose(mapped.fields(phases, 50.0), plain.fields(phases, -2.0 + 1.2 * 50.0), rtol=1e-6)
    np.testing.assert_allclose(mapped.fields(phases, 50.0, calibrated=False), plain.fields(phases, 50.0))
    # no strength given: the line at the population mean itself (the map is for requested strengths)
    np.testing.assert_allclose(mapped.fields(phases), plain.fields(phases, 45.0), rtol=1e-6)
    assert mapped.line_strength(None) == pytest.approx(45.0)
    assert mapped.line_strength(50.0) == pytest.approx(58.0)


@pytest.mark.parametrize("bad", [(0.0, 0.0), (1.0, -1.0), (float("nan"), 1.0)])
def test_a_strength_map_that_cannot_be_right_is_refused(bad):
    with pytest.raises(InputError, match="strength map"):
        small_population(bad)


def test_strength_map_survives_the_checkpoint():
    back = population_from_tensors(population_tensors(small_population((3.5, 1.1))), "test")
    assert back.strength_map == pytest.approx((3.5, 1.1))
    assert population_from_tensors(population_tensors(small_population()), "test").strength_map is None


@pytest.fixture(scope="module")
def cardiac():
    pipe = load_pipeline("modiff-cardiac-motion")
    pipe = copy.copy(pipe)
    pipe.population = copy.copy(pipe.population)
    pipe.population.strength_map = None  # the line itself, whatever the bundled model carries
    return pipe


def test_fitted_map_makes_the_requested_ef_the_ef_of_the_motion(cardiac):
    seeds = list(range(10))
    (offset, slope), summary = fit_strength_map(cardiac, seeds, 1, lambda msg: None, [(32, 32, 16)])
    assert summary["cases"] == 10
    without, with_map = summary["ef_error_vs_true_motion"]["without_map"], summary["ef_error_vs_true_motion"]["with_map"]
    # the unmapped line moves the LV by too little: a clear negative bias that the map removes
    assert without["bias"] < -2.0
    assert abs(with_map["bias"]) < 1.0
    assert with_map["mean_abs"] < without["mean_abs"]
    # the map asks for more of the line than requested at typical EFs
    assert offset + slope * 50.0 > 50.0
    # one case measured directly agrees with the summary's model of it
    c = case_strength((cardiac, 0, (32, 32, 16)))
    assert c.population_ef(c.line_strength) == pytest.approx(c.ef_true_motion)


def test_fit_refuses_a_lung_model():
    with pytest.raises(InputError, match="cardiac"):
        fit_strength_map(load_pipeline("modiff-lung-motion"), list(range(10)), 1, print)


def test_refit_command_writes_a_model_with_its_map(tmp_path):
    out = tmp_path / "model"
    result = subprocess.run([sys.executable, "-m", "training.motion_refit", "--model", "modiff-cardiac-motion",
                             "--out", str(out), "--cases", "10", "--strength-cases", "10", "--workers", "1",
                             "--fit", "strength", "--phantom-shape", "32,32,16"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    pipe = load_pipeline(str(out))
    assert pipe.population.strength_map is not None
    assert pipe.config.training["refit"]["strength_map"]["cases"] == 10
    assert "strength_map" in pipe.config.training["refit"]["fitted"]
    assert torch.is_tensor(population_tensors(pipe.population)["strength_map"])
