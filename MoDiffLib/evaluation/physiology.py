"""Physiological curves of a cine: lung volume and diaphragm position, LV volume and ejection fraction.

Curves of the **ground truth** are measured on its label maps (phantoms: every frame; ACDC: ED and
ES only) and, for CT, on a threshold mask. A **generated cine** has no labels; its curves come
from one of two sources:

* **labels** (where the case has frame-0 labels) -- the frame-0 structure followed by the motion
  estimated on the cine (:func:`MoDiffLib.motion.estimate_motion`): its volume in frame t is the
  frame-0 volume integrated with the Jacobian determinant of that motion
  (:func:`jacobian_volumes_ml`: sub-voxel, no inversion of the field), and the diaphragm position
  is the mean S coordinate of the frame-0 lung boundary points of the dome columns carried
  forward by the motion (:func:`carried_diaphragm_mm`). A perfect cine is scored with the error of
  the motion estimation; ``modiff evaluate`` reports that floor (the true cine scored the same way).
* **threshold** (CT only) -- lung = voxels below :data:`LUNG_THRESHOLD_HU` inside the body, the
  body being the largest connected region above the threshold with its holes filled slice by
  slice along the superior axis (:func:`lung_mask_threshold`), measured identically on the truth
  and on every cine; no registration is involved.

Curves:

* ``lung_volume_ml`` -- lung mask (lungs with their vessels and nodules) voxels x voxel volume.
* ``diaphragm_si_mm`` -- mean superior (S) coordinate of the lung's lower boundary over the
  *dome columns*: the columns along the grid axis nearest to S whose frame-0 lung footprint lies
  at least half the largest in-plane distance from the footprint's edge (the centre of each lung,
  away from the costophrenic recesses and the chest wall). Per column the boundary is half a voxel
  below the lowest lung voxel; averaging over many columns gives sub-voxel resolution. The dome
  columns are chosen once per case from the ground truth's frame-0 mask (frame 0 is the same
  input for every method) and used for every cine of the case.
* ``lv_volume_ml`` -- the LV blood pool (cavity) label. The cine starts at end-diastole, so ED is
  frame 0; ES is the frame of the **true** curve's minimum after frame 0 (:func:`es_frame`), and
  every method's curve is read at that same frame (a method is judged at the true phase). The
  ejection fraction is **signed**, ``EF = 100 (V_ED - V_ES) / V_ED`` (:func:`ejection_fraction`):
  negative when the ventricle dilates, so a dilating cine scores a larger EF error than a static
  one (EF 0).

Non-physiological motion (:func:`physiology_flags`, short codes, an empty list when fine):

* ``lv_no_contraction`` (cardiac) -- the LV volume does not fall from ED to ES: ``V_ES >= V_ED``
  (:func:`cardiac_flags`; a static cine is flagged too: it does not contract).
* ``diaphragm_up_on_inhale`` / ``lung_volume_down_on_inhale`` (lung) -- at the true peak-inhale
  frame (:func:`inhale_frame`: the truth's largest lung volume after frame 0) the diaphragm S
  position lies more than :data:`DIAPHRAGM_UP_TOLERANCE_MM` above frame 0's, or the lung volume is
  below frame 0's (:func:`lung_flags`; checked only where the truth inhales, i.e. its peak volume
  exceeds frame 0's).
* ``intensity_drift`` (both; only for a cine that spans a whole cycle) -- the last frame does not
  come back towards frame 0: the mean absolute normalised-intensity difference between the last
  frame and frame 0 (:func:`end_drift`) is more than :data:`DRIFT_RATIO` times the truth's and
  above :data:`DRIFT_MINIMUM` (:func:`drift_flags`).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
from scipy import ndimage

from ..errors import InputError
from ..volume import Geometry

#: Lung / body threshold in HU (lung parenchyma about -850 HU, soft tissue about 40 HU).
LUNG_THRESHOLD_HU = -400.0
#: Dome columns keep footprint points at least this fraction of the largest edge distance inside.
DOME_CORE_FRACTION = 0.5
#: Label names (phantom and ACDC) of the lung and its contents, and of the LV cavity.
LUNG_NAME_PREFIXES = ("lung", "vessels", "nodule")
LV_NAMES = ("lv_blood", "left ventricle", "lv")  # examples; every accepted name: datasets.cycle.LV_NAMES
#: A diaphragm carried this far (mm) above its frame-0 position at peak inhale is flagged.
DIAPHRAGM_UP_TOLERANCE_MM = 1.0
#: The end-of-cycle drift is flagged above this multiple of the truth's and above this minimum
#: (mean absolute difference of normalised intensities, range [-1, 1]).
DRIFT_RATIO = 3.0
DRIFT_MINIMUM = 0.01
#: The flag codes of :func:`physiology_flags`, in report order.
FLAG_CODES = ("lv_no_contraction", "diaphragm_up_on_inhale", "lung_volume_down_on_inhale", "intensity_drift")


def lung_label_values(label_names: Mapping[int, str]) -> list[int]:
    """Label values of the lungs and what they contain (vessels, nodules)."""
    return sorted(int(v) for v, name in label_names.items() if str(name).lower().startswith(LUNG_NAME_PREFIXES))


def lv_label_values(label_names: Mapping[int, str]) -> list[int]:
    """Label values of the LV blood pool (phantom ``lv_blood``, ACDC ``left ventricle``, a user's ``lv``, ...:
    :func:`MoDiffLib.datasets.cycle.is_lv_name`)."""
    from ..datasets.cycle import is_lv_name

    return sorted(int(v) for v, name in label_names.items() if is_lv_name(name))


#: Label names of the LV myocardium (phantom and ACDC ``myocardium``); the RV's (``rv_myocardium``) is not it.
MYOCARDIUM_NAMES = ("myocardium", "lv myocardium", "lv myo", "myo")
#: Label names of lung nodules start with this (phantom ``nodule_1``, ...).
NODULE_PREFIX = "nodule"


def dice_structures(kind: str, label_names: Mapping[int, str]) -> dict[str, dict[str, list[int]]]:
    """The structures whose carried labels are scored by Dice, grouped as the issue's bar names them.

    Returns ``group -> {structure name -> label values}``: lung ``lung`` (the lungs with their vessels
    and nodules together, :func:`lung_label_values`) and ``nodules`` (each ``nodule*`` label on its
    own); cardiac ``lv_blood`` (:func:`lv_label_values`) and ``myocardium`` (:data:`MYOCARDIUM_NAMES`).
    Groups without a label are left out.
    """
    def plain(name: str) -> str:
        return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())

    if kind == "lung":
        groups = {"lung": {"lung": lung_label_values(label_names)},
                  "nodules": {str(name): [int(v)] for v, name in sorted(label_names.items())
                              if str(name).lower().startswith(NODULE_PREFIX)}}
    else:
        groups = {"lv_blood": {"lv_blood": lv_label_values(label_names)},
                  "myocardium": {"myocardium": sorted(int(v) for v, name in label_names.items()
                                                      if plain(name) in MYOCARDIUM_NAMES)}}
    return {g: {s: v for s, v in members.items() if v} for g, members in groups.items()
            if any(members.values())}


def voxel_ml(geometry: Geometry) -> float:
    return float(np.prod(geometry.spacing)) / 1000.0


def mask_volume_ml(mask: np.ndarray, geometry: Geometry) -> float:
    return int(np.count_nonzero(mask)) * voxel_ml(geometry)


def superior_axis(geometry: Geometry) -> int:
    """The array axis (0 = k, 1 = j, 2 = i) whose direction is closest to RAS superior."""
    s_components = np.abs(geometry.direction[2, :])  # S component of the i, j, k axes
    ijk_axis = int(np.argmax(s_components))
    return 2 - ijk_axis


def lung_mask_threshold(frame: np.ndarray, geometry: Geometry, threshold: float = LUNG_THRESHOLD_HU) -> np.ndarray:
    """Lung mask of a CT frame in HU: below ``threshold`` inside the body (see the module docstring)."""
    a = np.asarray(frame, dtype=np.float32)
    dense = a > threshold
    regions, count = ndimage.label(dense)
    if count == 0:
        return np.zeros(a.shape, dtype=bool)
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    body = regions == int(np.argmax(sizes))
    axis = superior_axis(geometry)
    filled = np.empty_like(body)
    for s in range(body.shape[axis]):
        index = [slice(None)] * 3
        index[axis] = s
        filled[tuple(index)] = ndimage.binary_fill_holes(body[tuple(index)])
    return filled & ~dense


def dome_columns(mask0: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Boolean map of the dome columns (the two axes other than the superior one) of a frame-0 lung mask."""
    axis = superior_axis(geometry)
    footprint = np.asarray(mask0, bool).any(axis=axis)
    if not footprint.any():
        return footprint
    spacing_kji = np.asarray(geometry.spacing[::-1], dtype=float)
    in_plane = np.delete(spacing_kji, axis)
    distance = ndimage.distance_transform_edt(np.pad(footprint, 1), sampling=in_plane)[1:-1, 1:-1]
    return distance >= DOME_CORE_FRACTION * float(distance.max())


