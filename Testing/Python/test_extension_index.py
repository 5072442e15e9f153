"""The extension passes the Extensions Index checks that run offline (Testing/check_extension_index.py),
and the checker fails a copy of the extension broken in each way the Index would refuse."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "Testing" / "check_extension_index.py"
RULES = {"catalog-schema", "catalog-schema-version", "extension-name", "category", "scm-url", "homepage-url",
         "pyproject-urls", "build-dependencies", "description", "contributors", "icon-url", "icon-image",
         "screenshots", "images-committed", "license"}
# What the rules read: the catalog entry, CMakeLists, licence, README, pyproject, module file, images.
COPIED = ("CMakeLists.txt", "MoDiff.json", "LICENSE", "README.md", "pyproject.toml", "MoDiff/MoDiff.py",
          "Resources/Icons", "Resources/Screenshots")


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_extension_index", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


checker = _load_checker()


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The files the checks read, copied into a folder that is not a git work tree."""
    root = tmp_path / "ext"
    for name in COPIED:
        source, target = ROOT / name, root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    return root


def _statuses(root: Path) -> dict[str, str]:
    return {r.rule: r.status for r in checker.check_extension(root)}


def test_the_repository_passes_every_rule():
    results = checker.check_extension(ROOT)
    assert {r.rule for r in results} == RULES
    failed = [f"{r.rule}: {r.detail}" for r in results if r.status == "FAIL"]
    assert not failed, failed
    skipped = {r.rule for r in results if r.status == "SKIP"}
    # only the git rule may skip, and only where the checkout is not a git work tree
    assert skipped <= {"images-committed"}
    if (ROOT / ".git").exists():
        assert not skipped


def test_the_script_prints_each_rule_and_exits_zero():
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    printed = {m.group(2) for m in re.finditer(r"^(PASS|SKIP)  ([\w-]+):", run.stdout, re.MULTILINE)}
    assert printed == RULES, run.stdout


def test_an_unbroken_copy_passes(copy):
    statuses = _statuses(copy)
    assert statuses.pop("images-committed") == "SKIP"  # a copy outside git cannot show what is committed
    assert set(statuses.values()) == {"PASS"}, statuses


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path.name}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def _edit_catalog(root: Path, **changes) -> None:
    path = root / "MoDiff.json"
    entry = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    path.write_text(json.dumps(entry, indent=2), encoding="utf-8")


ICON = "Resources/Icons/MoDiff.png"
ICON_URL = "https://raw.githubusercontent.com/MoDiff-Slicer/SlicerMoDiff/main/Resources/Icons/MoDiff.png"
MIT = ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software. "
       "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND.")

