"""Encoder identities for the feature cache, from weight files instead of every tensor.

Hashing every weight of Whisper-large plus SigLIP (about 4 GB) on each run costs more than the
cache saves on a small set. An encoder loaded from a folder is identified by that folder instead:
each weight and config file's name, size and modification time, and the commit the folder was
taken at (a hub snapshot's folder name, or a git checkout's HEAD). A strided sample of every tensor
(64 values each) is hashed as well: it costs milliseconds and catches weights that differ from
their files, such as encoders a curriculum stage trained and saved into a checkpoint.

An encoder without a folder (built from a config, as the tests' tiny ones are) has no files to
stand for it: its tensors are hashed whole.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".json", ".xml")
SAMPLES_PER_TENSOR = 64


def folder_commit(folder: Path) -> str | None:
    """The commit a model folder was taken at: hub snapshot name, or git HEAD; None when neither."""
    if folder.parent.name == "snapshots":
        return folder.name
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel", "HEAD"],
                              capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split("\n")
    if done.returncode != 0 or len(lines) < 2:
        return None
    # Only a folder that is itself a clone (a hub model repository): inside another work tree (a
    # project kept under git), HEAD moves with every unrelated commit, and the cache would be lost.
    top, head = Path(lines[0].strip()), lines[1].strip()
    return head if top.resolve() == folder.resolve() else None


def folder_fingerprint(folder: Path) -> str:
    """sha256 of the names, sizes and modification times of a folder's weight and config files, and its commit."""
    digest = hashlib.sha256(f"commit={folder_commit(folder)}|".encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            stat = path.stat()  # follows hub cache symlinks to the blobs
            digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
    return digest.hexdigest()


def tensors_sample_digest(module: torch.nn.Module) -> str:
    """sha256 over names, shapes, dtypes and ``SAMPLES_PER_TENSOR`` evenly spaced values of every tensor."""
    digest = hashlib.sha256()
    samples = []
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if flat.numel():
            positions = torch.linspace(0, flat.numel() - 1, min(SAMPLES_PER_TENSOR, flat.numel()), device=flat.device)
            samples.append(flat[positions.long()].float())
    if samples:
        # One transfer for all tensors: the weights may sit on a GPU.
        digest.update(torch.cat(samples).cpu().numpy().tobytes())
    return digest.hexdigest()


def tensors_full_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (for encoders that have no weight files)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def encoder_fingerprint(module: torch.nn.Module, folder: str | Path | None) -> str:
    """The identity of an encoder's weights (hex sha256).

    Args:
        module: The encoder as loaded.
        folder: The folder its weights were loaded from, or None (built from a config, or a hub id
            that resolves to no local folder).
    """
    if folder is None or not Path(folder).is_dir():
        return tensors_full_digest(module)
    parts = f"files={folder_fingerprint(Path(folder))}|sample={tensors_sample_digest(module)}"
    return hashlib.sha256(parts.encode()).hexdigest()
