"""The Slicer extension is complete and the module follows Slicer's scripted-module template.

* Every file the packaged extension needs is listed in the CMake files (a file that is not
  listed is silently missing from the extension), and every listed file exists (else the build
  fails). Adding a file to MoDiffLib/, MoDiff/ or Resources/ without listing it in
  MoDiff/CMakeLists.txt makes this test fail: that is intended. Nothing of Testing/ is packaged:
  the scenarios the self-test shares with pytest are the module's test package, MoDiff/MoDiffTesting.
* MoDiff/MoDiff.py is checked by parsing it (it imports Slicer's Qt modules, which do not exist
  outside the Slicer application): four classes in template order with the right bases, the
  self-test runs every test method, every shared scenario is run by the self-test, the widgets
  the code uses exist in the .ui file, and the .ui binds only to parameters that exist.
* The module's division of labour: the logic shows no dialogs (the widget asks and shows), the
  GUI imports no command module, what it imports at load time needs none of the packages the
  first Apply installs, and the frame count is bounded by MoDiffLib.frame_limits alone.
"""

from __future__ import annotations

import ast
import os
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "MoDiff"
MODULE_FILE = MODULE_DIR / "MoDiff.py"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
ROOT_CMAKE = ROOT / "CMakeLists.txt"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MoDiff.ui"
SCENARIOS_FILE = MODULE_DIR / "MoDiffTesting" / "mrml_scenarios.py"
PIPELINE_FILE = ROOT / "MoDiffLib" / "pipeline.py"
#: The library modules the logic delegates its work to (no Qt, no dialogs there either).
LOGIC_LIBRARY = [ROOT / "MoDiffLib" / p for p in ("mrml/jobs.py", "mrml/requests.py", "frame_limits.py",
                                                  "planning/command.py", "process_runner.py")]
#: Packages the first Apply installs: nothing MoDiff.py imports while Slicer loads it may need them.
INSTALLED_ON_APPLY = ("torch", "safetensors", "skimage", "scipy", "nibabel", "nrrd", "matplotlib", "monai")


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
    needed = files_under("MoDiff", ".py") | files_under("MoDiffLib") | files_under("MoDiff/Resources") | files_under("Resources")
    unlisted = sorted(p for p in needed if p not in listed["scripts"] | listed["resources"]
                      and not _url_names(p, listed["urls"]))
    assert not unlisted, (
        "not listed in MoDiff/CMakeLists.txt, so missing from the packaged extension "
        f"(add them to MODIFF_LIB_SCRIPTS / MODIFF_LIB_RESOURCES / MODULE_PYTHON_RESOURCES): {unlisted}"
    )
    assert "MoDiffLib/mrml/cine.py" in listed["scripts"] and "MoDiff/MoDiff.py" in listed["scripts"]


def test_the_scenarios_are_the_module_test_package_and_nothing_of_testing_is_packaged():
    listed = listed_files()
    packaged = listed["scripts"] | listed["resources"]
    assert not [p for p in packaged if p.startswith("Testing/")], "files of Testing/ are installed with the product"
    assert {"MoDiff/MoDiffTesting/__init__.py", SCENARIOS_FILE.relative_to(ROOT).as_posix()} <= listed["scripts"]
    assert not (ROOT / "Testing" / "Python" / "mrml_scenarios.py").exists(), "a second copy of the scenarios"


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


