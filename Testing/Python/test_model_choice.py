"""The model for an input (issue 13 item 4): --kind, the modality guess and its message, time axes."""

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from MoDiffLib import InputError
from MoDiffLib.io import write_volume
from MoDiffLib.model_choice import check_spatial_axes, choose_kind
from MoDiffLib.phantom.case import make_phantom
from MoDiffLib.volume import Volume


def phantom_volume(kind: str) -> Volume:
    case = make_phantom(kind, num_frames=2, shape_ijk=(40, 40, 20) if kind == "lung" else (40, 40, 10))
    return Volume(case.frames.frames[0], case.frames.geometry)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    return {kind: write_volume(phantom_volume(kind), folder / f"{kind}.nrrd") for kind in ("lung", "cardiac")}


def modiff(*args):
    return subprocess.run([sys.executable, "-m", "MoDiffLib", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def test_guess_from_intensities_and_kind_override():
    ct, mr = phantom_volume("lung"), phantom_volume("cardiac")
    assert (choose_kind(ct).kind, choose_kind(ct).modality, choose_kind(ct).guessed) == ("lung", "CT", True)
    assert (choose_kind(mr).kind, choose_kind(mr).modality) == ("cardiac", "MR")
    assert choose_kind(ct, "mr").kind == "cardiac" and not choose_kind(ct, "mr").guessed
    assert choose_kind(mr, "lung").modality == "CT"
    with pytest.raises(InputError, match="--kind must be one of"):
        choose_kind(ct, "brain")


@pytest.mark.parametrize("kind, model, other", [("lung", "modiff-lung-motion", "mr"),
                                                ("cardiac", "modiff-cardiac-motion", "ct")])
def test_cli_picks_the_model_of_the_modality_and_says_so(tmp_path, inputs, kind, model, other):
    r = modiff("generate", inputs[kind], "--frames", 3, "--out", tmp_path / "c.seq.nrrd", "--progress", "none")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"modiff: using model '{model}'") and f"--kind {other}" in lines[0], r.stderr
    assert f"(model {model}," in lines[-1]


def test_cli_kind_overrides_the_guess_silently(tmp_path, inputs):
    r = modiff("generate", inputs["cardiac"], "--kind", "cardiac", "--frames", 3, "--out", tmp_path / "c.seq.nrrd",
               "--progress", "none")
    assert r.returncode == 0, r.stderr
    assert "using model" not in r.stderr and "(model modiff-cardiac-motion," in r.stderr
    # --kind wins over the guess: a CT given to the MR model is then refused by the model's own check
    r = modiff("generate", inputs["lung"], "--kind", "mr", "--frames", 3, "--out", tmp_path / "d.seq.nrrd",
               "--progress", "none")
    one_line_error(r, "modiff-cardiac-motion", "expects MR")


def one_line_error(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("modiff: error:"), r.stderr
    assert all(w in lines[0] for w in words), r.stderr


def test_cli_refuses_kind_with_model(tmp_path, inputs):
    r = modiff("generate", inputs["lung"], "--kind", "ct", "--model", "modiff-lung-motion", "--frames", 3,
               "--out", tmp_path / "c.seq.nrrd")
    one_line_error(r, "either --kind or --model")


def test_3d_files_with_a_time_axis_are_refused(tmp_path):
    nrrd = tmp_path / "cine2d.nrrd"
    nrrd.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 5\nkinds: domain domain time\n"
                     b"encoding: raw\n\n" + bytes(8 * 8 * 5 * 2))
    with pytest.raises(InputError, match=r"axis 2 is time \(kind 'time'"):
        check_spatial_axes(nrrd)
    image = nib.Nifti1Image(np.zeros((8, 8, 5), np.int16), np.eye(4))
    image.header.set_xyzt_units(xyz="unknown", t="sec")
    nib.save(image, tmp_path / "cine2d.nii")
    with pytest.raises(InputError, match=r"unit of time \(sec\) and no unit of length"):
        check_spatial_axes(tmp_path / "cine2d.nii")
    image.header.set_xyzt_units(xyz="mm", t="sec")  # what ITK and Slicer write for any 3D volume
    nib.save(image, tmp_path / "volume.nii")
    check_spatial_axes(tmp_path / "volume.nii")
    r = modiff("generate", nrrd, "--frames", 3, "--out", tmp_path / "c.seq.nrrd")
    one_line_error(r, "axis 2 is time")
