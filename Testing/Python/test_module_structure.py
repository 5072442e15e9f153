"""The Slicer extension is complete and the module follows Slicer's scripted-module template.

* Every file the packaged extension needs is listed in the CMake files (a file that is not
  listed is silently missing from the extension), and every listed file exists (else the build
  fails). Adding a file to MoDiffLib/, MoDiff/ or Resources/ without listing it in
  MoDiff/CMakeLists.txt makes this test fail: that is intended.
* MoDiff/MoDiff.py is checked by parsing it (it imports Slicer's Qt modules, which do not exist
  outside the Slicer application): four classes in template order with the right bases, the
  self-test runs every test method, every shared scenario is run by the self-test, the widgets
  the code uses exist in the .ui file, and the .ui binds only to parameters that exist.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MoDiff"
MODULE_FILE = MODULE_DIR / "MoDiff.py"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
ROOT_CMAKE = ROOT / "CMakeLists.txt"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MoDiff.ui"
SCENARIOS_FILE = ROOT / "Testing" / "Python" / "mrml_scenarios.py"


# -- a small CMake reader (enough for the two CMakeLists of this repository) ------------------------
def _strip_comment(line: str) -> str:
    """The line without its ``#`` comment (a ``#`` inside quotes is kept)."""
    quoted = False
    for i, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:i]
    return line