def _imports(tree: ast.AST) -> list[str]:
    """Every module an import statement in ``tree`` names (``from a import b`` gives ``a`` and ``a.b``)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def _top_level_library_imports(tree: ast.Module) -> list[str]:
    return sorted({n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
                   and n.module.startswith("MoDiffLib")})


def _blocked_import_code(blocked: tuple[str, ...], modules: list[str], then: str = "") -> str:
    """Python code that imports ``modules`` with every package of ``blocked`` unimportable."""
    return (
        "import builtins\n"
        "real = builtins.__import__\n"
        f"blocked = {tuple(blocked)!r}\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in blocked:\n"
        "        raise ImportError('blocked ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        + "".join(f"import {m}\n" for m in modules) + then
    )


def test_module_loads_without_the_packages_the_first_apply_installs(module_ast):
    """What Slicer runs when it loads MoDiff.py needs no torch, scipy, ...: the module must load (and
    offer to install them) in a Slicer that has none of them. Everything else is imported in functions."""
    top_imports = {n.split(".")[0] for n in _imports(ast.Module(body=[n for n in module_ast.body
                                                                       if isinstance(n, (ast.Import, ast.ImportFrom))]))}
    assert not top_imports & set(INSTALLED_ON_APPLY), sorted(top_imports & set(INSTALLED_ON_APPLY))
    library = _top_level_library_imports(module_ast)
    assert "MoDiffLib.frame_limits" in library and not [m for m in library if m.startswith("MoDiffLib.mrml")]
    code = _blocked_import_code(INSTALLED_ON_APPLY + ("slicer", "vtk", "qt", "ctk"), library)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_gui_imports_no_command_module(module_ast):
    """The panel builds its command lines from library modules; MoDiffLib.commands is the CLI's own."""
    named = [n for n in _imports(module_ast) if n.startswith("MoDiffLib.commands") or n == "MoDiffLib.commands"]
    assert not named, f"MoDiff.py imports command modules: {named}"
    for path in LOGIC_LIBRARY:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level and n.module
                    and n.module.split(".")[0] == "commands"]
        assert not relative and not [n for n in _imports(tree) if "commands" in n.split(".")], path


