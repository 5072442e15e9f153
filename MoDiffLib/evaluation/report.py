"""Aggregate per-case results and write the evaluation report: ``report.json``, ``report.md`` and plots.

Aggregation: a method's value of a metric in one case is its mean over that case's scored frames
(:mod:`.case`); the report gives the mean and the standard deviation (ddof 0) of these per-case
values over the cases where the method ran and the metric is defined. A metric that is infinite
in some case (PSNR of a frame reproduced exactly) makes the mean infinite: JSON has no infinity,
so it is written as ``null`` and ``<metric>_infinite_cases`` counts those cases. Every other
``null`` means "not measured" (no landmarks, no labels, method skipped).

Non-physiological motion (:func:`.physiology.physiology_flags`): per method
``physiology_flagged_cases`` counts the cases where the method ran and got at least one flag, and
``physiology_flags`` the cases per flag code; ``report.md`` shows the count as the last column
of the main table and lists the flags below it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .case import COMMON_KEYS, DICE_GROUPS, FLOOR_KEYS, metric_keys
from .methods import METHOD_INFO
from .physiology import FLAG_CODES

#: Report format (bump when keys change meaning). 2: ``ef_error_pct`` from the signed ED -> ES EF;
#: ``edv_ml``, ``esv_ml``, ``ef_pct`` and the ``physiology_flags`` counts added.
#: 3: ``lung_volume_error_pct``, ``ef_error_field_pct``, ``landmark_energy_score_mm`` and
#: ``reference.true_motion`` added. 4: the propagated-label Dice (``dice_<group>``, ``dice_<group>_min``,
#: per frame and ``label_dice`` per case) and ``lv_volume_error_pct`` added.
REPORT_FORMAT_VERSION = 4
#: The truth's values aggregated under ``reference.truth`` (from each case's ``truth``).
TRUTH_KEYS = ("edv_ml", "esv_ml", "ef_pct", "ef_true_motion_pct", "diaphragm_excursion_mm", "lung_volume_change_ml")

#: Column titles of report.md.
TITLES = {
    "psnr_db": "PSNR (dB)",
    "psnr_input_db": "PSNR input units (dB)",
    "ssim": "SSIM-3D",
    "nmse": "NMSE",
    "tce": "TCE",
    "landmark_error_mm": "landmark error (mm)",
    "landmark_energy_score_mm": "landmark energy score (mm)",
    "lung_volume_error_ml": "lung volume err. (mL)",
    "lung_volume_error_pct": "lung volume err. (%)",
    "diaphragm_error_mm": "diaphragm err. (mm)",
    "diaphragm_excursion_error_mm": "diaphragm excursion err. (mm)",
    "lung_volume_threshold_error_ml": "lung volume err., -400 HU (mL)",
    "diaphragm_threshold_error_mm": "diaphragm err., -400 HU (mm)",
    "lv_volume_error_ml": "LV volume err. (mL)",
    "lv_volume_error_pct": "LV volume err. (% of EDV)",
    "dice_lung": "Dice lung",
    "dice_lung_min": "Dice lung, worst frame",
    "dice_nodules": "Dice nodules (worst nodule)",
    "dice_nodules_min": "Dice nodules, worst frame",
    "dice_lv_blood": "Dice LV blood pool",
    "dice_lv_blood_min": "Dice LV blood pool, worst frame",
    "dice_myocardium": "Dice myocardium",
    "dice_myocardium_min": "Dice myocardium, worst frame",
    "ef_error_pct": "EF err. (% points)",
    "ef_error_field_pct": "EF err. vs true motion (% points)",
    "edv_ml": "EDV (mL)",
    "esv_ml": "ESV at true ES (mL)",
    "ef_pct": "EF (%)",
    "psnr_db_common": "PSNR (dB)",
    "psnr_input_db_common": "PSNR input units (dB)",
    "ssim_common": "SSIM-3D",
    "nmse_common": "NMSE",
    "landmark_error_mm_common": "landmark error (mm)",
}


def json_ready(value: Any) -> Any:
    """A copy with numpy scalars/arrays as Python values and NaN/inf as None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    return value


