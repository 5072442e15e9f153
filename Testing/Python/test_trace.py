"""Breathing traces (MoDiffLib.trace): the file format, resampling, validation, and the phantom's true trace."""

import functools

import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.errors import OutputError
from MoDiffLib.phantom import make_phantom, waveforms
from MoDiffLib.phantom.lung import TRACE_LANDMARK, LungModel
from MoDiffLib.trace import BreathingTrace, parse_trace_text, read_trace, write_trace

TINY_LUNG = (32, 32, 16)
TINY_CARDIAC = (32, 32, 8)


# -- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "-150\n-155.5\n-160\n",
    "# diaphragm S per frame\ndiaphragm_s_mm\n-150\n\n-155.5\n  # a comment\n-160\n",
    "\ufeffvalue\r\n-150\r\n-155.5\r\n-160\r\n",
])
def test_one_column_is_one_value_per_frame(text):
    trace = parse_trace_text(text, 3)
    np.testing.assert_array_equal(trace.values_mm, [-150.0, -155.5, -160.0])
    np.testing.assert_array_equal(trace.descent_mm(), [0.0, 5.5, 10.0])
    assert trace.unit == "mm" and trace.num_frames == 3


@pytest.mark.parametrize("text", ["0,-150\n0.5,-152\n1.5,-160\n", "time_s,value\n0,-150\n0.5,-152\n1.5,-160\n"])
def test_two_columns_with_one_sample_per_frame_are_the_frames(text):
    np.testing.assert_array_equal(parse_trace_text(text, 3).values_mm, [-150.0, -152.0, -160.0])


def sine(t, period=4.0):
    return -150.0 - 10.0 * np.sin(2 * np.pi * np.asarray(t) / period)


def csv(times, values, header=True):
    rows = [f"{float(t)!r},{float(v)!r}" for t, v in zip(times, values)]
    return "\n".join((["time_s,value"] if header else []) + rows) + "\n"


def test_resampling_a_sine_linearly_inside_the_samples():
    times = np.arange(0.0, 4.0001, 0.05)
    text = csv(times, sine(times))
    at = np.linspace(0.3, 3.7, 9)
    # linear interpolation error <= h^2/8 max|f''| = 0.05^2 / 8 * 10 (2 pi / 4)^2 = 0.008 mm
    np.testing.assert_allclose(parse_trace_text(text, 9, at).values_mm, sine(at), atol=0.008)
    np.testing.assert_allclose(parse_trace_text(text, 3, times[[0, 10, 80]]).values_mm, sine(times[[0, 10, 80]]),
                               atol=1e-12)  # at the samples: exact
    # without frame times the frames evenly span the samples
    np.testing.assert_allclose(parse_trace_text(text, 5).values_mm, sine(np.linspace(0, 4, 5)), atol=1e-9)
    with pytest.raises(InputError, match=r"frame time 4.5 s lies outside the trace's times 0..4 s"):
        parse_trace_text(text, 2, [0.0, 4.5])


@pytest.mark.parametrize("how", [{"period_s": 4.0}, {"cyclic": True}])
def test_resampling_a_whole_cycle_wraps_around(how):
    times = np.arange(0.0, 3.95, 0.1)  # one cycle of 4 s: 0 .. 3.9, the last step closes it
    text = csv(times, sine(times), header=False)
    at = np.array([0.05, 1.23, 3.95, 4.0, 5.3, -0.7])  # 3.95: between the last sample and the first again
    # h^2/8 max|f''| = 0.1^2 / 8 * 10 (2 pi / 4)^2 = 0.031 mm
    np.testing.assert_allclose(parse_trace_text(text, 6, at, **how).values_mm, sine(at), atol=0.031)
    even = np.arange(8) * 4.0 / 8  # no frame times: N frames over the cycle from the first sample
    np.testing.assert_allclose(parse_trace_text(text, 8, **how).values_mm, sine(even), atol=1e-9)  # on samples


