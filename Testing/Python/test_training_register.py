"""training.register: bundling a checkpoint into Resources/ with a verifiable Models.json entry."""

import dataclasses
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the trainers live in the repository, not in the installed package

from MoDiffLib.pipeline import MoDiffPipeline  # noqa: E402
from MoDiffLib.registry import ModelEntry, verify_files  # noqa: E402
from test_pipeline import tiny_config  # noqa: E402
from training.register import main  # noqa: E402


def test_register_copies_the_checkpoint_and_writes_a_verifiable_entry(tmp_path):
    torch.manual_seed(0)
    run = tmp_path / "run"
    run.mkdir()
    for kind in ("cardiac", "lung"):
        config = dataclasses.replace(tiny_config(kind), name=f"tiny-{kind}",
                                     training={"command": "python -m training.train ...", "seed": 0})
        MoDiffPipeline.from_config(config).save_pretrained(run / kind)
    resources = tmp_path / "Resources"
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"data": "phantom:lung:2", "methods": {
        "modiff": {"psnr_db": 30.0, "ssim": 0.9, "nmse": 0.01, "landmark_error_mm": 1.5, "tce": 0.2}}}))
    resources.mkdir()
    where = ["--resources", str(resources)]
    assert main([str(run / "cardiac"), "--title", "tiny cardiac", *where]) == 0
    assert main([str(run / "lung"), "--title", "tiny lung", "--report", str(report), "--notes", "test", *where]) == 0
    assert main([str(run / "lung"), "--title", "tiny lung again", *where]) == 0  # replaces, never duplicates

    models = json.loads((resources / "Models.json").read_text(encoding="utf-8"))["models"]
    assert [m["name"] for m in models] == ["tiny-lung", "tiny-cardiac"]  # the lung model is the default
    lung = models[0]
    assert lung["title"] == "tiny lung again" and lung["path"] == "models/tiny-lung"
    entry = ModelEntry.from_dict(lung, resources / "Models.json")
    verify_files(resources / entry.path, entry.sha256, "tiny-lung")
    assert entry.size_bytes == sum(f.stat().st_size for f in (resources / entry.path).iterdir())
    assert entry.training["command"].startswith("python -m training.train")
    assert entry.grid["shape_kji"] == [8, 16, 16] and entry.amplitude["unit"] == "mm"
    assert not any(p.name.startswith(".") for p in (resources / "models").iterdir())  # no partial folders
