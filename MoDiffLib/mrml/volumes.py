"""Scalar volume nodes <-> :class:`~MoDiffLib.volume.Volume`, with exact geometry.

Geometry is carried as the node's own IJK-to-RAS matrix (``GetIJKToRASMatrix``), i.e. in the
node's local coordinates. A parent transform of the input is not applied to the voxels; the
cine built from it is put under the same transform instead (see :mod:`.cine`), so the cine
overlays the input wherever the user moved it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtkmodules.util import numpy_support

from ..atomic import atomic_file
from ..errors import InputError, OutputError
from ..volume import Geometry, Volume

#: The only node class MoDiff animates (subclasses such as label maps are refused).
SCALAR_VOLUME_CLASS = "vtkMRMLScalarVolumeNode"


def _matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _numpy_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_of(node) -> np.ndarray:
    """The node's IJK-to-RAS matrix (local coordinates) as a 4x4 float array."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return _matrix_to_numpy(matrix)


def _describe(node) -> str:
    name = node.GetName() or node.GetID() or "unnamed node"
    return f"'{name}'"


def check_volume_node(node, what: str = "input volume") -> tuple[int, int, int]:
    """Check that ``node`` is a 3D single-component scalar volume MoDiff can animate.

    Returns:
        the voxel array shape ``(K, J, I)``.

    Raises:
        InputError: no node, not a volume, a label map, a vector/tensor/colour volume, no voxels,
            or a single slice (a 2D image).
    """
    if node is None:
        raise InputError(f"no {what} selected")
    if not hasattr(node, "IsA") or not node.IsA("vtkMRMLNode"):
        raise InputError(f"the {what} must be a volume node, got {type(node).__name__}")
    label = _describe(node)
    if not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"{what} {label} is a {node.GetClassName()}, not a volume")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(
            f"{what} {label} is a label map (segment labels); MoDiff needs an intensity image such as a CT or MR volume"
        )
    if node.IsA("vtkMRMLTensorVolumeNode") or not node.IsA(SCALAR_VOLUME_CLASS):
        raise InputError(
            f"{what} {label} is a {node.GetClassName()} (vector, tensor or colour voxels); "
            "MoDiff needs a scalar intensity volume"
        )
    image = node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None or scalars.GetNumberOfTuples() == 0:
        raise InputError(f"{what} {label} has no voxels")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise InputError(
            f"{what} {label} has {components} values per voxel (a vector or colour image); "
            "MoDiff needs one intensity per voxel"
        )
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(
            f"{what} {label} is a single slice ({dims[0]}x{dims[1]}x{dims[2]} voxels); "
            "MoDiff needs a 3D volume with at least 2 voxels along every axis"
        )
    return (int(dims[2]), int(dims[1]), int(dims[0]))


def _array_of(node) -> np.ndarray:
    """A copy of the node's voxels as ``array[k, j, i]`` (scalar type kept)."""
    image = node.GetImageData()
    dims = image.GetDimensions()
    flat = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return np.array(flat.reshape(dims[2], dims[1], dims[0]), copy=True)


def volume_from_node(node) -> Volume:
    """The voxels and exact IJK-to-RAS geometry of a scalar volume node, as a :class:`Volume`.

    Raises:
        InputError: see :func:`check_volume_node`; also non-finite voxels or a degenerate matrix.
    """
    shape = check_volume_node(node)
    geometry = Geometry.from_ijk_to_ras(shape, ijk_to_ras_of(node))
    return Volume(_array_of(node), geometry, node.GetName() or "volume")


def _image_data(array: np.ndarray, deep: bool = True) -> vtk.vtkImageData:
    """A vtkImageData holding ``array[k, j, i]`` (origin 0, spacing 1: geometry lives in the node).

    With ``deep=False`` the image shares the array's memory (no copy).
    """
    a = np.asarray(array)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    elif a.dtype == np.float16:
        a = a.astype(np.float32)
    a = np.ascontiguousarray(a)
    image = vtk.vtkImageData()
    image.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    scalars = numpy_support.numpy_to_vtk(a.ravel(), deep=deep, array_type=numpy_support.get_vtk_array_type(a.dtype))
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)  # with deep=False, numpy_to_vtk keeps a reference to ``a``
    return image


def set_node_voxels(node, array: np.ndarray, ijk_to_ras: np.ndarray, deep: bool = True) -> None:
    """Give a scalar volume node new voxels and IJK-to-RAS matrix (both replaced at once)."""
    node.SetIJKToRASMatrix(_numpy_to_matrix(np.asarray(ijk_to_ras, dtype=float)))
    node.SetAndObserveImageData(_image_data(array, deep=deep))


def node_from_volume(scene, volume: Volume, name: str):
    """Add a scalar volume node holding ``volume`` (voxels copied) to ``scene``.

    The node gets default display nodes so it can be shown at once.

    Raises:
        InputError: ``volume`` is a vector volume (displacement fields are not scalar images).
    """
    if not isinstance(volume, Volume):
        raise InputError(f"expected a Volume, got {type(volume).__name__}")
    if volume.is_vector:
        raise InputError(f"{volume.name} is a vector volume; only scalar volumes become volume nodes")
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    set_node_voxels(node, volume.array, volume.geometry.ijk_to_ras())
    scene.AddNode(node)
    node.CreateDefaultDisplayNodes()
    return node


def write_volume_node(node, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a scalar volume node to ``path`` (.nrrd, .nii.gz, .mha, ...) with Slicer's own writer.

    The file is written under a temporary name and renamed when complete. The scene is not
    changed (no storage node is added to it).

    Raises:
        InputError: the node is not a volume MoDiff accepts.
        OutputError: the file exists (without ``overwrite``), or writing failed.
    """
    check_volume_node(node)
    return write_with_storage_node(slicer.vtkMRMLVolumeArchetypeStorageNode(), node, path, overwrite,
                                   f"volume {_describe(node)}")


def write_with_storage_node(storage, node, path: str | os.PathLike, overwrite: bool, what: str) -> Path:
    """Write ``node`` through the Slicer storage node ``storage`` (compressed), atomically: under a
    temporary name renamed when complete; ``what`` names the node in the error."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        storage.SetFileName(str(tmp))
        storage.SetUseCompression(True)
        if not storage.WriteData(node) or not tmp.exists():
            raise OutputError(f"Slicer could not write {what} to '{path}'")
    return Path(path)