def _stats(values: list[float]) -> tuple[float, float, int, int]:
    """(mean, std, cases counted, infinite cases) of per-case values; NaN values are not counted."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    infinite = int(np.count_nonzero(np.isinf(v)))
    if v.size == 0:
        return math.nan, math.nan, 0, 0
    if infinite:
        return math.inf, math.nan, int(v.size), infinite
    return float(v.mean()), float(v.std()), int(v.size), 0


def aggregate(cases: list[dict[str, Any]], methods: list[str], kind: str) -> dict[str, dict[str, Any]]:
    """Per method: mean and std over cases of every metric, with availability and per-frame means."""
    keys = metric_keys(kind)
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        info = METHOD_INFO[name]
        ran = [c for c in cases if c["methods"].get(name, {}).get("available")]
        skipped = {c["case_id"]: c["methods"][name]["skipped"] for c in cases
                   if name in c["methods"] and not c["methods"][name].get("available")}
        entry: dict[str, Any] = {"privileged_input": info.privileged, "description": info.description,
                                 "cases": len(ran)}
        for key in keys:
            mean, std, count, infinite = _stats([c["methods"][name]["summary"][key] for c in ran])
            entry[key] = mean
            entry[f"{key}_std"] = std
            if infinite:
                entry[f"{key}_infinite_cases"] = infinite
        entry.update(flag_counts(ran, name))
        if skipped:
            reasons = sorted(set(skipped.values()))
            entry["skipped"] = reasons[0] if len(reasons) == 1 else reasons
            entry["skipped_cases"] = sorted(skipped)
        entry["per_frame_mean"] = per_frame_means(ran, name)
        out[name] = entry
    return out


def flag_counts(cases: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """``physiology_flagged_cases`` (cases with at least one flag) and ``physiology_flags`` (cases per flag
    code, every code of :data:`~.physiology.FLAG_CODES` listed) of one method over the cases where it ran."""
    flags = [list(c["methods"][name].get("physiology_flags") or []) for c in cases]
    codes = list(FLAG_CODES) + sorted({f for fl in flags for f in fl} - set(FLAG_CODES))
    return {"physiology_flagged_cases": sum(1 for fl in flags if fl),
            "physiology_flags": {code: sum(1 for fl in flags if code in fl) for code in codes}}


def per_frame_means(cases: list[dict[str, Any]], name: str) -> dict[str, list[float]]:
    """Mean over cases of each per-frame metric at each frame index 1.. (scored frames only)."""
    if not cases:
        return {}
    length = max(len(c["methods"][name]["per_frame"]) for c in cases)
    dice_keys = tuple(f"dice_{g}" for groups in DICE_GROUPS.values() for g in groups)
    keys = [k for k in ("psnr_db", "psnr_input_db", "ssim", "nmse", "landmark_error_mm") + dice_keys
            if any(k in f for c in cases for f in c["methods"][name]["per_frame"])]
    out: dict[str, list[float]] = {"frame": list(range(1, length + 1))}
    for key in keys:
        column = []
        for i in range(length):
            vals = [c["methods"][name]["per_frame"][i].get(key) for c in cases
                    if i < len(c["methods"][name]["per_frame"]) and c["methods"][name]["per_frame"][i]["scored"]]
            vals = [float(v) for v in vals if v is not None and math.isfinite(v)]
            column.append(float(np.mean(vals)) if vals else math.nan)
        out[key] = column
    return out


def aggregate_reference(cases: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The registration floor (the true cine scored like a method) and the truth's own values
    (:data:`TRUTH_KEYS`, e.g. the true EDV, ESV and EF), mean and std over cases."""
    out: dict[str, Any] = {}
    floors = [c["reference"]["registration_floor"]["summary"] for c in cases if "registration_floor" in c["reference"]]
    if floors:
        entry: dict[str, Any] = {"description": "the TRUE cine scored like a method: the error of the motion "
                                                "estimation alone (the best any cine can score on motion metrics)",
                                 "cases": len(floors)}
        for key in FLOOR_KEYS[kind]:
            mean, std, _, _ = _stats([f.get(key) for f in floors])
            entry[key], entry[f"{key}_std"] = mean, std
        out["registration_floor"] = entry
    owns = [c["reference"]["true_motion"]["summary"] for c in cases if "true_motion" in c["reference"]]
    if owns:
        entry = {"description": "the TRUE motion scored through its own fields (the floor of a field method: "
                                "label quantisation of volumes measured by the Jacobian)", "cases": len(owns)}
        for key in FLOOR_KEYS[kind]:
            mean, std, _, _ = _stats([f.get(key) for f in owns])
            entry[key], entry[f"{key}_std"] = mean, std
        out["true_motion"] = entry
    truths = [c.get("truth", {}) for c in cases]
    present = [k for k in TRUTH_KEYS if any(k in t for t in truths)]
    if present:
        entry = {"description": "the ground truth's own values (cardiac: ED = frame 0, ES = its smallest LV volume)",
                 "cases": len(truths)}
        for key in present:
            mean, std, _, _ = _stats([t.get(key) for t in truths])
            entry[key], entry[f"{key}_std"] = mean, std
        entry["physiology_flagged_cases"] = sum(1 for t in truths if t.get("physiology_flags"))
        out["truth"] = entry
    return out