def test_a_cycle_that_includes_its_end_point_and_a_given_period():
    times = np.linspace(0.0, 4.0, 41)  # 0 .. 4 s inclusive; the period says it is one 4 s cycle
    text = csv(times, sine(times))
    np.testing.assert_allclose(parse_trace_text(text, 3, [1.0, 4.5, 7.9], period_s=4.0).values_mm,
                               sine([1.0, 4.5, 7.9]), atol=0.031)
    with pytest.raises(InputError, match=r"the samples span 4 s, more than the 3 s cycle"):
        parse_trace_text(text, 3, [0.0, 1.0, 2.0], period_s=3.0)


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, frames, kwargs, message", [
    ("", 3, {}, r"the breathing trace is empty \(no values\)"),
    ("# nothing\n\n", 3, {}, r"empty"),
    ("value\n", 3, {}, r"empty"),
    ("-150\n-151\nabc\n", 3, {}, r"line 3, column 1: 'abc' is not a number"),
    ("0,-150\n1,\n", 2, {}, r"line 2, column 2: empty cell"),
    ("-150\nnan\n-152\n", 3, {}, r"line 2, column 1: nan is not a finite number"),
    ("-150\n-151\ninf\n", 3, {}, r"line 3, column 1: inf is not a finite number"),
    ("-150\n-151\n-152\n", 4, {}, r"3 values for 4 frames"),
    ("-150\n-151\n-152\n", 2, {}, r"3 values for 2 frames"),
    ("0,-150\n1,-151\n1,-152\n", 2, {}, r"times must increase, but line 3 \(1 s\) does not come after line 2 \(1 s\)"),
    ("0,-150,1\n1,-151,2\n", 2, {}, r"3 value columns; a breathing trace has one .* or two \(time_s,value\)"),
    ("0,-150\n1\n", 2, {}, r"line 2 has 1 columns, line 1 has 2"),
    ("a,b,c\n0,-150\n", 1, {}, r"the header \(line 1\) names 3 columns, the values have 2"),
    ("frame,v\n0,-150\n2,-151\n", 2, {}, r"line 3: the frame column must count 0, 1, 2, ... in order, found 2"),
    ("-150\n-220\n", 2, {}, r"descent spans 70.0 mm, above the plausible 60 mm"),
    ("0,-150\n1,-151\n", 3, {"frame_times_s": [0, 1]}, r"2 frame times for 3 frames"),
    ("0,-150\n1,-151\n", 3, {"period_s": -1}, r"period_s must be a positive number"),
    ("0,-150\n", 3, {}, r"one sample cannot be resampled to 3 frames"),
])
def test_bad_traces_raise_one_line_input_errors_naming_the_problem(text, frames, kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        parse_trace_text(text, frames, source="t.csv", **kwargs)
    assert str(err.value).startswith("t.csv: ") and "\n" not in str(err.value)


def test_unreadable_files_name_the_path(tmp_path):
    with pytest.raises(InputError, match=r"cannot read breathing trace .*missing.csv"):
        read_trace(tmp_path / "missing.csv", 3)
    with pytest.raises(InputError, match=r"cannot read breathing trace .*: Is a directory"):
        read_trace(tmp_path, 3)
    (tmp_path / "latin1.csv").write_bytes("d\xe9scente\n1\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.csv is not UTF-8 text"):
        read_trace(tmp_path / "latin1.csv", 1)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match=r"empty.csv: the breathing trace is empty"):
        read_trace(tmp_path / "empty.csv", 3)


def test_trace_objects_validate_themselves():
    with pytest.raises(InputError, match=r"one value per frame, got shape \(2, 2\)"):
        BreathingTrace(np.zeros((2, 2)))
    with pytest.raises(InputError, match=r"frame 1 of the breathing trace is nan"):
        BreathingTrace([0.0, np.nan])
    with pytest.raises(InputError, match="in mm"):
        BreathingTrace([0.0, 1.0], unit="cm")
    trace = BreathingTrace([-100.0, -112.5, -101.0], source="x")
    np.testing.assert_array_equal(trace.descent_mm(), [0.0, 12.5, 1.0])
    assert not trace.values_mm.flags.writeable


