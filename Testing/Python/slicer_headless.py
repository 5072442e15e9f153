"""A headless 3D Slicer for tests: a real MRML scene with the module logics MoDiff uses.

slicer-core (PyPI) is Slicer's MRML, Logic and loadable-module logic C++ code without Qt, so a
test that passes against it passes against Slicer's own classes. It is a test dependency of
MoDiff (``pip install -e .[test]``).

Usage in a test module (a plain import, not a conftest)::

    from slicer_headless import make_scene, require_slicer

    slicer = require_slicer()  # skips the module, with the reason, if slicer-core is missing

    def test_something():
        with make_scene() as hs:
            seq = hs.scene.AddNewNodeByClass("vtkMRMLSequenceNode")
            browser = hs.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode")
            hs.logic("Sequences") ...

What the scene set-up does (section 3 of the design notes) and what was checked here:

* a ``vtkMRMLScene`` and a ``vtkSlicerApplicationLogic`` that has it, with empty slice and view
  logic collections and a private home/share folder (so the color logic finds its folder and
  logs no error), the default color nodes (added by the Colors logic), and the Volumes,
  Sequences, Markups, Transforms and SubjectHierarchy logics, each given the application logic
  and the scene and registered with ``SetModuleLogic`` under its module name;
* Python references to every logic are kept on the object for the scene's lifetime (a logic
  whose last Python reference goes away is deleted while the scene still calls it);
* ``slicer.mrmlScene`` is set to the scene while it is open (``slicer.util.addVolumeFromArray``
  and other helpers use it) and restored on :meth:`HeadlessSlicer.close`.

Checked against slicer-core 5.13: storage nodes (``vtkMRMLVolumeArchetypeStorageNode``,
``vtkMRMLVolumeSequenceStorageNode``) read and write on a bare ``vtkMRMLScene`` with no logic at
all; a ``vtkMRMLSequenceBrowserNode`` cannot be created without the Sequences logic (the scene
does not know the class), so tests of browsers, proxies and playback need :func:`make_scene`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

#: Module name -> slicer-core class of the module logics registered (besides "Colors").
MODULE_LOGICS = (
    ("Volumes", "vtkSlicerVolumesLogic"),
    ("Sequences", "vtkSlicerSequencesLogic"),
    ("Markups", "vtkSlicerMarkupsLogic"),
    ("Transforms", "vtkSlicerTransformLogic"),
    ("SubjectHierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Segmentations", "vtkSlicerSegmentationsModuleLogic"),
)

#: Environment variables that make a missing slicer-core an error instead of a skip.
REQUIRE_ENV = ("CI", "MODIFF_REQUIRE_SLICER")


def require_slicer() -> ModuleType:
    """Import slicer-core's ``slicer`` package, or skip the caller with the reason.

    Works at module level (skips the whole module) and inside a test. Where slicer-core must be
    present (environment variable ``CI`` or ``MODIFF_REQUIRE_SLICER`` set) a missing package
    fails instead, so CI never passes by skipping the Slicer tests.
    """
    try:
        import slicer  # noqa: PLC0415 - optional test dependency
    except ImportError as e:
        reason = f"slicer-core is not importable ({e}); install the test extras: pip install -e '.[test]'"
        if any(os.environ.get(name) for name in REQUIRE_ENV):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.fail("the 'slicer' package found is not slicer-core (it has no vtkMRMLScene)", pytrace=False)
    return slicer


class HeadlessSlicer:
    """A MRML scene with Slicer's application logic and module logics, without Qt.

    Attributes:
        slicer: the ``slicer`` package (slicer-core).
        scene: the ``vtkMRMLScene``.
        app_logic: the ``vtkSlicerApplicationLogic`` that has the scene.
        logics: module name -> module logic ("Colors", "Volumes", "Sequences", "Markups",
            "Transforms", "SubjectHierarchy", "Segmentations").
    """

    def __init__(self, make_current: bool = True) -> None:
        import vtk  # noqa: PLC0415 - the vtk slicer-core pins

        self.slicer = slicer = require_slicer()
        self._home = tempfile.TemporaryDirectory(prefix="modiff-slicer-home-")
        share = "share/Slicer"
        (Path(self._home.name) / share / "ColorFiles").mkdir(parents=True)

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetHomeDirectory(self._home.name)
        self.app_logic.SetShareDirectory(share)
        self.app_logic.SetMRMLScene(self.scene)
        self._slice_logics = vtk.vtkCollection()
        self._view_logics = vtk.vtkCollection()
        self.app_logic.SetSliceLogics(self._slice_logics)
        self.app_logic.SetViewLogics(self._view_logics)

        colors = slicer.vtkSlicerColorLogic()
        colors.SetMRMLApplicationLogic(self.app_logic)
        colors.SetMRMLScene(self.scene)  # adds the default color nodes
        self.app_logic.SetColorLogic(colors)
        self.app_logic.SetModuleLogic("Colors", colors)
        self.logics = {"Colors": colors}
        for name, class_name in MODULE_LOGICS:
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.app_logic)
            logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic

        self._made_current = make_current
        self._previous_scene = getattr(slicer, "mrmlScene", None)
        if make_current:
            slicer.mrmlScene = self.scene
        self.closed = False

    # -- access -------------------------------------------------------------------------------
    def logic(self, name: str):
        """The module logic registered under ``name`` (e.g. ``"Sequences"``)."""
        if name not in self.logics:
            raise KeyError(f"no logic '{name}'; registered: {', '.join(self.logics)}")
        return self.logics[name]

    @property
    def volumes_logic(self):
        return self.logics["Volumes"]

    @property
    def sequences_logic(self):
        return self.logics["Sequences"]

    @property
    def markups_logic(self):
        return self.logics["Markups"]

    @property
    def transforms_logic(self):
        return self.logics["Transforms"]

    @property
    def subject_hierarchy_logic(self):
        return self.logics["SubjectHierarchy"]

    @property
    def color_logic(self):
        return self.logics["Colors"]

    # -- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Empty the scene, detach the logics (last registered first) and drop the references."""
        if self.closed:
            return
        self.closed = True
        if self._made_current and getattr(self.slicer, "mrmlScene", None) is self.scene:
            self.slicer.mrmlScene = self._previous_scene
        self.scene.Clear(1)
        for name in reversed(list(self.logics)):
            self.logics[name].SetMRMLScene(None)
        self.app_logic.SetMRMLScene(None)
        self.logics.clear()
        self._home.cleanup()

    def __enter__(self) -> "HeadlessSlicer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_scene(make_current: bool = True) -> HeadlessSlicer:
    """A fresh headless Slicer scene with the module logics (see :class:`HeadlessSlicer`).

    Use it as a context manager, or call ``close()`` when done. With ``make_current`` the
    scene is also ``slicer.mrmlScene`` while it is open.
    """
    return HeadlessSlicer(make_current)