# -- writing ---------------------------------------------------------------------------------------------
#: Title of the report.md column that counts the cases with a non-physiological-motion flag.
FLAG_TITLE = "non-physiological (cases)"


def _cell(mean: Any, std: Any, key: str) -> str:
    if mean is None:
        return "n/a"
    if isinstance(mean, float) and math.isinf(mean):
        return "inf"
    digits = 4 if key in ("ssim", "nmse", "tce") else 3 if key.startswith("dice_") else 2
    text = f"{mean:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std:.{digits}f}"
    return text


def _defined(value: Any) -> bool:
    """A measured value: not None (JSON null) and not NaN (infinite PSNR counts as measured)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def markdown(report: dict[str, Any]) -> str:
    """``report.md``: data, model, the method x metric table (mean ± std over cases), skips and notes."""
    kind = report["data_info"]["kind"]
    keys = [k for k in metric_keys(kind) if k not in COMMON_KEYS
            and any(_defined(report["methods"][m].get(k)) for m in report["methods"])] or list(metric_keys(kind))[:5]
    common = [k for k in COMMON_KEYS if any(_defined(report["methods"][m].get(k)) for m in report["methods"])]
    model = report["model"]
    lines = [
        "# MoDiff evaluation",
        "",
        f"- data: `{report['data']}` ({report['data_info']['cases']} cases, {report['data_info']['kind']}, "
        f"frames {report['settings']['frames']})",
        f"- model: {model['name']} {model['version']} ({model['source']}), {model['steps']} sampling steps, seed "
        f"{report['settings']['seed']}",
        f"- metrics: mean ± std over cases of each case's mean over frames 1..N-1 (frame 0 is the given input); "
        f"PSNR/SSIM/NMSE/TCE on intensities normalised to [-1, 1] over the model's window; "
        f"privileged methods are given true frames (the key frame; modiff-partial: its frames), which are not scored",
        "",
        "| method | " + " | ".join(TITLES[k] for k in keys) + f" | {FLAG_TITLE} |",
        "|---|" + "---|" * (len(keys) + 1),
    ]
    for name, entry in report["methods"].items():
        label = f"{name} (privileged)" if entry["privileged_input"] else name
        if entry["cases"] == 0:
            lines.append(f"| {label} | " + " | ".join("skipped" for _ in keys) + " | skipped |")
            continue
        flagged = f"{entry.get('physiology_flagged_cases', 0)}/{entry['cases']}"
        lines.append(f"| {label} | " + " | ".join(_cell(entry.get(k), entry.get(f'{k}_std'), k) for k in keys)
                     + f" | {flagged} |")
    floor = report.get("reference", {}).get("registration_floor")
    if floor:
        lines.append("| *true cine (registration floor)* | " + " | ".join(
            _cell(floor.get(k), floor.get(f"{k}_std"), k) if k in floor else "" for k in keys) + " | |")
    own = report.get("reference", {}).get("true_motion")
    if own:
        lines.append("| *true motion (own fields)* | " + " | ".join(
            _cell(own.get(k), own.get(f"{k}_std"), k) if k in own else "" for k in keys) + " | |")
    truth = report.get("reference", {}).get("truth")
    if truth and any(k in truth for k in keys):
        lines.append("| *ground truth* | " + " | ".join(
            _cell(truth.get(k), truth.get(f"{k}_std"), k) if k in truth else "" for k in keys)
            + f" | {truth.get('physiology_flagged_cases', 0)}/{truth['cases']} |")
    flagged = {name: entry for name, entry in report["methods"].items() if entry.get("physiology_flagged_cases")}
    if flagged:
        lines += ["", "Non-physiological motion (cases flagged per check; see the definitions):", ""]
        for name, entry in flagged.items():
            counts = ", ".join(f"{code} {count}" for code, count in entry.get("physiology_flags", {}).items()
                               if count)
            lines.append(f"- {name}: {entry['physiology_flagged_cases']}/{entry['cases']} cases ({counts})")
    if common:
        lines += ["", "### All methods on the same frames (1..N-1 without any frame a privileged method is given)", "",
                  "| method | " + " | ".join(TITLES[k] for k in common) + " |", "|---|" + "---|" * len(common)]
        for name, entry in report["methods"].items():
            if entry["cases"]:
                label = f"{name} (privileged)" if entry["privileged_input"] else name
                lines.append(f"| {label} | " + " | ".join(
                    _cell(entry.get(k), entry.get(f"{k}_std"), k.replace("_common", "")) for k in common) + " |")
    lines += frames_section(report)
    lines += ["", "## Methods", ""]
    for name, entry in report["methods"].items():
        line = f"- **{name}**{' (privileged input)' if entry['privileged_input'] else ''}: {entry['description']}"
        if entry.get("skipped"):
            reason = entry["skipped"] if isinstance(entry["skipped"], str) else "; ".join(entry["skipped"])
            line += f" -- skipped in {len(entry.get('skipped_cases', []))} case(s): {reason}"
        lines.append(line)
    if report.get("mean_motion"):
        mm = report["mean_motion"]
        lines.append(f"- mean motion from training phantoms {mm['training_seeds']} (population strength "
                     f"{mm['population_amplitude']:.2f} {mm['unit']})")
    lines += ["", "## Not reported", ""]
    for metric, reason in report["unavailable"].items():
        lines.append(f"- **{metric.upper()}**: {reason}")
    lines += ["", "## Definitions", ""] + [f"- {k}: {v}" for k, v in report["definitions"].items()]
    return "\n".join(lines) + "\n"


def _phases_text(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['frame']} (src {r['source_frame']}, {r['phase']:.3f})" for r in rows)


def frames_section(report: dict[str, Any]) -> list[str]:
    """``report.md`` lines saying, per case, exactly which true frames were scored at which cycle phases,
    which frames carry labels, and how each model method's cine met those phases."""
    if not report.get("cases"):
        return []
    lines = ["", "## Frames compared", "",
             "Every true frame after frame 0 is scored at its own cycle phase (frame: `index (src source frame, "
             "phase)`, the phase from frame 0 as a fraction of the cycle)."]
    for case in report["cases"]:
        info = case.get("info", {})
        rows = info.get("frames_compared") or []
        lines.append(f"- **{case['case_id']}** ({info.get('cycle', 'whole cycle')}): {len(rows)} true frames: "
                     f"{_phases_text(rows)}")
        labelled = info.get("labelled_frames") or []
        if labelled and len(labelled) < len(rows):
            lines.append(f"  - label maps only at frames {labelled}: the LV / lung curve metrics use those frames")
        sources = info.get("ed_es_source") or {}
        if sources:
            lines.append("  - " + "; ".join(f"{k.replace('_source', '').upper()} from {v}" for k, v in sources.items()))
        for note in info.get("notes") or []:
            lines.append(f"  - note: {note}")
        plans = {}
        for name, entry in case.get("methods", {}).items():
            timing = entry.get("time")
            if timing:
                text = (f"generated at {timing['generated_frames']} phases (j/{timing['generated_frames']}) and "
                        "resampled in time to the true phases") if timing["resampled"] else \
                    f"generated at the {timing['generated_frames']} true phases"
                plans.setdefault(text, []).append(name)
        for text, names in plans.items():
            lines.append(f"  - {', '.join(names)}: {text}")
    skipped = report.get("data_info", {}).get("skipped_files") or []
    if skipped:
        lines += ["", f"Files left out of the data set ({len(skipped)}):", ""]
        lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped[:20]]
        if len(skipped) > 20:
            lines.append(f"- ... and {len(skipped) - 20} more (report.json data_info.skipped_files)")
    return lines


