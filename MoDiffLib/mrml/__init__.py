"""MRML glue: MoDiff volumes and cines as 3D Slicer nodes.

The only part of :mod:`MoDiffLib` that imports ``slicer`` and ``vtk``; the rest of the library
stays importable without Slicer. Everything here works both inside the Slicer application and
with the Qt-free ``slicer-core`` package (the same C++ MRML classes), so the tests that run
under pytest exercise the code that runs in Slicer.

* :mod:`.volumes` -- scalar volume node <-> :class:`~MoDiffLib.volume.Volume` with the exact
  IJK-to-RAS matrix, and input checks that reject what MoDiff cannot animate.
* :mod:`.cine` -- a :class:`~MoDiffLib.volume.VolumeSequence` as a Sequences-module cine
  (sequence node + browser + proxy volume), provenance attributes, ``.seq.nrrd`` saving.
"""

from .cine import (
    ATTRIBUTE_PREFIX,
    DEFAULT_PLAYBACK_FPS,
    INDEX_NAME,
    INPUT_ID_ATTRIBUTE,
    build_cine,
    cine_warnings,
    find_browser,
    find_cine,
    provenance_attributes,
    save_cine,
    sequence_from_node,
    show_in_slice_views,
)
from .planning import (
    PlanNodes,
    cine_geometry,
    find_plan_nodes,
    label_names_of,
    labelmap_from_node,
    markup_position,
    recommended_frame_of,
    select_frame,
    show_plan,
    world_to_cine,
)
from .volumes import check_volume_node, ijk_to_ras_of, node_from_volume, volume_from_node, write_volume_node

__all__ = [
    "ATTRIBUTE_PREFIX",
    "DEFAULT_PLAYBACK_FPS",
    "INDEX_NAME",
    "INPUT_ID_ATTRIBUTE",
    "PlanNodes",
    "build_cine",
    "cine_warnings",
    "check_volume_node",
    "cine_geometry",
    "find_browser",
    "find_cine",
    "find_plan_nodes",
    "ijk_to_ras_of",
    "label_names_of",
    "labelmap_from_node",
    "markup_position",
    "node_from_volume",
    "provenance_attributes",
    "recommended_frame_of",
    "save_cine",
    "select_frame",
    "sequence_from_node",
    "show_in_slice_views",
    "show_plan",
    "volume_from_node",
    "world_to_cine",
    "write_volume_node",
]