# -- writing ------------------------------------------------------------------------------------
def test_write_then_read_gives_the_same_values(tmp_path):
    values = [-150.123456789, -161.25, -155.0, -150.5]
    path = write_trace(tmp_path / "trace.csv", values, [0.0, 1.1, 2.2, 3.3])
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[1] == "frame,time_s,diaphragm_s_mm" and text.splitlines()[2].startswith("0,0.0,")
    np.testing.assert_array_equal(read_trace(path, 4).values_mm, values)
    np.testing.assert_array_equal(read_trace(write_trace(tmp_path / "plain.csv", values), 4).values_mm, values)
    with pytest.raises(OutputError, match="already exists"):
        write_trace(path, values)
    write_trace(path, values[::-1], overwrite=True)
    np.testing.assert_array_equal(read_trace(path, 4).values_mm, values[::-1])
    with pytest.raises(InputError, match="finite and increasing"):
        write_trace(tmp_path / "bad.csv", values, [0.0, 2.0, 1.0, 3.0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.csv", "trace.csv"]  # no partial files


# -- the phantom's true trace -------------------------------------------------------------------
@pytest.fixture(scope="module")
def lung40():
    return make_phantom("lung", num_frames=40, seed=3, shape_ijk=TINY_LUNG)


def test_phantom_trace_descent_is_the_diaphragm_excursion(lung40):
    p = lung40.params
    trace = np.asarray(p["trace_mm"])
    assert trace.shape == (40,) and "diaphragm" in p["trace_definition"]
    descent = BreathingTrace(trace).descent_mm()
    assert descent[0] == 0.0
    s = waveforms.breathing(np.asarray(p["frame_phases"]), p["waveform_n"], p["inhale_fraction"])
    np.testing.assert_allclose(descent, p["amplitude"] * s, atol=0.05)  # -A s(phase) at the dome
    assert descent.max() == pytest.approx(p["amplitude"], abs=0.5)  # peak inhale (a frame within 1/80 cycle)
    np.testing.assert_allclose(trace, lung40.landmarks[TRACE_LANDMARK][:, 2], atol=1e-3)
    np.testing.assert_array_equal(lung40.trace_mm, trace)


@pytest.mark.parametrize("seed, amplitude", [(0, None), (5, 40.0), (200_001, 10.0)])
def test_trace_model_reaches_the_full_excursion_at_peak_inhale(seed, amplitude):
    model = LungModel(seed, amplitude)
    z = model.diaphragm_trace([0.0, model.inhale_fraction])
    assert z[0] - z[1] == pytest.approx(model.amplitude, abs=0.5)


def test_cardiac_phantoms_have_no_breathing_trace():
    case = make_phantom("cardiac", num_frames=3, seed=1, shape_ijk=TINY_CARDIAC)
    assert "trace_mm" not in case.params and case.trace_mm is None


def test_phantom_dataset_carries_the_trace():
    from MoDiffLib.datasets import PhantomDataset

    lung = PhantomDataset("lung", num_cases=1, num_frames=4, shape_ijk=TINY_LUNG)[0]
    np.testing.assert_array_equal(lung.trace_mm, lung.meta["params"]["trace_mm"])
    assert PhantomDataset("cardiac", num_cases=1, num_frames=3, shape_ijk=TINY_CARDIAC)[0].trace_mm is None


def test_case_records_check_the_trace_length():
    from MoDiffLib import Geometry, VolumeSequence
    from MoDiffLib.datasets import Case4D

    frames = VolumeSequence(np.zeros((3, 2, 3, 4), np.float32), Geometry((2, 3, 4)))
    assert Case4D("ok", frames, trace_mm=[1.0, 0.0, 1.0]).trace_mm.dtype == float
    with pytest.raises(InputError, match=r"breathing trace must be 3 finite values .* got shape \(2,\)"):
        Case4D("x", frames, trace_mm=[1.0, 0.0])


def test_phantom_command_writes_a_trace_that_reads_back(tmp_path, monkeypatch):
    import MoDiffLib.phantom
    from MoDiffLib import cli

    monkeypatch.setattr(MoDiffLib.phantom, "make_phantom", functools.partial(make_phantom, shape_ijk=TINY_LUNG))
    out = tmp_path / "case"
    assert cli.main(["phantom", "--kind", "lung", "--frames", "6", "--seed", "2", "--out", str(out)]) == 0
    case = make_phantom("lung", num_frames=6, seed=2, shape_ijk=TINY_LUNG)
    trace = read_trace(out / "trace.csv", 6)
    np.testing.assert_array_equal(trace.values_mm, case.params["trace_mm"])
    rows = [line.split(",") for line in (out / "trace.csv").read_text().splitlines()[2:]]
    np.testing.assert_allclose([float(r[1]) for r in rows], np.arange(6) * case.params["period_s"] / 6, atol=1e-6)
    cardiac = tmp_path / "heart"
    monkeypatch.setattr(MoDiffLib.phantom, "make_phantom", functools.partial(make_phantom, shape_ijk=TINY_CARDIAC))
    assert cli.main(["phantom", "--kind", "cardiac", "--frames", "3", "--out", str(cardiac)]) == 0
    assert not (cardiac / "trace.csv").exists()