def plot_per_frame(report: dict[str, Any], path: Path) -> None:
    """Metric vs frame index per method (mean over cases, scored frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["psnr_db", "ssim", "nmse", "psnr_input_db", "landmark_error_mm"]
    keys = [k for k in keys if any(k in e.get("per_frame_mean", {}) for e in report["methods"].values())]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, entry in report["methods"].items():
            pf = entry.get("per_frame_mean", {})
            if key not in pf:
                continue
            y = np.asarray([np.nan if v is None else v for v in pf[key]], dtype=float)
            ax.plot(pf["frame"], y, marker="o", ms=3, ls="--" if entry["privileged_input"] else "-", label=name)
        ax.set_xlabel("frame")
        ax.set_title(TITLES.get(key, key), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{report['data']}: metrics per frame (mean over cases)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_curves(case: dict[str, Any], path: Path) -> bool:
    """The physiological curves of one case: truth and every method. False if the case has none."""
    source = "labels" if "labels" in case["truth"]["curves"] else "threshold"
    truth = case["truth"]["curves"].get(source)
    if not truth:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(truth)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
    for ax, curve in zip(axes[0], names):
        frames = np.arange(len(truth[curve]))
        ax.plot(frames, np.asarray(truth[curve], float), "k-", lw=2.5, label="truth")
        for name, entry in case["methods"].items():
            values = entry.get("curves", {}).get(source, {}).get(curve)
            if values is not None:
                ax.plot(frames, np.asarray(values, float), marker="o", ms=3,
                        ls="--" if entry["privileged_input"] else "-", label=name)
        ax.set_xlabel("frame")
        ax.set_title(f"{curve} ({source})", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{case['case_id']}: physiological curves", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], folder: Path, first_case: dict[str, Any] | None = None) -> list[str]:
    """Write report.json, report.md, metrics_per_frame.png, curves.png and montage.png; return the names."""
    from ..preview import CARDIAC_VIEWS, save_preview

    folder = Path(folder)
    (folder / "report.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(markdown(report), encoding="utf-8")
    written = ["report.json", "report.md"]
    plot_per_frame(report, folder / "metrics_per_frame.png")
    written.append("metrics_per_frame.png")
    if first_case is not None:
        if plot_curves(first_case, folder / "curves.png"):
            written.append("curves.png")
        cines = first_case.get("_cines", {})
        preferred = [m for m in ("modiff", "modiff+amplitude") if m in cines] or list(cines)
        if preferred:
            name = preferred[0]
            window = first_case["_window"]
            save_preview(folder / "montage.png", cines[name], first_case["_truth"], window=(window.low, window.high),
                         title=f"{first_case['case_id']}: {name} (top) vs ground truth, |error|",
                         views=CARDIAC_VIEWS if first_case["info"]["kind"] == "cardiac" else None)
            written.append("montage.png")
    return written
