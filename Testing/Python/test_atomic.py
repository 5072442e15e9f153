"""Outputs are all-or-nothing: no half-written file or folder survives an error or a cancel, and no
writer silently replaces another's output."""

import os
import threading

import pytest

from MoDiffLib import atomic
from MoDiffLib.atomic import (
    TEMP_TAG_ENV,
    atomic_dir,
    atomic_file,
    atomic_outputs,
    cancel_on_signals,
    cancel_requested,
    check_output_path,
    remove_temporaries,
    request_cancel,
    split_suffix,
)
from MoDiffLib.errors import Cancelled, OutputError


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


# -- no clobbering: of two writers racing to one path, exactly one wins ------------------------------
@pytest.fixture(params=["renameat2", "fallback"])
def publish_path(request, monkeypatch):
    """Run a test with renameat2 (Linux) and with the portable fallback (hard link / mkdir)."""
    if request.param == "renameat2" and atomic._renameat2 is None:
        pytest.skip("renameat2 is not available here")
    if request.param == "fallback":
        monkeypatch.setattr(atomic, "_renameat2", None)
    return request.param


def race(target, writer, folder, n=2):
    """``n`` threads enter ``writer(target)`` together, write their own content (into ``who.txt``
    if the writer makes a ``folder``) and publish together."""
    barrier = threading.Barrier(n)
    outcomes = [None] * n

    def run(i):
        try:
            with writer(target) as tmp:
                if folder:
                    (tmp / "who.txt").write_text(f"writer {i}")
                else:
                    tmp.write_text(f"writer {i}")
                barrier.wait(timeout=10)  # both hold a complete temporary and both checked the path
            outcomes[i] = "ok"
        except OutputError as e:
            outcomes[i] = str(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcomes


@pytest.mark.parametrize("writer", [atomic_file, atomic_dir])
def test_two_writers_racing_to_one_path_exactly_one_wins(tmp_path, publish_path, writer):
    target = tmp_path / ("case" if writer is atomic_dir else "cine.seq.nrrd")
    outcomes = race(target, writer, writer is atomic_dir)
    assert outcomes.count("ok") == 1, outcomes
    loser = next(o for o in outcomes if o != "ok")
    assert "already exists" in loser and "\n" not in loser
    winner = outcomes.index("ok")
    content = (target / "who.txt") if writer is atomic_dir else target
    assert content.read_text() == f"writer {winner}"
    assert os.listdir(tmp_path) == [target.name]  # the loser's temporary is gone too


def test_overwrite_writers_all_succeed_and_one_complete_version_remains(tmp_path, publish_path):
    target = tmp_path / "case"
    with atomic_dir(target) as tmp:
        (tmp / "who.txt").write_text("old")
    outcomes = race(target, lambda p: atomic_dir(p, overwrite=True), folder=True)
    assert outcomes == ["ok", "ok"]
    assert (target / "who.txt").read_text() in ("writer 0", "writer 1")
    assert os.listdir(tmp_path) == ["case"] and os.listdir(target) == ["who.txt"]


def test_symlinks_at_the_output_are_refused_unless_overwrite(tmp_path):
    dangling = tmp_path / "out.nrrd"
    dangling.symlink_to(tmp_path / "nowhere.nrrd")
    with pytest.raises(OutputError, match="symbolic link that points nowhere"):
        with atomic_file(dangling) as tmp:
            tmp.write_text("new")
    with pytest.raises(OutputError, match="symbolic link"):
        check_output_path(dangling)
    assert dangling.is_symlink() and not (tmp_path / "nowhere.nrrd").exists()
    # overwrite replaces the link itself, never what it points to
    with atomic_file(dangling, overwrite=True) as tmp:
        tmp.write_text("new")
    assert not dangling.is_symlink() and dangling.read_text() == "new"
    assert not (tmp_path / "nowhere.nrrd").exists()

    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    link = tmp_path / "case"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(OutputError, match="symbolic link"):
        with atomic_dir(link):
            pass
    with atomic_dir(link, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("1")
    assert not link.is_symlink() and os.listdir(link) == ["a.txt"]
    assert os.listdir(real) == ["keep.txt"]


def test_a_file_does_not_replace_a_folder(tmp_path):
    (tmp_path / "out.nrrd").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        with atomic_file(tmp_path / "out.nrrd", overwrite=True) as tmp:
            tmp.write_text("x")
    assert sorted(os.listdir(tmp_path)) == ["out.nrrd"] and (tmp_path / "out.nrrd").is_dir()


# -- cancel is a state --------------------------------------------------------------------------------
@pytest.mark.parametrize("writer", [atomic_file, atomic_dir])
@pytest.mark.parametrize("overwrite", [False, True])
def test_once_cancelled_nothing_is_published(tmp_path, writer, overwrite):
    target = tmp_path / ("case" if writer is atomic_dir else "out.nrrd")
    if overwrite:
        with writer(target) as tmp:
            (tmp / "who.txt" if writer is atomic_dir else tmp).write_text("old")
    with cancel_on_signals() as state:
        with pytest.raises(Cancelled, match=f"cancel requested while writing '{target}'"):
            with writer(target, overwrite=overwrite) as tmp:
                (tmp / "who.txt" if writer is atomic_dir else tmp).write_text("new")
                request_cancel()
        assert state.is_set() and cancel_requested()
    assert not cancel_requested()  # the state belongs to the block
    assert os.listdir(tmp_path) == ([target.name] if overwrite else [])
    if overwrite:
        assert (target / "who.txt" if writer is atomic_dir else target).read_text() == "old"


def test_temporaries_of_a_killed_writer_are_removed_and_no_one_elses(tmp_path, monkeypatch):
    monkeypatch.setenv(TEMP_TAG_ENV, "run1")
    with atomic_dir(tmp_path / "old-case") as tmp:
        (tmp / "a.txt").write_text("old")
    mine_file = atomic._temporary(tmp_path / "cine.seq.nrrd", "partial", ".seq.nrrd")
    mine_file.write_text("half")
    mine_dir = atomic._temporary(tmp_path / "case", "partial")
    mine_dir.mkdir()
    (mine_dir / "frames.seq.nrrd").write_text("half")
    # a replacement killed between its two renames: the old folder is moved back
    moved_aside = atomic._temporary(tmp_path / "old-case", "old")
    os.rename(tmp_path / "old-case", moved_aside)
    monkeypatch.setenv(TEMP_TAG_ENV, "run2")
    theirs = atomic._temporary(tmp_path / "cine.seq.nrrd", "partial", ".seq.nrrd")
    theirs.write_text("someone else's write in progress")
    assert ".partial-run1-" in mine_file.name and mine_file.name.endswith(".seq.nrrd")

    removed = remove_temporaries(tmp_path, "run1")
    assert sorted(removed) == sorted([mine_file, mine_dir, moved_aside])
    assert sorted(os.listdir(tmp_path)) == sorted(["old-case", theirs.name])
    assert (tmp_path / "old-case" / "a.txt").read_text() == "old"
    with pytest.raises(ValueError):
        remove_temporaries(tmp_path, "../x")


# -- a unit of outputs: all or nothing ----------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_unit_whose_last_move_fails_takes_back_the_others(tmp_path, publish_path, overwrite):
    cine, case, motion = tmp_path / "cine.seq.nrrd", tmp_path / "case", tmp_path / "motion.seq.nrrd"
    if overwrite:
        cine.write_text("old cine")
        case.mkdir()
        (case / "who.txt").write_text("old case")
    with pytest.raises(OutputError, match="motion.seq.nrrd' (already exists|is a folder)"):
        with atomic_outputs(overwrite) as unit:
            unit.file(cine).write_text("new cine")
            (unit.folder(case) / "who.txt").write_text("new case")
            unit.file(motion).write_text("new motion")
            motion.mkdir()  # someone takes the last path meanwhile (a folder: refused even with overwrite)
    if overwrite:
        assert cine.read_text() == "old cine" and os.listdir(case) == ["who.txt"]
        assert (case / "who.txt").read_text() == "old case"
        assert sorted(os.listdir(tmp_path)) == ["case", "cine.seq.nrrd", "motion.seq.nrrd"]
    else:
        assert os.listdir(tmp_path) == ["motion.seq.nrrd"]


def test_a_unit_publishes_every_output_and_replaces_with_overwrite(tmp_path, publish_path):
    cine, case = tmp_path / "cine.seq.nrrd", tmp_path / "case"
    for text in ("first", "second"):
        with atomic_outputs(overwrite=True) as unit:
            unit.file(cine).write_text(text)
            (unit.folder(case) / "who.txt").write_text(text)
        assert cine.read_text() == text and (case / "who.txt").read_text() == text
        assert sorted(os.listdir(tmp_path)) == ["case", "cine.seq.nrrd"] and os.listdir(case) == ["who.txt"]


def test_a_unit_refuses_one_path_twice_and_stages_nothing_once_cancelled(tmp_path):
    with pytest.raises(OutputError, match="is given for two outputs"):
        with atomic_outputs() as unit:
            unit.file(tmp_path / "a.nrrd").write_text("a")
            unit.file(tmp_path / "." / "a.nrrd")
    assert os.listdir(tmp_path) == []
    with cancel_on_signals():
        with pytest.raises(Cancelled, match=r"while writing '.*a.nrrd', '.*b.nrrd'; none of them was written"):
            with atomic_outputs() as unit:
                unit.file(tmp_path / "a.nrrd").write_text("a")
                request_cancel()
                unit.file(tmp_path / "b.nrrd")  # no work for an output that will not be published
    assert os.listdir(tmp_path) == []