def diaphragm_position_mm(mask: np.ndarray, geometry: Geometry, columns: np.ndarray,
                          s_coordinates: np.ndarray | None = None) -> float:
    """Mean S coordinate (mm) of the lung's lower boundary over ``columns`` (NaN where no column has lung)."""
    axis = superior_axis(geometry)
    s = geometry.voxel_centers_ras()[..., 2] if s_coordinates is None else s_coordinates
    lowest = np.where(np.asarray(mask, bool), s, np.inf).min(axis=axis)
    values = lowest[columns & np.isfinite(lowest)]
    if values.size == 0:
        return math.nan
    half_voxel = 0.5 * abs(float(geometry.direction[2, 2 - axis])) * geometry.spacing[2 - axis]
    return float(np.mean(values)) - half_voxel


def lung_curves(masks: Iterable[np.ndarray | None], geometry: Geometry, columns: np.ndarray) -> dict[str, list[float]]:
    """``lung_volume_ml`` and ``diaphragm_si_mm`` per frame (NaN for a frame whose mask is None)."""
    s = geometry.voxel_centers_ras()[..., 2]
    volume, diaphragm = [], []
    for mask in masks:
        if mask is None:
            volume.append(math.nan)
            diaphragm.append(math.nan)
            continue
        volume.append(mask_volume_ml(mask, geometry))
        diaphragm.append(diaphragm_position_mm(mask, geometry, columns, s))
    return {"lung_volume_ml": volume, "diaphragm_si_mm": diaphragm}


