"""Bundle a trained model: ``python -m training.register RUN/model --title TEXT [--report REPORT.json]``.

Copies a release checkpoint (``config.json`` + ``model.safetensors``) to
``Resources/models/<name>/`` and writes its entry in ``Resources/Models.json`` (an entry of the
same name is replaced): checksums, size, grid, amplitude, the training provenance recorded in the
checkpoint and, given a ``modiff evaluate`` report, the measured metrics per method. The registry
loader (:mod:`MoDiffLib.registry`) verifies the checksums on every load.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from MoDiffLib.atomic import atomic_dir, atomic_file
from MoDiffLib.errors import MoDiffError
from MoDiffLib.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_checkpoint, sha256_file

REPO = Path(__file__).resolve().parents[1]

#: The per-method scores copied from an evaluation report into the registry.
METRIC_KEYS = ("psnr_db", "ssim", "nmse", "tce", "landmark_error_mm", "landmark_energy_score_mm",
               "lung_volume_error_ml", "lung_volume_error_pct", "diaphragm_error_mm", "lv_volume_error_ml",
               "ef_error_pct", "ef_error_field_pct", "ef_pct", "physiology_flagged_cases")


def registry_entry(folder: Path, path_in_resources: str, title: str, report: dict[str, Any] | None,
                   notes: str | None) -> dict[str, Any]:
    """The ``Models.json`` object describing the checkpoint in ``folder``."""
    config, _ = load_checkpoint(folder)
    files = (CONFIG_NAME, WEIGHTS_NAME)
    if config.family == "motion":  # one stage: its provenance is small and kept whole
        training = dict(config.training)
    else:
        training = {k: config.training[k] for k in ("command", "config_file", "data", "seed", "wall_s", "hardware")
                    if k in config.training}
        training["stages"] = {name: {k: stage.get(k) for k in ("steps", "wall_s", "samples_per_s", "validation")}
                              for name, stage in config.training.get("stages", {}).items()}
    if notes:
        training["notes"] = notes
    entry: dict[str, Any] = {
        "name": config.name,
        "version": config.version,
        "title": title,
        "kind": config.kind,
        "modality": config.modality,
        "family": config.family,
        "max_frames": config.max_frames,
        "sampling_steps": config.sampling_steps,
        "path": path_in_resources,
        "sha256": {f: sha256_file(folder / f) for f in files},
        "size_bytes": sum((folder / f).stat().st_size for f in files),
        "grid": {"shape_kji": list(config.grid.shape_kji), "spacing_ijk_mm": list(config.grid.spacing_ijk_mm)},
        "amplitude": None if config.amplitude is None else {
            "name": config.amplitude.name, "unit": config.amplitude.unit,
            "min": config.amplitude.min, "max": config.amplitude.max},
        "training": training,
        "metrics": {},
    }
    if report is not None:
        entry["metrics"] = {
            "data": report.get("data"),
            "settings": report.get("settings"),
            "methods": {m: {k: v for k, v in scores.items() if k in METRIC_KEYS}
                        for m, scores in report.get("methods", {}).items()},
        }
    return entry


def register(checkpoint: Path, title: str, report_path: Path | None = None, notes: str | None = None,
             resources: Path = REPO / "Resources") -> dict[str, Any]:
    """Copy ``checkpoint`` into ``resources/models/<name>`` and (re)write its ``Models.json`` entry."""
    config, _ = load_checkpoint(checkpoint)
    relative = f"models/{config.name}"
    (resources / "models").mkdir(parents=True, exist_ok=True)
    with atomic_dir(resources / relative, overwrite=True) as staging:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copy2(checkpoint / name, staging / name)
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path else None
    entry = registry_entry(resources / relative, relative, title, report, notes)
    registry_file = resources / "Models.json"
    data = json.loads(registry_file.read_text(encoding="utf-8")) if registry_file.exists() else {"models": []}
    models = [m for m in data["models"] if m["name"] != entry["name"]] + [entry]
    models.sort(key=lambda m: (m["kind"] != "lung", m["name"]))  # the lung model is the default
    with atomic_file(registry_file, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps({**data, "models": models}, indent=2) + "\n", encoding="utf-8")
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.register", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="release checkpoint folder (RUN/model)")
    p.add_argument("--title", required=True, help="one-line description shown in the model selector")
    p.add_argument("--report", type=Path, help="report.json of `modiff evaluate` for this model")
    p.add_argument("--notes", help="free text kept with the training provenance")
    p.add_argument("--resources", type=Path, default=REPO / "Resources", help="the Resources folder (default: this repository's)")
    args = p.parse_args(argv)
    try:
        entry = register(args.checkpoint, args.title, args.report, args.notes, args.resources)
    except MoDiffError as e:
        print(f"register: error: {e}", file=sys.stderr)
        return 2
    print(f"registered {entry['name']} ({entry['size_bytes'] / 1e6:.1f} MB) in {args.resources / 'Models.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