BREAKAGES = {
    # name: (how the copy is broken, the rules that must fail)
    "icon missing": (lambda r: (r / ICON).unlink(), {"icon-url", "icon-image"}),
    "icon 64x64": (lambda r: Image.open(ROOT / ICON).resize((64, 64)).save(r / ICON), {"icon-image"}),
    "icon blank": (lambda r: Image.new("RGBA", (128, 128), (40, 60, 90, 255)).save(r / ICON), {"icon-image"}),
    "icon is a JPEG": (lambda r: Image.open(ROOT / ICON).convert("RGB").save(r / ICON, format="JPEG"),
                       {"icon-image"}),
    "icon URL through a CMake variable": (
        lambda r: _edit(r / "CMakeLists.txt", f'"{ICON_URL}"', '"${MODIFF_RAW_URL}/Resources/Icons/MoDiff.png"'),
        {"icon-url", "icon-image"}),
    "icon URL on another branch": (
        lambda r: _edit(r / "CMakeLists.txt", ICON_URL, ICON_URL.replace("/main/", "/master/")), {"icon-url", "icon-image"}),
    "screenshot missing": (lambda r: (r / "Resources/Screenshots/plan-example.png").unlink(), {"screenshots"}),
    "screenshot URLs the Index cannot read": (
        lambda r: _edit(r / "CMakeLists.txt", 'plan-example.png")', 'plan-example.png" )'), {"screenshots"}),
    "catalog file named unlike project()": (
        lambda r: (r / "MoDiff.json").rename(r / "SlicerMoDiff.json"), {"extension-name"}),
    "EXTENSION_NAME unlike project()": (
        lambda r: _edit(r / "CMakeLists.txt", "project(MoDiff)\n", "project(MoDiff)\nset(EXTENSION_NAME Mo)\n"),
        {"extension-name"}),
    "placeholder homepage": (
        lambda r: _edit(r / "CMakeLists.txt", 'HOMEPAGE "https://github.com/MoDiff-Slicer/SlicerMoDiff"',
                        'HOMEPAGE "https://www.example.com/Slicer/Extensions/MoDiff"'),
        {"homepage-url"}),
    "category unknown to the Index": (
        lambda r: (_edit_catalog(r, category="Deep Learning"),
                   _edit(r / "CMakeLists.txt", 'CATEGORY "Sequences"', 'CATEGORY "Deep Learning"')),
        {"category"}),
    "category unlike CMakeLists": (lambda r: _edit_catalog(r, category="Segmentation"), {"category"}),
    "field not in the schema (old scmurl key)": (lambda r: _edit_catalog(r, scmurl="x"), {"catalog-schema"}),
    "required field missing": (lambda r: _edit_catalog(r, category=None), {"catalog-schema", "category"}),
    "tier out of range": (lambda r: _edit_catalog(r, tier=7), {"catalog-schema"}),
    "tier a boolean": (lambda r: _edit_catalog(r, tier=True), {"catalog-schema"}),
    "enabled a string": (lambda r: _edit_catalog(r, enabled="yes"), {"catalog-schema"}),
    "older schema": (
        lambda r: _edit(r / "MoDiff.json", "schema-v1.0.2.json", "schema-v1.0.1.json"), {"catalog-schema-version"}),
    "PyTorch not a build dependency": (
        lambda r: (_edit_catalog(r, build_dependencies=[]),
                   _edit(r / "CMakeLists.txt", 'DEPENDS "PyTorch"', 'DEPENDS "NA"')),
        {"build-dependencies"}),
    "dependencies unlike EXTENSION_DEPENDS": (
        lambda r: _edit(r / "CMakeLists.txt", 'DEPENDS "PyTorch"', 'DEPENDS "PyTorch SlicerIGT"'),
        {"build-dependencies"}),
    "another repository": (
        lambda r: _edit_catalog(r, scm_url="https://github.com/someone/SlicerOther"),
        {"icon-url", "icon-image", "screenshots", "homepage-url", "pyproject-urls"}),
    "repository not named Slicer<Name>": (
        lambda r: _edit_catalog(r, scm_url="ftp://github.com/MoDiff-Slicer/MoDiff"),
        {"scm-url", "icon-url", "icon-image", "screenshots", "homepage-url", "pyproject-urls"}),
    "description with ';'": (
        lambda r: _edit(r / "CMakeLists.txt", "planning studies, not", "planning studies; not"), {"description"}),
    "contributors without affiliation": (
        lambda r: _edit(r / "CMakeLists.txt", "MoDiff contributors (MoDiff-Slicer)", "John Doe"),
        {"contributors"}),
    "licence file missing": (lambda r: (r / "LICENSE").unlink(), {"license"}),
    "licence unlike pyproject": (lambda r: (r / "LICENSE").write_text(MIT), {"license"}),
    "licence text truncated": (
        lambda r: (r / "LICENSE").write_text((ROOT / "LICENSE").read_text()[:4000]), {"license"}),
}


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_a_broken_copy_fails(copy, name):
    breakage, expected = BREAKAGES[name]
    breakage(copy)
    statuses = _statuses(copy)
    failed = {rule for rule, status in statuses.items() if status == "FAIL"}
    assert failed == expected, statuses
    assert checker.main(["--root", str(copy)]) == 1


def test_a_tree_without_cmakelists_fails(copy):
    (copy / "CMakeLists.txt").unlink()
    assert [r.status for r in checker.check_extension(copy)] == ["FAIL"]


def test_pyproject_reader_without_tomllib_reads_what_the_rules_need(monkeypatch):
    # Python 3.10 has no tomllib: the line reader must give the rules the same licence and URLs
    with_tomllib = checker.read_pyproject(ROOT / "pyproject.toml")
    monkeypatch.setitem(sys.modules, "tomllib", None)  # makes "import tomllib" raise ImportError
    without = checker.read_pyproject(ROOT / "pyproject.toml")
    assert without["project"]["license"] == with_tomllib["project"]["license"] == "Apache-2.0"
    assert without["project"]["urls"] == with_tomllib["project"]["urls"]
