"""``modiff view``: the cine and its puncture plan in a web browser.

* :mod:`.inputs` -- finding and reading what is shown: the cine (a file, or the one in a folder),
  its plan folder, the plan's motion fields and the risk label map, checked against each other.
* :mod:`.state` -- :class:`ViewerState`: the current frame, play / pause, and what each frame
  shows (path and status, target, structure clearances, timeline cells, planning curves). No UI.
* :mod:`.curves` -- the planning curves as an SVG with a cursor on the current frame.
* :mod:`.scene` -- the MRML nodes (slicer-core): cine sequence and browser, plan overlays, risk
  label maps and surface models, all following the browser.
* :mod:`.app` -- the trame / trame-slicer page (the optional extra ``modiff[web]``).

Importing this package imports neither trame nor slicer; :mod:`.scene` needs slicer-core and
:mod:`.app` the web extra.
"""

from .inputs import ViewerInputs, find_cine, find_plan, load_inputs
from .state import FrameView, PathView, StructureView, TimelineCell, ViewerState

__all__ = [
    "FrameView",
    "PathView",
    "StructureView",
    "TimelineCell",
    "ViewerInputs",
    "ViewerState",
    "find_cine",
    "find_plan",
    "load_inputs",
]
