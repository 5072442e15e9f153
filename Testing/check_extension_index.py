"""Run the Slicer Extensions Index's checks that need no network on this extension.

The Index validates a catalog entry (``<Name>.json``) when it is submitted: the entry against the
catalog schema v1.0.2, the category against the categories its peers use, the repository name, the
top-level ``CMakeLists.txt`` (``project()`` named like the entry, literal icon and screenshot URLs)
and a licence file. Those checks clone the repository and download the images; this script runs
the same rules on the working tree, plus the consistency the Index takes on trust (the URLs point
at committed files of the repository the entry names, the icon is the 128x128 PNG the extension
metadata asks for, ``pyproject.toml`` names the same licence and repository).

    .venv/bin/python Testing/check_extension_index.py [--root DIR]

prints one line per rule (``PASS``, ``FAIL`` or ``SKIP``) and exits 1 when a rule fails.

``jsonschema`` is the library for the schema part, but it is not a MoDiff dependency and the
schema is ten flat fields, so its rules are written out below (``CATALOG_FIELDS``).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]

# The catalog schema v1.0.2 (Slicer/Slicer Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json):
# these fields only (additionalProperties false), three of them required.
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json"
CATALOG_FIELDS: dict[str, type] = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "dicom_support_rule": str, "build_subdirectory": str,
    "enabled": bool, "tier": int,
}
CATALOG_REQUIRED = ("$schema", "category", "scm_url")
SCM_TYPES = ("git", "local")
TIER_RANGE = (1, 5)  # 1 experimental, 3 supported by the community, 5 by Slicer core developers

# The categories the Index accepts (ExtensionsIndex scripts/check_description_files.py,
# ACCEPTED_EXTENSION_CATEGORIES, read 2026-12); a new category needs the Index maintainers' consent.
INDEX_CATEGORIES = frozenset({
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform",
    "Conda", "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter",
    "FTV Segmentation", "Filtering", "Filtering.Morphology", "Filtering.Vesselness",
    "Holographic Display", "IGT", "Informatics", "Netstim", "Neuroimaging", "Nuclear Medicine",
    "Orthodontics", "Osteotomy Planning", "Otolaryngology", "Photogrammetry", "Pipelines",
    "Planning", "Printing", "Quantification", "Radiotherapy", "Registration", "Remote", "Rendering",
    "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression",
    "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging",
    "Supervisely", "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking",
    "Tractography", "Training", "Ultrasound", "Utilities", "Vascular Modeling Toolkit",
    "Virtual Reality", "VisSimTools", "Web System Tools", "Wizards",
})

# File names the Index looks for in the repository root, first match wins.
LICENSE_FILES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
# Phrases that identify a licence text, by SPDX id (the Index suggests the Slicer licence or Apache-2.0).
LICENSE_SIGNATURES: dict[str, tuple[str, ...]] = {
    "Apache-2.0": ("Apache License", "Version 2.0, January 2004", "1. Definitions.",
                   "9. Accepting Warranty or Additional Liability.", "END OF TERMS AND CONDITIONS"),
    "MIT": ("Permission is hereby granted, free of charge", "THE SOFTWARE IS PROVIDED \"AS IS\""),
    "BSD-3-Clause": ("Redistribution and use in source and binary forms", "Neither the name of"),
    "LicenseRef-Slicer": ("3D Slicer Contribution and Software License Agreement",),
}

# Leftovers of templates and wizards (Slicer's extension wizard writes example.com URLs).
PLACEHOLDER_MARKERS = ("example.com", "example.org", "username", "reponame", "owner/repo", "yourname",
                       "your-", "todo", "fixme", "placeholder", "<", ">", "${")
ICON_SIZE = (128, 128)  # the extension metadata asks for a 128x128 PNG icon
SCREENSHOT_FORMATS = ("PNG", "JPEG", "GIF")  # the image types the Index accepts at a screenshot URL
RAW_HOST = "raw.githubusercontent.com"


@dataclass(frozen=True)
class Result:
    """The outcome of one rule: ``status`` is PASS, FAIL or SKIP; ``detail`` says what was seen."""

    rule: str
    status: str
    detail: str


@dataclass
class Extension:
    """The files of one extension source tree that the rules read (missing ones are None/empty)."""

    root: Path
    cmake_text: str = ""
    cmake: dict[str, str] = field(default_factory=dict)  # set(NAME "value") of the top-level CMakeLists
    project: str | None = None
    catalog_path: Path | None = None
    catalog: dict | None = None
    catalog_error: str = ""
    pyproject: dict = field(default_factory=dict)


# -- reading --------------------------------------------------------------------------------------
def _strip_cmake_comments(text: str) -> str:
    """CMake source without ``#`` comments (a ``#`` inside quotes, as in a URL fragment, is kept)."""
    lines = []
    for line in text.splitlines():
        quoted = False
        for i, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                line = line[:i]
                break
        lines.append(line)
    return "\n".join(lines)


