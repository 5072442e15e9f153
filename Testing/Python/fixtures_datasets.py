"""Tiny synthetic copies of the public data set layouts, written into a test's tmp_path.

Each builder writes files with the real names, folder structure, header fields and tags of its
data set, at a few voxels per axis, and voxel values that say which frame they belong to
(so tests can check frame order and selection). No patient data.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

# -- ACDC ---------------------------------------------------------------------------------------

#: In-plane and slice spacing of the synthetic ACDC cines (mm); real ACDC is ~1.2-1.9 x 5-10.
ACDC_SPACING = (1.5625, 1.5625, 10.0)
ACDC_SHAPE_XYZ = (8, 7, 3)


def acdc_frame_value(patient: int, frame0: int) -> int:
    """The constant offset of every voxel of ``frame0`` (0-based) of ``patient``'s cine."""
    return 100 * patient + 2 * frame0  # < 100 per patient for up to 35 frames (+ ramp 0..6)


def _acdc_nifti(data_xyz: np.ndarray, spacing=ACDC_SPACING) -> nib.Nifti1Image:
    """A NIfTI with ACDC's header quirk: true spacing in the qform (and pixdim), a unit-scale
    sform with the same axes (ITK warns 'unexpected scales in sform' and takes the qform)."""
    image = nib.Nifti1Image(data_xyz, None)
    qform = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    image.header.set_qform(qform, code=1)
    image.header.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=1)
    zooms = tuple(spacing) + ((1.0,) if data_xyz.ndim == 4 else ())
    image.header.set_zooms(zooms)
    return image


def acdc_labels(frame0: int, ed0: int) -> np.ndarray:
    """(X, Y, Z) label map; the LV (3) is larger at ED than at ES so the two are told apart."""
    labels = np.zeros(ACDC_SHAPE_XYZ, dtype=np.uint8)
    labels[1:4, 1:3, :] = 1  # RV
    labels[4:8, 1:6, :] = 2  # myocardium
    if frame0 == ed0:
        labels[5:7, 2:5, :] = 3
    else:
        labels[5:6, 3:4, :] = 3
    return labels


def make_acdc_patient(
    folder: Path,
    patient: int,
    num_frames: int = 6,
    ed: int = 1,
    es: int = 4,
    group: str = "DCM",
    info_overrides: dict[str, str | None] | None = None,
    with_gt: bool = True,
) -> Path:
    """Write ``folder/patientNNN`` exactly as ACDC ships it; ``ed``/``es`` are 1-based.

    ``info_overrides`` replaces (value) or removes (None) Info.cfg fields.
    """
    name = f"patient{patient:03d}"
    d = folder / name
    d.mkdir(parents=True, exist_ok=True)
    info = {"ED": str(ed), "ES": str(es), "Group": group, "Height": "184.0", "NbFrame": str(num_frames), "Weight": "95.0"}
    for key, value in (info_overrides or {}).items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    (d / "Info.cfg").write_text("".join(f"{k}: {v}\n" for k, v in info.items()))
    x, y, z = ACDC_SHAPE_XYZ
    ramp = np.arange(x * y * z, dtype=np.int16).reshape(x, y, z) % 7
    cine = np.stack([ramp + acdc_frame_value(patient, t) for t in range(num_frames)], axis=-1).astype(np.int16)
    nib.save(_acdc_nifti(cine), d / f"{name}_4d.nii.gz")
    for frame1 in sorted({ed, es}):
        nib.save(_acdc_nifti(cine[..., frame1 - 1]), d / f"{name}_frame{frame1:02d}.nii.gz")
        if with_gt:
            nib.save(_acdc_nifti(acdc_labels(frame1 - 1, ed - 1)), d / f"{name}_frame{frame1:02d}_gt.nii.gz")
    return d


def make_acdc(root: Path, patients: dict[int, dict] | list[int]) -> Path:
    """``root/database/{training,testing}/patientNNN`` (101-150 go to testing, as in ACDC)."""
    specs = patients if isinstance(patients, dict) else {p: {} for p in patients}
    for number, kwargs in specs.items():
        part = "testing" if number > 100 else "training"
        make_acdc_patient(root / "database" / part, number, **kwargs)
    return root


# -- TCIA 4D-Lung (NBIA layout) ----------------------------------------------------------------

LUNG_SPACING = (0.9765625, 0.9765625, 3.0)
LUNG_SHAPE_KJI = (4, 6, 5)
#: LPS position of the first slice (most inferior) of every synthetic 4DCT phase.
LUNG_ORIGIN_LPS = (-250.0, -180.5, -120.0)