def cardiac_curves(masks: Iterable[np.ndarray | None], geometry: Geometry) -> dict[str, list[float]]:
    """``lv_volume_ml`` per frame (NaN for a frame whose mask is None)."""
    return {"lv_volume_ml": [math.nan if m is None else mask_volume_ml(m, geometry) for m in masks]}


def _finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def es_frame(volumes: Iterable[float]) -> int | None:
    """End-systole of a (true) LV curve whose frame 0 is end-diastole: the frame of the smallest finite
    volume after frame 0 (the first of equal ones); None when frame 0 or every later frame is undefined."""
    v = list(volumes)
    if not v or not _finite(v[0]):
        return None
    later = [(float(x), t) for t, x in enumerate(v) if t > 0 and _finite(x)]
    return min(later)[1] if later else None


def ed_es_volumes(volumes: Iterable[float], es: int | None = None) -> tuple[float, float]:
    """``(V_ED, V_ES)``: the volume of frame 0 and of frame ``es`` (default: :func:`es_frame` of this
    curve; pass the TRUE curve's ES to read a method's curve at the true phase). NaN where undefined."""
    v = list(volumes)
    if es is None:
        es = es_frame(v)
    ed_v = float(v[0]) if v and _finite(v[0]) else math.nan
    es_v = float(v[es]) if es is not None and 0 <= int(es) < len(v) and _finite(v[es]) else math.nan
    return ed_v, es_v


def ejection_fraction(volumes: Iterable[float], es: int | None = None) -> float:
    """Signed ejection fraction ``100 (V_ED - V_ES) / V_ED`` in %, ED = frame 0, ES = frame ``es``
    (default: :func:`es_frame` of this curve); negative when the volume grows (dilation). NaN when
    either volume is undefined or ``V_ED <= 0``."""
    ed_v, es_v = ed_es_volumes(volumes, es)
    if not (math.isfinite(ed_v) and math.isfinite(es_v)) or ed_v <= 0:
        return math.nan
    return float(100.0 * (ed_v - es_v) / ed_v)


def excursion(curve: Iterable[float]) -> float:
    """Peak-to-peak range of the finite values of a curve (NaN with fewer than two)."""
    v = np.asarray([x for x in curve if x is not None and math.isfinite(x)], dtype=float)
    return float(v.max() - v.min()) if v.size >= 2 else math.nan