def read_cmake(text: str) -> tuple[str | None, dict[str, str]]:
    """The ``project()`` name and the ``set(NAME value)`` variables of a CMakeLists (unexpanded)."""
    code = _strip_cmake_comments(text)
    project = re.search(r"\bproject\s*\(\s*\"?([^\s\")]+)", code, re.IGNORECASE)
    variables = {}
    for match in re.finditer(r"\bset\s*\(\s*(\w+)\s+(?:\"([^\"]*)\"|([^\s\")]+))\s*\)", code, re.IGNORECASE):
        variables[match.group(1)] = match.group(2) if match.group(2) is not None else match.group(3)
    return (project.group(1) if project else None), variables


def read_pyproject(path: Path) -> dict:
    """``pyproject.toml`` as a dict; ``{}`` when it is missing."""
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10: the two string fields the rules need, read line by line
        table, data = "", {}
        for line in path.read_text(encoding="utf-8").splitlines():
            header = re.fullmatch(r"\s*\[([\w.-]+)\]\s*", line)
            pair = re.fullmatch(r"\s*([\w-]+)\s*=\s*\"([^\"]*)\"\s*(#.*)?", line)
            if header:
                table = header.group(1)
            elif pair:
                node = data
                for part in table.split(".") if table else []:
                    node = node.setdefault(part, {})
                node[pair.group(1)] = pair.group(2)
        return data
    with path.open("rb") as handle:
        return tomllib.load(handle)


def find_catalog(root: Path) -> Path | None:
    """The one ``*.json`` in the root whose ``$schema`` is the Slicer catalog schema (None otherwise)."""
    found = []
    for path in sorted(root.glob("*.json")):
        try:
            schema = json.loads(path.read_text(encoding="utf-8")).get("$schema", "")
        except (ValueError, AttributeError):
            continue
        if "slicer-extension-catalog-entry-schema" in str(schema):
            found.append(path)
    return found[0] if len(found) == 1 else None


def load_extension(root: Path) -> Extension:
    """Read the files the rules need from an extension source tree."""
    ext = Extension(root=root)
    cmake_path = root / "CMakeLists.txt"
    if cmake_path.is_file():
        ext.cmake_text = cmake_path.read_text(encoding="utf-8")
        ext.project, ext.cmake = read_cmake(ext.cmake_text)
    ext.catalog_path = find_catalog(root)
    if ext.catalog_path is not None:
        try:
            ext.catalog = json.loads(ext.catalog_path.read_text(encoding="utf-8"))
        except ValueError as error:
            ext.catalog_error = f"{ext.catalog_path.name} is not JSON: {error}"
    else:
        ext.catalog_error = "no single *.json with a slicer-extension-catalog-entry-schema $schema in the root"
    ext.pyproject = read_pyproject(root / "pyproject.toml")
    return ext


# -- helpers --------------------------------------------------------------------------------------
def github_repository(url: str) -> str | None:
    """``owner/name`` of a github.com or raw.githubusercontent.com URL (no ``.git``), else None."""
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if parts.netloc not in ("github.com", "www.github.com", RAW_HOST) or len(path) < 2:
        return None
    return f"{path[0]}/{path[1].removesuffix('.git')}"


def placeholder_in(text: str) -> str | None:
    """The first template leftover found in ``text``, or None."""
    lowered = text.lower()
    return next((marker for marker in PLACEHOLDER_MARKERS if marker in lowered), None)


