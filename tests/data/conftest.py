"""Session fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from datahelpers import make_clip, make_wav


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good clips and wavs shared by the tests (made once per session)."""
    root = tmp_path_factory.mktemp("media")
    make_clip(root / "av.mp4")
    make_clip(root / "silent_video.mp4", audio=False)
    make_wav(root / "tone.wav")
    return root