def test_what_the_logic_uses_loads_no_command_module():
    """Importing every MoDiffLib module that MoDiff.py imports (at load time or in its methods) loads no
    module of MoDiffLib.commands (needs slicer-core: the MRML glue is among them)."""
    from slicer_headless import require_slicer

    require_slicer()
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    library = sorted({n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                      and n.module.startswith("MoDiffLib")})
    assert "MoDiffLib.mrml.jobs" in library and "MoDiffLib.mrml.requests" in library
    code = _blocked_import_code((), library, "import sys\n"
                                "print(sorted(m for m in sys.modules if m.startswith('MoDiffLib.commands')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"loaded by the module's imports: {out.stdout.strip()}"


#: slicer.util functions that open a dialog, a wait cursor or install packages: the widget's business.
_DIALOG_CALLS = {"errorDisplay", "warningDisplay", "infoDisplay", "messageBox", "confirmOkCancelDisplay",
                 "confirmYesNoDisplay", "confirmRetryCloseDisplay", "delayDisplay", "tryWithErrorDisplay",
                 "WaitCursor", "pip_install", "pip_uninstall"}


def _dialog_calls(tree: ast.AST) -> list[str]:
    return [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr in _DIALOG_CALLS]


def test_logic_shows_no_dialogs(module_ast):
    """The logic raises or returns; asking (install packages?) and showing errors is the widget's job."""
    logic = _classes(module_ast)["MoDiffLogic"]
    assert not _dialog_calls(logic), f"MoDiffLogic opens dialogs: {_dialog_calls(logic)}"
    assert not [n for n in ast.walk(logic) if isinstance(n, ast.Name) and n.id in ("qt", "ctk")], "MoDiffLogic uses Qt"
    for name, node in _classes(module_ast).items():
        if name not in ("MoDiffWidget", "MoDiffTest", "_BackgroundTask"):
            assert not _dialog_calls(node), f"{name} opens dialogs: {_dialog_calls(node)}"
    for path in LOGIC_LIBRARY:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not _dialog_calls(tree), f"{path.name} opens dialogs"
        assert not {n.split(".")[0] for n in _imports(tree)} & {"qt", "ctk"}, f"{path.name} imports Qt"
    functions = {f.name: f for f in _classes(module_ast)["MoDiffWidget"].body if isinstance(f, ast.FunctionDef)}
    assert "errorDisplay" in {c.split(".")[-1] for c in _dialog_calls(functions["_showError"])}


def test_packages_are_installed_by_the_widget_after_one_question(module_ast):
    """pip and the PyTorch extension's installTorch run only in the widget, after its one confirmation."""
    widget = _classes(module_ast)["MoDiffWidget"]
    functions = {f.name: f for f in widget.body if isinstance(f, ast.FunctionDef)}
    installers = [f.name for f in ast.walk(module_ast) if isinstance(f, ast.FunctionDef)
                  and any(c.endswith("pip_install") for c in _dialog_calls(f))]
    assert installers and set(installers) <= {"_ensurePackages", "_installTorch"}, installers
    assert all(functions.get(name) is not None for name in installers), "installation outside the widget"
    asks = [c for c in _dialog_calls(functions["_ensurePackages"]) if "confirm" in c]
    assert len(asks) == 1, asks
    torch_calls = [n for n in ast.walk(functions["_installTorch"]) if isinstance(n, ast.Call)
                   and isinstance(n.func, ast.Attribute) and n.func.attr == "installTorch"]
    assert len(torch_calls) == 1, "torch is not installed through PyTorchUtils' installTorch"
    keywords = {k.arg: ast.unparse(k.value) for k in torch_calls[0].keywords}
    assert keywords.get("askConfirmation") == "False", "the PyTorch extension would ask a second time"
    assert "PyTorchUtils" in [n for n in _imports(functions["_installTorch"])]


def test_self_test_imports_the_scenarios_from_the_module_test_package(module_ast):
    """No path to Testing/ and no sys.path change for the scenarios: they are the module's own package."""
    test_class = _classes(module_ast)["MoDiffTest"]
    assert "MoDiffTesting.mrml_scenarios" in _imports(test_class)
    strings = [n.value for n in ast.walk(module_ast) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert not [t for t in strings if "Testing" in t.replace("MoDiffTesting", "")], "MoDiff.py names Testing/"
    path_changes = [f.name for f in ast.walk(module_ast) if isinstance(f, ast.FunctionDef)
                    and "sys.path" in {ast.unparse(n) for n in ast.walk(f) if isinstance(n, ast.Attribute)}]
    assert path_changes == ["_addLibraryFolderToPath"], f"sys.path is changed in {path_changes}"


def test_frame_maximum_comes_from_frame_limits_alone(module_ast):
    """The panel's slider, the logic's check and the pipelines' check read MoDiffLib.frame_limits;
    no frame bound is written into MoDiff.py, its .ui file or the pipeline."""
    imported = {a.name for n in module_ast.body if isinstance(n, ast.ImportFrom) and n.module == "MoDiffLib.frame_limits"
                for a in n.names}
    assert {"MIN_FRAMES", "frame_range"} <= imported
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "max_frames" not in source and "MAX_FRAMES" not in source, "MoDiff.py reads the limit elsewhere"
    fields = {s.target.id: s for s in _classes(module_ast)["MoDiffParameterNode"].body if isinstance(s, ast.AnnAssign)}
    annotation = ast.unparse(fields["numberOfFrames"].annotation)
    assert annotation == "Annotated[int, Minimum(MIN_FRAMES)]", annotation
    logic = {f.name: f for f in _classes(module_ast)["MoDiffLogic"].body if isinstance(f, ast.FunctionDef)}
    assert "frame_range" in {ast.unparse(c.func) for c in ast.walk(logic["frameRange"]) if isinstance(c, ast.Call)}

    slider = _ui_widgets()["numberOfFramesSliderWidget"]
    assert slider.get("class") == "ctkSliderWidget", slider.get("class")
    properties = {p.get("name"): p for p in slider.findall("property")}
    assert properties["decimals"].find("number").text == "0", "the slider must hold whole frame counts"
    assert not {"minimum", "maximum", "value"} & set(properties), "MoDiff.ui fixes a frame bound"
    assert "SlicerParameterName" not in properties, "the wrapper binds ctkSliderWidget to float only; wire it by hand"
    assert "numberOfFramesSpinBox" not in _ui_widgets()

    pipeline = ast.parse(PIPELINE_FILE.read_text(encoding="utf-8"))
    check = next(f for f in pipeline.body if isinstance(f, ast.FunctionDef) and f.name == "check_generate_request")
    calls = {ast.unparse(c.func) for c in ast.walk(check) if isinstance(c, ast.Call)}
    assert "check_frame_count" in calls, "the pipelines do not check the frame count with frame_limits"
    assert not [c for c in ast.walk(check) if isinstance(c, ast.Compare) and "max_frames" in ast.unparse(c)]
    requests = (ROOT / "MoDiffLib" / "mrml" / "requests.py").read_text(encoding="utf-8")
    assert "check_frame_count(" in requests and "max_frames(" in requests


def test_the_panels_devices_are_the_ones_the_request_check_takes(module_ast):
    """MoDiff.py repeats MoDiffLib.mrml.requests.DEVICES (that module needs scipy, which may not be
    installed when Slicer loads the panel); the two lists must not drift apart."""
    def devices(tree: ast.Module):
        return next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", "") == "DEVICES" for t in n.targets))

    requests = ast.parse((ROOT / "MoDiffLib" / "mrml" / "requests.py").read_text(encoding="utf-8"))
    assert devices(module_ast) == devices(requests) and devices(requests)[0] == "auto"