def raw_url_problem(ext: Extension, url: str) -> tuple[str | None, Path | None]:
    """Why a raw URL would not serve a file of this extension's repository (None if it would),
    and the local file it names."""
    if not url.startswith("https://"):
        return f"{url!r} is not a literal https:// URL", None
    marker = placeholder_in(url)
    if marker:
        return f"{url} holds the placeholder {marker!r}", None
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    if parts.netloc != RAW_HOST or len(path) < 4:
        return f"{url} is not a {RAW_HOST}/OWNER/REPO/REVISION/PATH URL", None
    catalog = ext.catalog or {}
    expected = github_repository(str(catalog.get("scm_url", "")))
    if github_repository(url) != expected:
        return f"{url} is not in the repository scm_url names ({expected})", None
    if path[2] != catalog.get("scm_revision"):
        return f"{url} serves revision {path[2]!r}, scm_revision is {catalog.get('scm_revision')!r}", None
    local = ext.root.joinpath(*path[3:])
    if not local.is_file():
        return f"{url} names {local.relative_to(ext.root).as_posix()}, which does not exist", local
    return None, local


def image_info(path: Path, count_colours: bool = False) -> tuple[str | None, tuple[int, int], int]:
    """Format, size and (if asked) number of distinct colours, up to 256, of an image file; format
    None if it is not an image."""
    from PIL import Image  # Pillow comes with matplotlib, a MoDiff dependency

    try:
        with Image.open(path) as image:
            image.load()
            colours = image.convert("RGBA").getcolors(maxcolors=256) if count_colours else []
            return image.format, image.size, len(colours) if colours is not None else 256
    except (OSError, ValueError):
        return None, (0, 0), 0


def screenshot_urls(ext: Extension) -> list[str] | None:
    """The screenshot URLs as the Index reads them: the quoted value, only when ``)`` follows the
    closing quote directly (``"... ")`` with a space before ``)`` is not read). None if not found."""
    match = re.search(r"set\s*\(EXTENSION_SCREENSHOTURLS\s*\"([^\"]+)\"\)", ext.cmake_text, re.IGNORECASE)
    return match.group(1).split() if match else None


