"""The model registry: which trained models exist, where their files are, and their checksums.

``Resources/Models.json`` lists the models (bundled ones with a ``path`` under ``Resources/``,
larger ones with a ``url`` to download). A model is found, in this order:

1. ``$MODIFF_MODELS_DIR/<name>/`` — a folder of models the user manages (offline copies);
2. the bundled folder ``Resources/<path>``;
3. the per-user cache ``$MODIFF_CACHE_DIR`` (default ``~/.modiff/models``) ``/<name>/``, which
   :func:`download_model` fills from the entry's ``url``.

Every file named in the entry's ``sha256`` map is verified before the weights are used, so a
truncated download or an edited weight file is refused with a clear message. ``$MODIFF_REGISTRY``
may name an extra registry JSON whose entries are added to (and override) the bundled ones.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .atomic import atomic_dir
from .checksums import verify_checksums
from .errors import InputError, OutputError
from .progress import ProgressCallback, report_step

#: ``Resources/`` beside the package, both in the source tree and in the installed Slicer module.
RESOURCES_DIR = Path(os.environ.get("MODIFF_RESOURCES_DIR", Path(__file__).resolve().parent.parent / "Resources"))
REGISTRY_FILE = RESOURCES_DIR / "Models.json"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the registry (one object of ``Models.json``'s ``models`` list)."""

    name: str
    version: str
    title: str
    kind: str
    modality: str
    max_frames: int
    sampling_steps: int
    path: str | None = None
    url: str | None = None
    sha256: dict[str, str] = field(default_factory=dict)
    size_bytes: int | None = None
    grid: dict[str, Any] = field(default_factory=dict)
    amplitude: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: ``latent`` (the paper's variant) or ``motion`` (see MoDiffLib.models.config.FAMILIES)
    family: str = "latent"

    @classmethod
    def from_dict(cls, data: Any, source: Path, index: int | None = None) -> "ModelEntry":
        """The entry of one ``models`` item of the registry ``source`` (``index``: its position, for
        messages); anything malformed is an :class:`InputError` naming the file and the entry."""
        where = f"{source}: model entry" + (f" {index + 1}" if index is not None else "")
        if not isinstance(data, dict):
            raise InputError(f"{where} must be an object with name, version, ..., got {_shown(data)}")
        if isinstance(data.get("name"), str) and data["name"]:
            where += f" '{data['name']}'"
        unknown = sorted(str(k) for k in set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"{where} has unknown key(s) {', '.join(unknown)}")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise InputError(f"{where} lacks {', '.join(missing)}")
        for key, value in data.items():
            allowed = FIELD_TYPES[key]
            # bool is an int to Python but never a count in a registry.
            if isinstance(value, bool) or not isinstance(value, allowed):
                wanted = " or ".join("null" if t is type(None) else _JSON_NAMES[t] for t in allowed)
                raise InputError(f"{where}: '{key}' must be {wanted}, got {_shown(value)}")
        name = data["name"]
        # The name becomes a folder name in the model folders and the cache.
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise InputError(f"{where}: 'name' must be a non-empty name without '/' or '\\', got {name!r}")
        bad_sums = [k for k, v in data.get("sha256", {}).items() if not isinstance(v, str)]
        if bad_sums:
            raise InputError(f"{where}: 'sha256' must map file names to hex strings; {', '.join(bad_sums)} is not one")
        if data["max_frames"] < 2 or data["sampling_steps"] < 1:
            raise InputError(f"{where}: 'max_frames' must be at least 2 and 'sampling_steps' at least 1, got "
                             f"{data['max_frames']} and {data['sampling_steps']}")
        if not data.get("path") and not data.get("url"):
            raise InputError(f"{where} has neither a bundled 'path' nor a download 'url'")
        return cls(**data)


#: Keys every registry entry must have.
REQUIRED_KEYS = ("name", "version", "title", "kind", "modality", "max_frames", "sampling_steps")
#: The JSON types each key of an entry may have (``type(None)``: the key may be null).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "version": (str,), "title": (str,), "kind": (str,), "modality": (str,), "family": (str,),
    "max_frames": (int,), "sampling_steps": (int,), "size_bytes": (int, type(None)),
    "path": (str, type(None)), "url": (str, type(None)), "amplitude": (dict, type(None)),
    "sha256": (dict,), "grid": (dict,), "training": (dict,), "metrics": (dict,),
}
_JSON_NAMES = {str: "a string", int: "an integer", dict: "an object"}


def _shown(value: Any) -> str:
    """``value`` for a one-line message: its JSON text (shortened)."""
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _cache_label(folder: Path) -> str:
    """How messages name the cache: by its variable when set, else as the default it is."""
    if os.environ.get("MODIFF_CACHE_DIR"):
        return f"MODIFF_CACHE_DIR '{folder}'"
    return f"the model cache '{folder}' (set MODIFF_CACHE_DIR to use another folder)"


def user_cache_dir() -> Path:
    """Per-user folder of downloaded models (``$MODIFF_CACHE_DIR`` or ``~/.modiff/models``).

    A cache path naming a file is an :class:`InputError` naming the variable; the folder itself
    need not exist yet (:func:`download_model` creates it).
    """
    folder = Path(os.environ.get("MODIFF_CACHE_DIR") or Path.home() / ".modiff" / "models")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{_cache_label(folder)} is a file, not a folder; point it at a folder for downloaded "
                         "models")
    return folder


