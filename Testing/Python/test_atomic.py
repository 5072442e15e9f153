"""Outputs are all-or-nothing: no half-written file or folder survives an error."""

import os

import pytest

from MoDiffLib.atomic import atomic_dir, atomic_file, split_suffix
from MoDiffLib.errors import OutputError


def test_compound_suffixes_are_kept_for_format_dispatch():
    assert split_suffix("/a/cine.seq.nrrd") == ("cine", ".seq.nrrd")
    assert split_suffix("x.NII.GZ") == ("x", ".NII.GZ")
    assert split_suffix("x.nrrd") == ("x", ".nrrd")


def test_atomic_file_renames_only_on_success(tmp_path):
    target = tmp_path / "out.seq.nrrd"
    with atomic_file(target) as tmp:
        assert tmp.name.endswith(".seq.nrrd") and tmp.parent == tmp_path
        tmp.write_text("complete")
    assert target.read_text() == "complete"
    assert os.listdir(tmp_path) == ["out.seq.nrrd"]


def test_atomic_file_failure_leaves_nothing_and_keeps_existing(tmp_path):
    target = tmp_path / "out.nrrd"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.nrrd"]


def test_existing_or_unwritable_outputs_are_refused(tmp_path):
    (tmp_path / "exists.nrrd").write_text("x")
    with pytest.raises(OutputError, match="already exists"):
        with atomic_file(tmp_path / "exists.nrrd"):
            pass
    with pytest.raises(OutputError, match="does not exist"):
        with atomic_file(tmp_path / "missing" / "a.nrrd"):
            pass


def test_atomic_dir_replaces_whole_folder_only_when_complete(tmp_path):
    out = tmp_path / "case"
    with atomic_dir(out) as d:
        (d / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(KeyError):
        with atomic_dir(out, overwrite=True) as d:
            (d / "b.txt").write_text("2")
            raise KeyError("cancelled")
    assert sorted(os.listdir(out)) == ["a.txt"]
    assert sorted(os.listdir(tmp_path)) == ["case"]