def git_tracks(root: Path, paths: list[Path]) -> tuple[bool | None, list[str]]:
    """Whether git tracks every path (None when ``root`` is not the top of a git work tree), and
    the ones it does not."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None, []
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
        return None, []
    untracked = []
    for path in paths:
        relative = path.relative_to(root).as_posix()
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "--error-unmatch", relative],
                                capture_output=True, text=True, timeout=30)
        if listed.returncode != 0:
            untracked.append(relative)
    return not untracked, untracked


def module_categories(path: Path) -> list[str] | None:
    """The categories a scripted module declares (``self.parent.categories = [...]``), read by
    parsing the file (it imports Slicer); None if the file or the assignment is missing."""
    if not path.is_file():
        return None
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and ast.unparse(node.targets[0]) == "self.parent.categories"
                and isinstance(node.value, ast.List)):
            names = []
            for item in node.value.elts:
                # translate("qSlicerAbstractCoreModule", "Sequences"): the category is the last argument
                value = item.args[-1] if isinstance(item, ast.Call) and item.args else item
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    names.append(value.value)
            return names
    return None


def identify_license(text: str) -> str | None:
    """The SPDX id whose signature phrases all appear in a licence text, or None."""
    flat = " ".join(text.split())
    for spdx, phrases in LICENSE_SIGNATURES.items():
        if all(" ".join(phrase.split()) in flat for phrase in phrases):
            return spdx
    return None


# -- rules ----------------------------------------------------------------------------------------
def _result(rule: str, problems: list[str], ok_detail: str) -> Result:
    return Result(rule, "FAIL", "; ".join(problems)) if problems else Result(rule, "PASS", ok_detail)


def check_schema(ext: Extension) -> list[Result]:
    """The catalog entry validates against the catalog schema v1.0.2."""
    entry = ext.catalog
    if entry is None:
        return [Result("catalog-schema", "FAIL", ext.catalog_error)]
    if not isinstance(entry, dict):
        return [Result("catalog-schema", "FAIL", "the catalog entry is not a JSON object")]
    problems = [f"required field {key!r} is missing" for key in CATALOG_REQUIRED if key not in entry]
    problems += [f"field {key!r} is not in the schema" for key in entry if key not in CATALOG_FIELDS]
    for key, kind in CATALOG_FIELDS.items():
        if key not in entry:
            continue
        value = entry[key]
        # JSON true/false are Python bools, which are also ints: an integer field must refuse them
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{key!r} is {type(value).__name__}, the schema wants {kind.__name__}")
    if isinstance(entry.get("build_dependencies"), list) and not all(
            isinstance(item, str) for item in entry["build_dependencies"]):
        problems.append("build_dependencies holds a non-string item")
    if "scm_type" in entry and entry["scm_type"] not in SCM_TYPES:
        problems.append(f"scm_type {entry['scm_type']!r} is not one of {SCM_TYPES}")
    tier = entry.get("tier")
    if isinstance(tier, int) and not isinstance(tier, bool) and not TIER_RANGE[0] <= tier <= TIER_RANGE[1]:
        problems.append(f"tier {tier} is outside {TIER_RANGE[0]}-{TIER_RANGE[1]}")
    results = [_result("catalog-schema", problems, f"{ext.catalog_path.name} validates against schema v1.0.2")]
    schema = str(entry.get("$schema", "")).removesuffix("#")
    results.append(_result("catalog-schema-version", [] if schema == SCHEMA_URL else
                           [f"$schema is {entry.get('$schema')!r}, not the v1.0.2 schema {SCHEMA_URL}#"],
                           "$schema names v1.0.2"))
    return results


def check_category(ext: Extension) -> list[Result]:
    """The category is one the Index accepts, and the one CMakeLists and the module declare."""
    category = (ext.catalog or {}).get("category")
    problems = []
    if not isinstance(category, str) or not category.strip():
        problems.append("category is empty")
    elif category not in INDEX_CATEGORIES:
        problems.append(f"category {category!r} is not one the Index accepts")
    if ext.cmake.get("EXTENSION_CATEGORY") != category:
        problems.append(f"CMakeLists EXTENSION_CATEGORY is {ext.cmake.get('EXTENSION_CATEGORY')!r}, "
                        f"the catalog's is {category!r}")
    declared = module_categories(ext.root / str(ext.project) / f"{ext.project}.py")
    if declared is None:
        problems.append(f"no self.parent.categories found in {ext.project}/{ext.project}.py")
    elif category not in declared:
        problems.append(f"the module declares categories {declared}, not {category!r}")
    return [_result("category", problems, f"{category!r}, as CMakeLists and the module declare")]


def check_names(ext: Extension) -> list[Result]:
    """project() in CMakeLists names the extension as the catalog file name does."""
    stem = ext.catalog_path.stem if ext.catalog_path else None
    problems = []
    if ext.project is None:
        problems.append("no project() in the top-level CMakeLists.txt")
    elif ext.project != stem:
        problems.append(f"project({ext.project}) does not match the catalog file name {stem}.json")
    if "EXTENSION_NAME" in ext.cmake and ext.cmake["EXTENSION_NAME"] != ext.project:
        problems.append(f"EXTENSION_NAME {ext.cmake['EXTENSION_NAME']!r} differs from project({ext.project})")
    return [_result("extension-name", problems, f"project({ext.project}) and {stem}.json")]


def check_repository(ext: Extension) -> list[Result]:
    """scm_url is an https/git URL of a repository named like a Slicer extension, on a set revision;
    the homepage and pyproject's URLs name the same repository."""
    entry = ext.catalog or {}
    url = str(entry.get("scm_url", ""))
    repository = github_repository(url)
    problems = []
    if urlsplit(url).scheme not in ("https", "git") or "://" not in url:
        problems.append(f"scm_url {url!r} is not a git:// or https:// URL")
    marker = placeholder_in(url)
    if marker:
        problems.append(f"scm_url holds the placeholder {marker!r}")
    name = Path(urlsplit(url).path).name.removesuffix(".git")
    if "slicer" not in name.lower():
        problems.append(f"repository name {name!r} does not contain 'Slicer' (the Index asks for Slicer<Name>)")
    if not isinstance(entry.get("scm_revision"), str) or not entry.get("scm_revision"):
        problems.append("scm_revision is not set (the raw icon and screenshot URLs need the branch)")
    results = [_result("scm-url", problems, f"{url} at {entry.get('scm_revision')}")]

    homepage = ext.cmake.get("EXTENSION_HOMEPAGE", "")
    problems = []
    if not homepage.startswith("https://"):
        problems.append(f"EXTENSION_HOMEPAGE {homepage!r} is not a literal https:// URL")
    elif placeholder_in(homepage):
        problems.append(f"EXTENSION_HOMEPAGE holds the placeholder {placeholder_in(homepage)!r}")
    elif github_repository(homepage) != repository:
        problems.append(f"EXTENSION_HOMEPAGE {homepage} is not the repository scm_url names ({repository})")
    results.append(_result("homepage-url", problems, homepage))

    urls = ext.pyproject.get("project", {}).get("urls", {})
    problems = [] if urls else ["pyproject.toml has no [project.urls]"]
    for key, value in urls.items():
        if "github.com" in value and github_repository(value) != repository:
            problems.append(f"[project.urls] {key} = {value} is not {repository}")
    results.append(_result("pyproject-urls", problems, f"[project.urls] name {repository}"))
    return results