def _cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """``[(command, [arguments])]`` of a CMake file; comments removed, quotes stripped."""
    text = "\n".join(_strip_comment(line) for line in path.read_text().splitlines())
    commands = []
    for match in re.finditer(r"(\w+)\s*\(((?:[^()\"]|\"[^\"]*\")*)\)", text):
        args = [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|[^\s"]+', match.group(2))]
        commands.append((match.group(1), args))
    return commands


def _expand(args: list[str], variables: dict[str, list[str]]) -> list[str]:
    out = []
    for arg in args:
        whole = re.fullmatch(r"\$\{(\w+)\}", arg)
        if whole and whole.group(1) in variables:
            out.extend(variables[whole.group(1)])
            continue
        out.append(re.sub(r"\$\{(\w+)\}", lambda m: ";".join(variables.get(m.group(1), [m.group(0)])), arg))
    return [piece for a in out for piece in a.split(";") if piece]


def _keyword_lists(args: list[str], keywords: set[str]) -> dict[str, list[str]]:
    lists, current = {}, None
    for arg in args:
        if arg in keywords:
            current = arg
            lists.setdefault(arg, [])
        elif current is not None:
            lists[current].append(arg)
    return lists


def read_cmake(path: Path) -> tuple[dict[str, list[str]], list[tuple[str, list[str]]]]:
    """Variables set with ``set()`` (expanded) and the commands with expanded arguments."""
    variables: dict[str, list[str]] = {}
    expanded = []
    for name, args in _cmake_commands(path):
        args = _expand(args, variables)
        if name == "set" and args:
            variables[args[0]] = args[1:]
        expanded.append((name, args))
    return variables, expanded


def listed_files() -> dict[str, set[str]]:
    """Repository-relative paths listed for packaging, by role: scripts, resources, urls."""
    _, commands = read_cmake(MODULE_CMAKE)
    listed = {"scripts": set(), "resources": set(), "urls": set()}
    calls = {name for name, _ in commands}
    assert "slicerMacroBuildScriptedModule" in calls, "MoDiff/CMakeLists.txt does not build the scripted module"
    assert "ctkMacroCompilePythonScript" in calls, "MoDiff/CMakeLists.txt does not install MoDiffLib"
    for name, args in commands:
        if name == "slicerMacroBuildScriptedModule":
            parts = _keyword_lists(args, {"NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS"})
            assert parts.get("NAME") == ["MoDiff"], parts.get("NAME")
            assert "WITH_GENERIC_TESTS" in args
            base = MODULE_DIR
        elif name == "ctkMacroCompilePythonScript":
            parts = _keyword_lists(args, {"TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR", "DESTINATION_DIR",
                                          "INSTALL_DIR", "NO_INSTALL_SUBDIR"})
            assert parts.get("SOURCE_DIR") == ["${CMAKE_CURRENT_SOURCE_DIR}/.."], parts.get("SOURCE_DIR")
            assert parts.get("DESTINATION_DIR") == ["${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}"]
            assert parts.get("INSTALL_DIR") == ["${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}"]
            assert "NO_INSTALL_SUBDIR" in args, "without NO_INSTALL_SUBDIR the library lands in a sub-folder"
            base = ROOT
        else:
            continue
        for role, key in (("scripts", "SCRIPTS"), ("resources", "RESOURCES")):
            for item in parts.get(key, []):
                listed[role].add(os.path.normpath(base / item).replace(os.sep, "/").removeprefix(str(ROOT).replace(os.sep, "/") + "/"))
    root_variables, _ = read_cmake(ROOT_CMAKE)
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        # EXTENSION_SCREENSHOTURLS is one space-separated string of URLs
        listed["urls"].update(url for value in root_variables.get(key, []) for url in value.split())
    return listed


def files_under(folder: str, suffix: str | None = None) -> set[str]:
    found = set()
    base = ROOT / folder
    if not base.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        for name in filenames:
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            if suffix is None or name.endswith(suffix):
                found.add(Path(dirpath, name).relative_to(ROOT).as_posix())
    return found


def _url_names(path: str, urls: set[str]) -> bool:
    return any(url.endswith("/" + path) for url in urls)


# -- packaging ------------------------------------------------------------------------------------
def test_root_cmake_declares_the_extension():
    variables, commands = read_cmake(ROOT_CMAKE)
    names = [name for name, _ in commands]
    assert names[0] == "cmake_minimum_required"
    assert ("project", ["MoDiff"]) in commands
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert variables.get(key), f"{key} is not set"
    assert variables["EXTENSION_CATEGORY"] == ["Sequences"]
    assert variables["EXTENSION_DEPENDS"] == ["PyTorch"]
    assert all(v.startswith("https://") for v in variables["EXTENSION_ICONURL"] + variables["EXTENSION_HOMEPAGE"])
    assert ("find_package", ["Slicer", "REQUIRED"]) in commands
    assert ("add_subdirectory", ["MoDiff"]) in commands
    assert names.index("find_package") < names.index("add_subdirectory")
    includes = [args[0] for name, args in commands if name == "include"]
    assert includes == ["${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"]


def test_module_cmake_registers_the_self_test():
    _, commands = read_cmake(MODULE_CMAKE)
    names = [name for name, _ in commands]
    assert "if" in names and ("if", ["BUILD_TESTING"]) in commands
    assert ("slicer_add_python_unittest", ["SCRIPT", "MoDiff.py"]) in commands
    assert names.index("slicer_add_python_unittest") > names.index("if")


def test_every_listed_file_exists():
    listed = listed_files()
    missing = sorted(p for p in listed["scripts"] | listed["resources"] if not (ROOT / p).is_file())
    assert not missing, f"listed in MoDiff/CMakeLists.txt but missing (the build would fail): {missing}"
    assert all(p.endswith(".py") for p in listed["scripts"]), "SCRIPTS must list Python files only"
    assert not any(p.startswith("..") for p in listed["scripts"] | listed["resources"])


def test_every_file_the_extension_needs_is_listed():
    listed = listed_files()
    needed = (
        files_under("MoDiff", ".py")
        | files_under("MoDiffLib")
        | files_under("MoDiff/Resources")
        | files_under("Resources")
        | {SCENARIOS_FILE.relative_to(ROOT).as_posix()}
    )
    needed = {p for p in needed if not p.startswith("MoDiff/Testing/")} | files_under("MoDiff/Testing", ".py")
    unlisted = sorted(p for p in needed if p not in listed["scripts"] | listed["resources"]
                      and not _url_names(p, listed["urls"]))
    assert not unlisted, (
        "not listed in MoDiff/CMakeLists.txt, so missing from the packaged extension "
        f"(add them to MODIFF_LIB_SCRIPTS / MODIFF_LIB_RESOURCES / MODULE_PYTHON_RESOURCES): {unlisted}"
    )
    assert "MoDiffLib/mrml/cine.py" in listed["scripts"] and "MoDiff/MoDiff.py" in listed["scripts"]


def test_extension_icon_is_a_128_pixel_png_named_by_the_icon_url():
    listed = listed_files()
    for path in ("Resources/Icons/MoDiff.png", "MoDiff/Resources/Icons/MoDiff.png"):
        data = (ROOT / path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (128, 128), f"{path} is {width}x{height}"
    assert _url_names("Resources/Icons/MoDiff.png", listed["urls"])
    assert _url_names("Resources/Screenshots/MoDiff-cine.png", listed["urls"])


# -- the module file --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def module_ast() -> ast.Module:
    source = MODULE_FILE.read_text(encoding="utf-8")
    compile(source, str(MODULE_FILE), "exec")
    return ast.parse(source)


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else ast.unparse(b) for b in cls.bases]


def test_module_has_the_four_template_classes_in_order(module_ast):
    order = [c.name for c in module_ast.body if isinstance(c, ast.ClassDef) and c.name.startswith("MoDiff")]
    expected = ["MoDiff", "MoDiffWidget", "MoDiffLogic", "MoDiffTest"]
    assert [n for n in order if n in expected] == expected
    classes = _classes(module_ast)
    assert _base_names(classes["MoDiff"]) == ["ScriptedLoadableModule"]
    assert "ScriptedLoadableModuleWidget" in _base_names(classes["MoDiffWidget"])
    assert _base_names(classes["MoDiffLogic"]) == ["ScriptedLoadableModuleLogic"]
    assert _base_names(classes["MoDiffTest"]) == ["ScriptedLoadableModuleTest"]


def _assigned_attributes(cls: ast.ClassDef, owner: str) -> dict[str, ast.expr]:
    found = {}
    for node in ast.walk(cls):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Attribute) and ast.unparse(target.value) == owner:
                    found[target.attr] = node.value
    return found


def test_module_metadata(module_ast):
    meta = _assigned_attributes(_classes(module_ast)["MoDiff"], "self.parent")
    for key in ("title", "categories", "contributors", "helpText", "acknowledgementText"):
        assert key in meta, f"MoDiff does not set parent.{key}"
    text = ast.unparse(meta["helpText"]).lower()
    assert "synthetic" in text and "not a diagnosis" in text and "research" in text
    assert "temporal differential fields" in ast.unparse(meta["acknowledgementText"]).lower()
    assert "'Sequences'" in ast.unparse(meta["categories"]) or '"Sequences"' in ast.unparse(meta["categories"])


def test_self_test_runs_every_test_method_and_every_shared_scenario(module_ast):
    test_class = _classes(module_ast)["MoDiffTest"]
    methods = {f.name: f for f in test_class.body if isinstance(f, ast.FunctionDef)}
    tests = [name for name in methods if name.startswith("test_")]
    assert "runTest" in methods and tests
    run_calls = {n.attr for n in ast.walk(methods["runTest"]) if isinstance(n, ast.Attribute)}
    assert set(tests) <= run_calls, f"runTest skips {sorted(set(tests) - run_calls)}"

    scenarios = ast.parse(SCENARIOS_FILE.read_text(encoding="utf-8"))
    defined = {f.name for f in scenarios.body if isinstance(f, ast.FunctionDef) and f.name.startswith("scenario_")}
    shared_list = [
        e.id for node in scenarios.body if isinstance(node, ast.Assign)
        and any(getattr(t, "id", "") == "SCENARIOS" for t in node.targets) for e in node.value.elts
    ]
    assert set(shared_list) == defined, "SCENARIOS must list every scenario_ function"
    called = {n.attr for f in methods.values() for n in ast.walk(f)
              if isinstance(n, ast.Attribute) and n.attr.startswith("scenario_")}
    assert called <= defined, f"the self-test calls unknown scenarios {sorted(called - defined)}"
    assert defined <= called, f"scenarios not run in Slicer's self-test: {sorted(defined - called)}"


def _ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(UI_FILE)
    return {w.get("name"): w for w in tree.iter("widget")}


def test_ui_file_has_every_widget_the_module_uses(module_ast):
    widgets = _ui_widgets()
    used = {n.attr for n in ast.walk(module_ast)
            if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self.ui"}
    assert used, "the widget uses no .ui widgets"
    assert used <= set(widgets), f"used but not in MoDiff.ui: {sorted(used - set(widgets))}"
    assert widgets["planningCollapsibleButton"].get("class") == "ctkCollapsibleButton"
    assert widgets["applyButton"].get("class") == "QPushButton"
    loads = [n for n in ast.walk(module_ast) if isinstance(n, ast.Call) and ast.unparse(n.func) == "self.resourcePath"]
    assert [ast.literal_eval(c.args[0]) for c in loads] == ["UI/MoDiff.ui"]


def test_ui_binds_only_parameters_of_the_parameter_node(module_ast):
    parameter_class = _classes(module_ast)["MoDiffParameterNode"]
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in parameter_class.decorator_list)
    fields = {s.target.id: s for s in parameter_class.body if isinstance(s, ast.AnnAssign)}
    for name in ("inputVolume", "numberOfFrames", "amplitude", "model", "device", "steps", "seed", "outputSequence"):
        assert name in fields, f"parameter {name} missing"
    bound = {}
    for widget in ET.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert set(bound) <= set(fields), f"bound to unknown parameters: {sorted(set(bound) - set(fields))}"
    assert bound["inputVolume"] == "qMRMLNodeComboBox" and bound["outputSequence"] == "qMRMLNodeComboBox"
    assert bound["device"] == "QComboBox" and "Choice" in ast.unparse(fields["device"].annotation)
    assert ast.literal_eval(fields["numberOfFrames"].value) == 10


def test_module_imports_nothing_heavy_at_load_time(module_ast):
    """torch and the generator's packages are imported in functions only (never at module load)."""
    top_imports = set()
    for node in module_ast.body:
        if isinstance(node, ast.Import):
            top_imports.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_imports.add(node.module)
    heavy = {"torch", "monai", "nibabel", "safetensors", "skimage", "MoDiffLib.io", "MoDiffLib.models"}
    assert not top_imports & heavy, sorted(top_imports & heavy)
    pip_calls = [n for n in ast.walk(module_ast) if isinstance(n, ast.Call) and "pip_install" in ast.unparse(n.func)]
    assert pip_calls, "no dependency installation found"
    for call in pip_calls:  # only inside ensureDependencies, which asks first
        owner = next(f for f in ast.walk(module_ast) if isinstance(f, ast.FunctionDef) and call in ast.walk(f))
        assert owner.name == "ensureDependencies"
