"""The model registry: lookup by name, checksum verification, user overrides, verified download."""

import functools
import http.server
import json
import threading
import zipfile

import pytest

from MoDiffLib import InputError, registry
from MoDiffLib.models.checkpoint import sha256_file


def write_model(folder, payload=b"weights"):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"name": "x"}')
    (folder / "model.safetensors").write_bytes(payload)
    return {f.name: sha256_file(f) for f in folder.iterdir()}


def entry(name, **extra):
    return {"name": name, "version": "1.0", "title": name, "kind": "lung", "modality": "CT", "max_frames": 16,
            "sampling_steps": 20, **extra}


@pytest.fixture
def user_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("MODIFF_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MODIFF_MODELS_DIR", raising=False)
    path = tmp_path / "extra.json"
    monkeypatch.setenv("MODIFF_REGISTRY", str(path))
    return path


def test_model_found_by_name_in_user_folder_and_verified(tmp_path, monkeypatch, user_registry):
    sums = write_model(tmp_path / "models" / "my-model")
    user_registry.write_text(json.dumps({"models": [entry("my-model", url="http://127.0.0.1/x.zip", sha256=sums)]}))
    monkeypatch.setenv("MODIFF_MODELS_DIR", str(tmp_path / "models"))
    folder, found = registry.resolve_model("my-model")
    assert folder == tmp_path / "models" / "my-model" and found.name == "my-model"
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(InputError, match="checksum .* does not match"):
        registry.resolve_model("my-model")


def test_unknown_and_missing_models_say_what_to_do(user_registry):
    user_registry.write_text(json.dumps({"models": [entry("remote", url="http://127.0.0.1/m.zip", sha256={})]}))
    with pytest.raises(InputError, match="no model named 'nope'.*remote"):
        registry.resolve_model("nope")
    with pytest.raises(InputError, match="not installed.*modiff models --download remote"):
        registry.resolve_model("remote")


def test_malformed_registry_is_reported(user_registry):
    user_registry.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        registry.list_models()
    user_registry.write_text(json.dumps({"models": [entry("a", colour="red", path="x")]}))
    with pytest.raises(InputError, match="unknown key"):
        registry.list_models()


def test_download_is_verified_and_lands_whole(tmp_path, user_registry):
    src = tmp_path / "served"
    sums = write_model(src / "m")
    with zipfile.ZipFile(src / "m.zip", "w") as z:
        for f in (src / "m").iterdir():
            z.write(f, f"m/{f.name}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/m.zip"
        user_registry.write_text(json.dumps({"models": [entry("dl", url=url, sha256=sums)]}))
        folder = registry.download_model("dl")
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        assert registry.resolve_model("dl")[0] == folder
        bad = dict(sums, **{"model.safetensors": "0" * 64})
        user_registry.write_text(json.dumps({"models": [entry("dl", url=url, sha256=bad)]}))
        with pytest.raises(InputError, match="checksum"):
            registry.download_model("dl")
        # The verified copy from before is kept; nothing half-written appears beside it.
        assert sorted(p.name for p in folder.parent.iterdir()) == ["dl"]
    finally:
        server.shutdown()


def test_bundled_models_are_registered_verified_and_small():
    """Both phantom models ship inside Resources/, verified by checksum, together at most 30 MB."""
    entries = {e.kind: e for e in registry._read_registry(registry.REGISTRY_FILE)}
    assert set(entries) == {"lung", "cardiac"} and entries["lung"].modality == "CT" and entries["cardiac"].modality == "MR"
    total = 0
    for entry in entries.values():
        folder = registry.RESOURCES_DIR / entry.path
        registry.verify_files(folder, entry.sha256, entry.name)
        assert set(entry.sha256) == {"config.json", "model.safetensors"}
        total += sum(f.stat().st_size for f in folder.iterdir())
        assert entry.training.get("command", "").startswith("python -m training.train")
        assert entry.metrics.get("methods"), f"{entry.name} has no measured metrics in Models.json"
    assert total <= 30e6, f"bundled models take {total / 1e6:.1f} MB (at most 30 MB)"
