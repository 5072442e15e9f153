"""The training-input summary of a motion model (``MoDiffLib.motion.typicality``) and its warnings."""

import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.motion.typicality import Typicality


@pytest.fixture(scope="module")
def summary():
    rng = np.random.default_rng(0)
    pattern = np.linspace(-1.0, 1.0, 2 * 4 * 5 * 6).reshape(2, 4, 5, 6)
    prompts = pattern[None] + 0.1 * rng.standard_normal((50, 2, 4, 5, 6))
    boxes = np.array([300.0, 200.0, 250.0]) + 20.0 * rng.standard_normal((50, 3))
    return Typicality.fit(prompts, boxes), pattern


def test_training_like_inputs_pass_and_others_are_named(summary):
    typ, pattern = summary
    ok = typ.assess(pattern, (300.0, 200.0, 250.0))
    assert ok["warnings"] == [] and ok["distance"] < typ.distances[2]
    # another image altogether (inverted contrast) in a box of the right size
    odd = typ.assess(-pattern, (300.0, 200.0, 250.0))
    assert len(odd["warnings"]) == 1 and "unlike the model's training inputs" in odd["warnings"][0]
    # the right image in a box a third of the size (a head instead of a chest): the box is named
    small = typ.assess(pattern, (100.0, 200.0, 80.0))
    assert len(small["warnings"]) == 1 and "along i, k" in small["warnings"][0]


def test_bad_summaries_and_prompts_are_refused(summary):
    typ, pattern = summary
    with pytest.raises(InputError, match="does not match"):
        typ.distance(pattern[:1])
    with pytest.raises(InputError, match="at least two prompts"):
        Typicality.fit(pattern[None], np.ones((1, 3)))