def label_masks(labels, values: list[int], num_frames: int) -> list[np.ndarray | None]:
    """Per-frame masks of ``values`` from a case's labels: a (T, K, J, I) array or sequence, or a
    ``{frame: Volume}`` dict (frames without a map give None)."""
    if labels is None:
        return [None] * num_frames
    if isinstance(labels, Mapping):
        out: list[np.ndarray | None] = [None] * num_frames
        for t, volume in labels.items():
            out[int(t)] = np.isin(np.asarray(volume.array), values)
        return out
    frames = getattr(labels, "frames", labels)
    if len(frames) != num_frames:
        raise InputError(f"{len(frames)} label maps for {num_frames} frames")
    return [np.isin(np.asarray(f), values) for f in frames]


def jacobian_volumes_ml(fields, mask0: np.ndarray, frames: Iterable[int]) -> list[float]:
    """Volume (mL) in every frame of the frame-0 structure ``mask0`` moved by ``fields``: the sum of
    the Jacobian determinant of the motion over its voxels (NaN for frames not in ``frames``)."""
    wanted = set(int(t) for t in frames)
    mask = np.asarray(mask0, bool)
    unit = voxel_ml(fields.geometry)
    out = []
    for t in range(fields.num_frames):
        if t not in wanted:
            out.append(math.nan)
        elif t == 0:
            out.append(int(np.count_nonzero(mask)) * unit)
        else:
            out.append(float(fields.jacobian_determinant(t)[mask].sum(dtype=np.float64)) * unit)
    return out


def dome_boundary_points(mask0: np.ndarray, geometry: Geometry, columns: np.ndarray) -> np.ndarray:
    """RAS points (N, 3) of the lung's lower boundary in the dome columns of frame 0 (half a voxel
    below the lowest lung voxel of each column); their mean S is :func:`diaphragm_position_mm` of frame 0."""
    axis = superior_axis(geometry)
    mask = np.asarray(mask0, bool)
    s = geometry.voxel_centers_ras()[..., 2]
    lowest = np.where(mask, s, np.inf)
    index = np.argmin(lowest, axis=axis)
    finite = np.isfinite(np.min(lowest, axis=axis)) & columns
    cols = np.nonzero(finite)
    kji = [None, None, None]
    others = [a for a in range(3) if a != axis]
    kji[axis] = index[cols]
    kji[others[0]], kji[others[1]] = cols
    ijk = np.stack([kji[2], kji[1], kji[0]], axis=1).astype(float)
    ijk_axis = 2 - axis
    step = -0.5 * float(np.sign(geometry.direction[2, ijk_axis]))  # half a voxel towards inferior
    ijk[:, ijk_axis] += step
    return geometry.ijk_to_ras_points(ijk)


def carried_diaphragm_mm(fields, mask0: np.ndarray, columns: np.ndarray, frames: Iterable[int]) -> list[float]:
    """Diaphragm position per frame: mean S of the frame-0 dome boundary points moved by ``fields``."""
    wanted = set(int(t) for t in frames)
    points = dome_boundary_points(mask0, fields.geometry, columns)
    if len(points) == 0:
        return [math.nan] * fields.num_frames
    positions = fields.positions(points)  # (T, N, 3)
    return [float(positions[t, :, 2].mean()) if t in wanted else math.nan for t in range(fields.num_frames)]


def curve_error(curve: list[float], truth: list[float], frames: Iterable[int]) -> float:
    """Mean absolute difference over ``frames`` where both curves are finite (NaN if none)."""
    diffs = [abs(curve[t] - truth[t]) for t in frames
             if math.isfinite(curve[t]) and math.isfinite(truth[t])]
    return float(np.mean(diffs)) if diffs else math.nan


# -- non-physiological motion -----------------------------------------------------------------------------
def inhale_frame(volumes: Iterable[float]) -> int | None:
    """Peak inhale of a (true) lung-volume curve: the frame of the largest finite volume after frame 0
    (the first of equal ones); None when frame 0 or every later frame is undefined."""
    v = list(volumes)
    if not v or not _finite(v[0]):
        return None
    later = [(-float(x), t) for t, x in enumerate(v) if t > 0 and _finite(x)]
    return min(later)[1] if later else None