def check_dependencies(ext: Extension) -> list[Result]:
    """build_dependencies names PyTorch and matches EXTENSION_DEPENDS."""
    declared = (ext.catalog or {}).get("build_dependencies") or []
    depends = ext.cmake.get("EXTENSION_DEPENDS", "NA")
    cmake_list = [] if depends == "NA" else depends.replace(";", " ").split()
    problems = []
    if "PyTorch" not in declared:
        problems.append(f"build_dependencies {declared} does not name PyTorch (the extension installing torch)")
    if sorted(cmake_list) != sorted(declared):
        problems.append(f"EXTENSION_DEPENDS {cmake_list} differs from build_dependencies {declared}")
    return [_result("build-dependencies", problems, f"{declared}")]


def check_text_metadata(ext: Extension) -> list[Result]:
    """Description: 1-2 sentences, no ';' (CMake would split it into a list). Contributors:
    'Name (Affiliation)' entries."""
    text = ext.cmake.get("EXTENSION_DESCRIPTION", "")
    sentences = len(re.findall(r"[.!?](?:\s|$)", text))
    problems = []
    if not text.strip():
        problems.append("EXTENSION_DESCRIPTION is empty")
    elif not 1 <= sentences <= 2:
        problems.append(f"EXTENSION_DESCRIPTION has {sentences} sentences, the Index asks for 1-2")
    if ";" in text:
        problems.append("EXTENSION_DESCRIPTION holds ';', which CMake reads as a list separator")
    if placeholder_in(text):
        problems.append(f"EXTENSION_DESCRIPTION holds the placeholder {placeholder_in(text)!r}")
    results = [_result("description", problems, f"{sentences} sentence(s)")]

    contributors = ext.cmake.get("EXTENSION_CONTRIBUTORS", "")
    entries = [e.strip() for e in re.split(r",(?![^()]*\))", contributors) if e.strip()]
    problems = [] if entries else ["EXTENSION_CONTRIBUTORS is empty"]
    problems += [f"contributor {e!r} is not 'Name (Affiliation)'" for e in entries
                 if not re.fullmatch(r"[^()]+\([^()]+\)", e)]
    if placeholder_in(contributors) or "john doe" in contributors.lower():
        problems.append("EXTENSION_CONTRIBUTORS is the template's")
    results.append(_result("contributors", problems, contributors))
    return results


