"""One-time, idempotent conversion of the embedded models into transformers folders.

Each prepared folder holds a ``manifest.json``: the sha256, size and modification time of every
file, the source wheel versions and the licence. A later run trusts a folder whose sizes and
modification times still match (cheap, so ``prepare`` and ``list`` return in well under a
second); otherwise, or with ``verify=True``, it re-hashes. Conversion writes into a temporary
sibling folder that is renamed into place only when complete, so an interrupted run never
leaves a half-written model behind a valid name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from affect_llm import paths, references
from affect_llm.embedded.sources import load_converter
from affect_llm.fileio import OutputLock, os_errors_as_oserror, share_written_weights
from affect_llm.hashing import file_sha256
from affect_llm.references import MANIFEST_FILE, EmbeddedModel

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
Status = Literal["ready", "missing", "corrupt"]


@dataclass
class FolderCheck:
    """Outcome of :func:`check_folder`.

    Attributes:
        status: ``ready``, ``missing`` or ``corrupt``.
        manifest: The manifest read (with refreshed stamps when ``stamps_refreshed``).
        stamps_refreshed: Files were re-hashed because their modification times changed (a
            copied folder, say); the hashes matched, so the manifest should be rewritten.
    """

    status: Status
    manifest: dict | None = None
    stamps_refreshed: bool = False



def _model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)


def _file_entry(path: Path, sha256: str | None = None) -> dict:
    stat = path.stat()
    return {"sha256": sha256 or file_sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_manifest(folder: Path, model: EmbeddedModel, seconds: float | None = None) -> dict:
    """Hash every file in ``folder`` and write its ``manifest.json``.

    Returns:
        The manifest written.
    """
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": model.name,
        "licence": model.licence,
        "converter": model.converter,
        "sources": model.installed_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "conversion_seconds": None if seconds is None else round(seconds, 2),
        "files": {p.relative_to(folder).as_posix(): _file_entry(p) for p in _model_files(folder)},
    }
    _write_json_atomic(folder / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None when absent or unreadable (treated as corrupt by callers)."""
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) else None


def check_folder(folder: Path, verify: bool = False) -> FolderCheck:
    """Check a prepared folder against its manifest.

    Args:
        folder: The model folder.
        verify: Re-hash every file even when sizes and modification times match.

    Returns:
        A :class:`FolderCheck`; a folder whose stamps changed but whose hashes match is ready.
    """
    if not folder.is_dir():
        return FolderCheck("missing")
    manifest = read_manifest(folder)
    if manifest is None or not manifest["files"]:
        return FolderCheck("corrupt")
    stale_stamps = False
    for rel, entry in manifest["files"].items():
        path = folder / rel
        if not path.is_file():
            return FolderCheck("corrupt", manifest)
        stat = path.stat()
        if stat.st_size != entry.get("size"):
            return FolderCheck("corrupt", manifest)
        if verify or stat.st_mtime_ns != entry.get("mtime_ns"):
            if file_sha256(path) != entry.get("sha256"):
                return FolderCheck("corrupt", manifest)
            stale_stamps = stale_stamps or stat.st_mtime_ns != entry.get("mtime_ns")
            entry["mtime_ns"] = stat.st_mtime_ns
    return FolderCheck("ready", manifest, stale_stamps)


def _sources_changed(model: EmbeddedModel, manifest: dict) -> bool:
    """True when an installed source wheel has a different version than the one converted."""
    recorded = manifest.get("sources", {})
    installed = model.installed_versions()
    return any(v is not None and recorded.get(k) != v for k, v in installed.items())


def convert_model(model: EmbeddedModel, target: Path) -> Path:
    """Convert one model into ``target``, atomically replacing any previous folder.

    Returns:
        ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with OutputLock(target, lock_path=target.with_name(f".{target.name}.lock")):
        _remove_leftovers(target)
        return _convert_unlocked(model, target)


def _remove_leftovers(target: Path) -> None:
    """Delete the half-written copies a killed conversion of ``target`` left (its lock is held)."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for leftover in target.parent.glob(pattern):
            logger.info("removing %s, left by an interrupted conversion", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _convert_unlocked(model: EmbeddedModel, target: Path) -> Path:
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    start = time.perf_counter()
    try:
        with os_errors_as_oserror(tmp):
            load_converter(model)(model.source_dirs(), tmp)
        share_written_weights(tmp)
        seconds = time.perf_counter() - start
        write_manifest(tmp, model, seconds)
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("converted %s in %.1f s -> %s", model.name, seconds, target)
    return target


def _select(names: Iterable[str] | None) -> list[EmbeddedModel]:
    known = references.embedded_models()
    if names is None:
        return list(known.values())
    names = list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown embedded model(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names]


def prepare_models(
    models_dir: Path | None = None,
    names: Iterable[str] | None = None,
    force: bool = False,
    verify: bool = False,
) -> dict[str, Path]:
    """Convert the embedded models that are not prepared yet.

    Args:
        models_dir: Destination root (default ``paths.models_dir()``, env ``AFFECT_LLM_MODELS``).
        names: Models to prepare (default all embedded models).
        force: Convert even when a valid folder exists.
        verify: Re-hash existing folders instead of trusting size and modification time.

    Returns:
        ``{name: folder}`` for every selected model.

    Raises:
        KeyError: If a name is not an embedded model.
        ModuleNotFoundError: If a source wheel is not installed.
    """
    root = _models_root(models_dir)
    prepared: dict[str, Path] = {}
    for model in _select(names):
        target = root / model.name
        check = check_folder(target, verify=verify)
        if check.status == "ready" and not force and not _sources_changed(model, check.manifest):
            if check.stamps_refreshed:
                _refresh_stamps(target, check.manifest)
            logger.info("%s is ready in %s", model.name, target)
        else:
            convert_model(model, target)
        prepared[model.name] = target
    return prepared


def _models_root(models_dir: Path | None) -> Path:
    root = Path(models_dir) if models_dir is not None else paths.models_dir()
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"{root}: the models folder (AFFECT_LLM_MODELS or --dir) is a file, not a folder")
    return root


def _refresh_stamps(target: Path, manifest: dict) -> None:
    """Record the files' new modification times (a copied folder, hashes verified): only a shortcut
    for the next check, so a folder that cannot be written (read-only storage) stays usable."""
    try:
        _write_json_atomic(target / MANIFEST_FILE, manifest)
    except OSError as error:
        logger.info("%s: the verified file times were not recorded (%s)", target, error.strerror or error)


def list_models(models_dir: Path | None = None, verify: bool = False) -> list[dict]:
    """Describe every embedded model and the state of its prepared folder.

    Returns:
        One dict per model: ``name``, ``status`` (ready / missing / corrupt), ``size`` (bytes
        on disk), ``path``, ``licence``, ``sources`` and ``description``.
    """
    root = _models_root(models_dir)
    rows = []
    for model in references.embedded_models().values():
        folder = root / model.name
        status = check_folder(folder, verify=verify).status
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        rows.append(
            {
                "name": model.name,
                "status": status,
                "size": size,
                "path": str(folder),
                "licence": model.licence,
                "sources": dict(zip(model.packages, model.versions, strict=True)),
                "description": model.description,
            }
        )
    return rows