def lung_phase_hu(phase_percent: float) -> int:
    return -900 + int(round(phase_percent)) * 3


def write_dicom_series(
    folder: Path,
    hu_kji: np.ndarray,
    tags: dict[str, str],
    spacing=LUNG_SPACING,
    origin_lps=LUNG_ORIGIN_LPS,
    superior_first: bool = True,
) -> None:
    """One CT series as ``1-001.dcm`` .. with position/orientation tags; HU stored as HU + 1024
    (RescaleIntercept -1024). With ``superior_first`` file 1-001 is the top slice, so a reader
    that trusted file names over positions would flip the volume."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    num_slices = hu_kji.shape[0]
    order = list(range(num_slices))[::-1] if superior_first else list(range(num_slices))
    for instance, k in enumerate(order, start=1):
        image = sitk.GetImageFromArray(hu_kji[k].astype(np.int16))
        image.SetSpacing(spacing[:2])
        z = origin_lps[2] + k * spacing[2]
        slice_tags = dict(tags)
        slice_tags.update({
            "0008|0018": f"{tags['0020|000e']}.{instance}",
            "0020|0013": str(instance),
            "0020|0032": f"{origin_lps[0]}\\{origin_lps[1]}\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0028|1052": "-1024",
            "0028|1053": "1",
        })
        for key, value in slice_tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"1-{instance:03d}.dcm"))
        writer.Execute(image)


def _element(group: int, elem: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB") else b" "
    if vr in ("OB", "OW", "SQ", "UN", "UT"):
        return struct.pack("<HH2sHI", group, elem, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr.encode(), len(value)) + value


def write_rtstruct_stub_file(path: Path, description: str, patient_id: str) -> None:
    """A DICOM file without pixel data (Modality RTSTRUCT), as NBIA puts next to each phase."""
    sop_class = b"1.2.840.10008.5.1.4.1.1.481.3"
    meta = (_element(2, 1, "OB", b"\0\1") + _element(2, 2, "UI", sop_class) + _element(2, 3, "UI", b"2.25.1")
            + _element(2, 0x10, "UI", b"1.2.840.10008.1.2.1"))
    body = (_element(8, 0x16, "UI", sop_class) + _element(8, 0x18, "UI", b"2.25.1")
            + _element(8, 0x60, "CS", b"RTSTRUCT") + _element(8, 0x103E, "LO", description.encode())
            + _element(0x10, 0x20, "LO", patient_id.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + _element(2, 0, "UL", struct.pack("<I", len(meta))) + meta + body)


def make_4dlung_study(
    root: Path,
    patient_number: int = 100,
    study: str = "07-02-2003-NA-p4-14571",
    phases=tuple(range(0, 100, 10)),
    image_numbers: dict[float, int] | None = None,
    series: str = "S300",
    with_rtstruct: bool = True,
    spacing_of: dict[float, tuple] | None = None,
    origin_of: dict[float, tuple] | None = None,
) -> Path:
    """``root/4D-Lung/<NNN>_HM10395/<study>/1.000000-P4P<NNN><series>I000NN Gated P.0A-xxxxx/1-001.dcm``.

    Phase p gets description ``P4^P<NNN>^<series>^I000NN, Gated, p.0%A`` and HU values
    ``lung_phase_hu(p) + slice index``. ``image_numbers`` maps phases to the ``I`` numbers
    (default 3 + phase index, as in the real data).
    """
    patient = f"{patient_number}_HM10395"
    study_dir = root / "4D-Lung" / patient / study
    for index, phase in enumerate(phases):
        number = (image_numbers or {}).get(phase, 3 + index)
        description = f"P4^P{patient_number}^{series}^I{number:05d}, Gated, {phase:.1f}%A"
        folder_desc = f"P4P{patient_number}{series}I{number:05d} Gated {phase:.1f}A"
        uid_tail = 10000 + 7919 * (index + 1) % 89999
        folder = study_dir / f"1.000000-{folder_desc}-{uid_tail}"
        k = np.arange(LUNG_SHAPE_KJI[0])[:, None, None]
        hu = np.broadcast_to(lung_phase_hu(phase) + k, LUNG_SHAPE_KJI)
        tags = {
            "0008|0060": "CT",
            "0008|103e": description,
            "0010|0020": patient,
            "0020|000d": f"2.25.{zlib.crc32(f'{patient}/{study}'.encode())}",
            "0020|000e": f"2.25.{zlib.crc32(f'{patient}/{study}/{series}/{phase}'.encode())}",
        }
        write_dicom_series(
            folder, np.array(hu), tags,
            spacing=(spacing_of or {}).get(phase, LUNG_SPACING),
            origin_lps=(origin_of or {}).get(phase, LUNG_ORIGIN_LPS),
        )
        if with_rtstruct and index == 0:
            write_rtstruct_stub_file(study_dir / f"1.000000-{folder_desc}-{uid_tail % 1000}.1" / "1-1.dcm",
                                     description, patient)
    return study_dir


# -- DIR-Lab 4DCT ----------------------------------------------------------------------------------


def dirlab_raw(size_xyz, phase_index: int) -> np.ndarray:
    """(Z, Y, X) stored values (HU + 1024) of a synthetic phase: air (-1000 HU) plus a ramp."""
    nx, ny, nz = size_xyz
    hu = np.full((nz, ny, nx), -1000, dtype=np.int32) + 10 * phase_index
    hu += np.arange(nz, dtype=np.int32)[:, None, None]
    return (hu + 1024).astype("<i2")


def make_dirlab_case(
    root: Path,
    case: int = 1,
    size_xyz=(12, 10, 6),
    spacing_mm=(1.16, 1.16, 2.5),
    phases=tuple(range(10)),
    suffix: str = "_s",
    sidecar: bool = True,
    landmarks_300: np.ndarray | None = None,
    with_4d75: bool = True,
    pack: str | None = None,
    extreme_dir: str = "ExtremePhases",
    landmark_name: str = "Case{case}_300_{tag}_xyz.txt",
) -> Path:
    """``root/Case<N>Pack/{Images,ExtremePhases,Sampled4D}`` as DIR-Lab distributes it.

    Case 8 ships as ``pack="Case8Deploy"``, ``extreme_dir="extremePhases"``,
    ``landmark_name="case8_dirLab300_{tag}_xyz.txt"`` and images without the ``_s`` suffix.

    ``phases`` are phase indices (T00 = 0 .. T90 = 9). The 300 landmarks (1-based x y z) of
    T00 are marked in the T00 image by a bright voxel (HU 2000) at landmark 0.
    """
    d = root / (pack or f"Case{case}Pack")
    images = d / "Images"
    images.mkdir(parents=True, exist_ok=True)
    if landmarks_300 is None:
        rng = np.random.default_rng(case)
        landmarks_300 = np.stack([rng.integers(1, n + 1, 300) for n in size_xyz], axis=1)
    t50 = np.clip(landmarks_300 + [0, 1, 2], 1, size_xyz)
    for p in phases:
        raw = dirlab_raw(size_xyz, p)
        if p == 0:
            x, y, z = (int(v) for v in landmarks_300[0])
            raw[z - 1, y - 1, x - 1] = 2000 + 1024
        raw.tofile(images / f"case{case}_T{p}0{suffix}.img")
    extreme = d / extreme_dir
    extreme.mkdir(exist_ok=True)
    for tag, points in (("T00", landmarks_300), ("T50", t50)):
        text = "".join(f"{int(a)}\t{int(b)}\t{int(c)}\t\n" for a, b, c in points)
        (extreme / landmark_name.format(case=case, tag=tag)).write_text(text)
    if with_4d75:
        sampled = d / "Sampled4D"
        sampled.mkdir(exist_ok=True)
        for p in range(6):
            points = np.clip(landmarks_300[:75] + [0, 0, p // 2], 1, size_xyz)
            text = "".join(f"{int(a)}\t{int(b)}\t{int(c)}\n" for a, b, c in points)
            (sampled / f"case{case}_4D-75_T{p}0.txt").write_text(text)
    if sidecar:
        (d / "dirlab_geometry.json").write_text(
            json.dumps({"size_xyz": list(size_xyz), "spacing_mm": list(spacing_mm)})
        )
    return d


# -- folder of 4D files ------------------------------------------------------------------------------


def write_4d_nifti(path: Path, num_frames: int, shape_xyz=(5, 4, 3), spacing=(2.0, 2.0, 3.0), offset=0) -> None:
    """A plain 4D NIfTI (sform = qform) whose frame t holds the value ``offset + t``."""
    data = np.stack([np.full(shape_xyz, offset + t, dtype=np.float32) for t in range(num_frames)], axis=-1)
    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    nib.save(nib.Nifti1Image(data, affine), path)