def check_images(ext: Extension) -> list[Result]:
    """The icon and screenshot URLs are literal raw URLs of committed files of the repository; the
    icon is a 128x128 PNG that is not blank, the screenshots are images the Index accepts."""
    results, served = [], []
    # read as the Index reads it: the name right after "(", spaces only before ")"
    match = re.search(r"set\s*\(EXTENSION_ICONURL\s*\"([^\"]+)\" *\)", ext.cmake_text, re.IGNORECASE)
    icon_url = match.group(1) if match else ""
    problem, icon = raw_url_problem(ext, icon_url) if icon_url else ("no EXTENSION_ICONURL", None)
    results.append(_result("icon-url", [problem] if problem else [], icon_url))
    if icon is not None and icon.is_file():
        served.append(icon)
        kind, size, colours = image_info(icon, count_colours=True)
        problems = []
        if kind != "PNG":
            problems.append(f"{icon.name} is {kind or 'not an image'}, not PNG")
        if size != ICON_SIZE:
            problems.append(f"{icon.name} is {size[0]}x{size[1]}, the Index asks for {ICON_SIZE[0]}x{ICON_SIZE[1]}")
        if kind and colours < 3:
            problems.append(f"{icon.name} is blank ({colours} colour(s))")
        results.append(_result("icon-image", problems, f"{icon.relative_to(ext.root).as_posix()}: "
                                                       f"{kind} {size[0]}x{size[1]}"))
    else:
        results.append(Result("icon-image", "FAIL", "no icon file at the icon URL to check"))

    urls = screenshot_urls(ext)
    problems = [] if urls else ["no EXTENSION_SCREENSHOTURLS the Index can read (at least one is needed)"]
    for url in urls or []:
        problem, local = raw_url_problem(ext, url)
        if problem:
            problems.append(problem)
            continue
        served.append(local)
        kind, size, _ = image_info(local)
        if kind not in SCREENSHOT_FORMATS:
            problems.append(f"{local.name} is {kind or 'not an image'}, not one of {SCREENSHOT_FORMATS}")
    results.append(_result("screenshots", problems, f"{len(urls or [])} screenshot(s)"))

    tracked, untracked = git_tracks(ext.root, served)
    if tracked is None:
        results.append(Result("images-committed", "SKIP", "not the top of a git work tree"))
    else:
        results.append(_result("images-committed",
                               [f"not committed, so not served at its raw URL: {p}" for p in untracked],
                               f"{len(served)} file(s) tracked by git"))
    return results


def check_license(ext: Extension) -> list[Result]:
    """A licence file the Index finds, with a recognised licence text, the one pyproject.toml
    declares and the README names."""
    path = next((ext.root / name for name in LICENSE_FILES if (ext.root / name).is_file()), None)
    if path is None:
        return [Result("license", "FAIL", f"none of {', '.join(LICENSE_FILES)} in the repository root")]
    spdx = identify_license(path.read_text(encoding="utf-8", errors="replace"))
    declared = ext.pyproject.get("project", {}).get("license")
    declared = declared if isinstance(declared, str) else (declared or {}).get("text")
    problems = []
    if spdx is None:
        problems.append(f"{path.name} is not a full text of a recognised licence ({', '.join(LICENSE_SIGNATURES)})")
    elif declared != spdx:
        problems.append(f"{path.name} is {spdx}, pyproject.toml declares {declared!r}")
    readme = ext.root / "README.md"
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    if spdx and (spdx not in text or path.name not in text):
        problems.append(f"README.md does not name the licence ({spdx}) and its file ({path.name})")
    return [_result("license", problems, f"{path.name}: {spdx}, as pyproject.toml and README.md say")]


RULES = (check_schema, check_names, check_category, check_repository, check_dependencies,
         check_text_metadata, check_images, check_license)


def check_extension(root: Path = ROOT) -> list[Result]:
    """Every rule's result for the extension source tree at ``root``."""
    ext = load_extension(root)
    if not ext.cmake_text:
        return [Result("cmakelists", "FAIL", f"no CMakeLists.txt in {root}")]
    return [result for rule in RULES for result in rule(ext)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="extension source tree (default: this repository)")
    args = parser.parse_args(argv)
    results = check_extension(args.root.resolve())
    for result in results:
        print(f"{result.status}  {result.rule}: {result.detail}")
    failed = [r.rule for r in results if r.status == "FAIL"]
    print(f"{len(failed)} of {len(results)} rules failed" if failed else f"all {len(results)} rules passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