def cardiac_flags(volumes: Iterable[float], es: int | None) -> list[str]:
    """``["lv_no_contraction"]`` when the LV volume at ``es`` (the TRUE ES frame) is not below frame 0's
    (``V_ES >= V_ED``); empty when fine or undefined."""
    ed_v, es_v = ed_es_volumes(volumes, es) if es is not None else (math.nan, math.nan)
    if math.isfinite(ed_v) and math.isfinite(es_v) and es_v >= ed_v:
        return ["lv_no_contraction"]
    return []


def lung_flags(volumes: Iterable[float] | None, diaphragm_si_mm: Iterable[float] | None, inhale: int | None,
               tolerance_mm: float = DIAPHRAGM_UP_TOLERANCE_MM) -> list[str]:
    """Flags of a lung cine at the TRUE peak-inhale frame ``inhale``: ``diaphragm_up_on_inhale`` when the
    diaphragm S position lies more than ``tolerance_mm`` above frame 0's, ``lung_volume_down_on_inhale``
    when the lung volume is below frame 0's. A curve that is None or undefined there is not checked."""
    out: list[str] = []
    if inhale is None:
        return out
    t = int(inhale)
    if diaphragm_si_mm is not None:
        d = list(diaphragm_si_mm)
        if t < len(d) and _finite(d[0]) and _finite(d[t]) and float(d[t]) - float(d[0]) > tolerance_mm:
            out.append("diaphragm_up_on_inhale")
    if volumes is not None:
        v = list(volumes)
        if t < len(v) and _finite(v[0]) and _finite(v[t]) and float(v[t]) < float(v[0]):
            out.append("lung_volume_down_on_inhale")
    return out


def end_drift(frames: np.ndarray) -> float:
    """Mean absolute difference between the last frame and frame 0 of a (T, ...) array (NaN for T < 2)."""
    a = np.asarray(frames)
    if a.ndim < 1 or a.shape[0] < 2:
        return math.nan
    return float(np.mean(np.abs(a[-1].astype(np.float64) - a[0].astype(np.float64))))


def drift_flags(cine_normalised: np.ndarray, truth_normalised: np.ndarray, ratio: float = DRIFT_RATIO,
                minimum: float = DRIFT_MINIMUM) -> list[str]:
    """``["intensity_drift"]`` when the cine's :func:`end_drift` is more than ``ratio`` times the truth's and
    above ``minimum`` (normalised intensities; meaningful only for a cine that spans a whole cycle)."""
    drift, true_drift = end_drift(cine_normalised), end_drift(truth_normalised)
    if math.isfinite(drift) and math.isfinite(true_drift) and drift > ratio * true_drift and drift > minimum:
        return ["intensity_drift"]
    return []


def physiology_flags(kind: str, curves: Mapping[str, Mapping[str, list[float]]],
                     truth_curves: Mapping[str, Mapping[str, list[float]]],
                     cine_normalised: np.ndarray | None = None, truth_normalised: np.ndarray | None = None,
                     whole_cycle: bool = True) -> list[str]:
    """Every non-physiological-motion flag of one cine (see the module docstring), in :data:`FLAG_CODES` order.

    Args:
        kind: ``lung`` or ``cardiac``.
        curves: the cine's curves by source (``labels``, ``threshold``), as :mod:`.case` measures them.
        truth_curves: the truth's curves by the same sources; the ES / peak-inhale frame comes from them.
            The first source that both have (``labels`` before ``threshold``) is checked.
        cine_normalised, truth_normalised: (T, K, J, I) normalised intensities for the drift check
            (skipped when either is None or ``whole_cycle`` is false).
    """
    out: list[str] = []
    source = next((s for s in ("labels", "threshold") if s in curves and s in truth_curves), None)
    if source is not None:
        cine, truth = curves[source], truth_curves[source]
        if kind == "cardiac" and "lv_volume_ml" in cine and "lv_volume_ml" in truth:
            out += cardiac_flags(cine["lv_volume_ml"], es_frame(truth["lv_volume_ml"]))
        elif kind == "lung" and "lung_volume_ml" in truth:
            t = inhale_frame(truth["lung_volume_ml"])
            volume = truth["lung_volume_ml"]
            if t is not None and float(volume[t]) > float(volume[0]):  # the truth inhales
                out += lung_flags(cine.get("lung_volume_ml"), cine.get("diaphragm_si_mm"), t)
    if whole_cycle and cine_normalised is not None and truth_normalised is not None:
        out += drift_flags(cine_normalised, truth_normalised)
    return [code for code in FLAG_CODES if code in out]