def writable_cache_dir() -> Path:
    """:func:`user_cache_dir`, created if needed and checked to take new files (for a download);
    an unusable one is an :class:`OutputError` naming ``MODIFF_CACHE_DIR``."""
    folder = user_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Really create a file: permission bits do not tell for root, ACLs or read-only mounts.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OutputError(f"{_cache_label(folder)} cannot hold downloaded models ({e.strerror or e}); "
                          "point MODIFF_CACHE_DIR at a writable folder") from None
    return folder


def _read_registry(path: Path, what: str = "model registry") -> list[ModelEntry]:
    """The entries of one registry file; ``what`` names it in messages (e.g. which variable gave it)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{what} '{path}' is not valid JSON ({e})") from None
    except OSError as e:  # a folder, no permission, ...
        raise InputError(f"{what} '{path}' cannot be read ({e.strerror or e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise InputError(f"{what} '{path}' must be an object with a 'models' list")
    return [ModelEntry.from_dict(m, path, i) for i, m in enumerate(data["models"])]


def list_models() -> list[ModelEntry]:
    """All registered models: the bundled registry, then ``$MODIFF_REGISTRY`` entries (which win)."""
    entries = {e.name: e for e in _read_registry(REGISTRY_FILE)} if REGISTRY_FILE.exists() else {}
    extra = os.environ.get("MODIFF_REGISTRY")
    if extra:
        entries.update({e.name: e for e in _read_registry(Path(extra), "model registry MODIFF_REGISTRY")})
    return list(entries.values())


def find_model(name: str) -> ModelEntry:
    """The registry entry called ``name``."""
    models = list_models()
    for entry in models:
        if entry.name == name:
            return entry
    names = ", ".join(m.name for m in models) or "none"
    raise InputError(f"no model named '{name}' in the registry (available: {names}); or give a model folder path")


def default_model(kind: str | None = None) -> ModelEntry:
    """The first registered model (of ``kind`` if given): the default of the CLI and the module."""
    for entry in list_models():
        if kind is None or entry.kind == kind:
            return entry
    raise InputError(f"no {kind or ''} model is registered in {REGISTRY_FILE}".replace("  ", " "))


def verify_files(folder: Path, sha256: dict[str, str], what: str) -> None:
    """Check each file's SHA-256 against the registry; raise a clear error on any mismatch (the same
    check :func:`~MoDiffLib.models.checkpoint.load_checkpoint` applies to every model folder)."""
    verify_checksums(folder, sha256, what)


def _candidates(entry: ModelEntry) -> Iterator[Path]:
    """The folders that may hold ``entry``, in search order. Lazily: a misconfigured cache is only
    reported when the search gets that far, so it never hides a bundled model."""
    if os.environ.get("MODIFF_MODELS_DIR"):
        yield Path(os.environ["MODIFF_MODELS_DIR"]) / entry.name
    if entry.path:
        yield RESOURCES_DIR / entry.path
    yield user_cache_dir() / entry.name


def resolve_model(name_or_path: str | os.PathLike | None, kind: str | None = None,
                  verify: bool = True) -> tuple[Path, ModelEntry | None]:
    """The checkpoint folder of a model given by registry name or by path (``None``: the default).

    Returns the folder and its registry entry (``None`` for a plain path, whose checksums
    :func:`~MoDiffLib.models.checkpoint.load_checkpoint` verifies). ``verify=False`` skips the
    registry check of a named model, for a caller that passes ``entry.sha256`` to
    ``load_checkpoint`` (one hash of the weights, not two).
    """
    if name_or_path is not None and (Path(name_or_path).exists() or os.sep in str(name_or_path)):
        p = Path(name_or_path)
        if not p.exists():
            raise InputError(f"model folder '{p}' does not exist")
        return p, None
    entry = find_model(str(name_or_path)) if name_or_path is not None else default_model(kind)
    for folder in _candidates(entry):
        if folder.is_dir():
            if verify:
                verify_files(folder, entry.sha256, f"model '{entry.name}'")
            return folder, entry
    hint = f"download it with `modiff models --download {entry.name}`" if entry.url else "re-install MoDiff"
    raise InputError(f"model '{entry.name}' is not installed (looked in {', '.join(map(str, _candidates(entry)))}); {hint}")


def download_model(name: str, progress: ProgressCallback | None = None, timeout_s: float = 60.0) -> Path:
    """Download a registered model's zip into the user cache, verifying every file's SHA-256.

    ``progress`` gets a ``download`` event per MiB received (step: bytes so far, total: the
    archive's size, 0 when the server does not say).

    The folder appears in the cache only when complete and verified. For offline machines copy
    the model folder into ``$MODIFF_MODELS_DIR`` instead.
    """
    entry = find_model(name)
    if not entry.url:
        raise InputError(f"model '{name}' is bundled and has no download URL")
    target = writable_cache_dir() / entry.name
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / "model.zip"
        try:
            with urllib.request.urlopen(entry.url, timeout=timeout_s) as response, open(archive, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                done = 0
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    report_step(progress, "download", done, total, f"{done / 2**20:.1f} MiB")
        except OSError as e:
            raise InputError(f"cannot download model '{name}' from {entry.url} ({e}); see README 'offline use'") from None
        with atomic_dir(target, overwrite=True) as staging:
            try:
                with zipfile.ZipFile(archive) as z:
                    for member in z.infolist():
                        base = Path(member.filename).name
                        if member.is_dir() or not base:
                            continue
                        with z.open(member) as src, open(staging / base, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            except zipfile.BadZipFile:
                raise InputError(f"download of model '{name}' is not a valid zip archive") from None
            verify_files(staging, entry.sha256, f"downloaded model '{name}'")
    return target
