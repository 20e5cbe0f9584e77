"""``model.audio_speaker_normalisation`` through the real CLI: train, then explain, on tiny models.

The tiny synthetic set's rows are given two speakers; the run reads each speaker's statistics from
the feature cache, trains on audio standardised by them, records the setting in the checkpoint, and
``explain`` reads the speakers of the rows it explains and marks each output row.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainhelpers import tiny_config, with_speakers, write_config

from affect_llm.data.manifest import ManifestRow
from affect_llm.features.speakers import SpeakerStandardiser, load_statistics, speaker_of
from affect_llm.loading.checkpoint import load_checkpoint
from affect_llm.modeling.media import MediaInputs, ModalityInput
from affect_llm.training.config import TrainConfig
from affect_llm.training.loader import CachedMedia
from affect_llm.training.recipe import SPEAKER_STATISTICS_FILE

TASKS = {"evidence", "perceive", "reason"}


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "affect_llm.cli.main", *args], cwd=cwd, capture_output=True,
                          text=True, check=False)


@pytest.fixture(scope="module")
def standardised_run(synth_manifest: Path, feature_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("speakers")
    manifest = with_speakers(synth_manifest, folder / "manifest.jsonl")
    raw = tiny_config(manifest, folder / "run", feature_cache, stages=1)
    raw["model"]["audio_speaker_normalisation"] = True
    write_config(folder / "config.yaml", raw)
    trained = _cli("train", "config.yaml", cwd=folder)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (folder / "train.log").write_text(trained.stderr)
    return folder


def test_training_reads_each_named_speakers_statistics(standardised_run: Path) -> None:
    log = (standardised_run / "train.log").read_text()
    assert "audio standardised per speaker: 2 speakers with >= 8 clips (a, b)" in log
    saved = load_statistics(standardised_run / "run" / SPEAKER_STATISTICS_FILE)
    assert sorted(s.rsplit("#", 1)[1] for s in saved) == ["a", "b"]


def test_the_checkpoint_records_the_setting(standardised_run: Path) -> None:
    model, _ = load_checkpoint(standardised_run / "run" / "final")
    assert model.config.audio_speaker_normalisation is True


def test_explain_marks_which_rows_were_standardised(standardised_run: Path, feature_cache: Path) -> None:
    done = _cli("explain", "manifest.jsonl", "--model", "run/final", "--split", "test", "--out", "out.jsonl",
                "--batch-size", "8", "--max-new-tokens", "8", "--feature-cache", str(feature_cache),
                cwd=standardised_run)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (standardised_run / "out.jsonl").read_text().splitlines()]
    tests = [json.loads(line) for line in (standardised_run / "manifest.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "test"]
    assert sorted(r["id"] for r in rows) == sorted(t["id"] for t in tests)
    has_audio = {t["id"]: "audio" in t["extra"]["channels"] for t in tests}
    for row in rows:
        assert row["audio_standardised_per_speaker"] is has_audio[row["id"]], row["id"]
    assert f"{sum(has_audio.values())} clips' audio read against their speaker's own statistics" in done.stdout


def test_it_needs_a_feature_cache(synth_manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", None, stages=1)
    raw["model"]["audio_speaker_normalisation"] = True
    with pytest.raises(ValueError, match="audio_speaker_normalisation .* set data.feature_cache"):
        TrainConfig.from_dict(raw, TASKS)


def test_it_needs_an_audio_encoder(synth_manifest: Path, tmp_path: Path) -> None:
    raw = tiny_config(synth_manifest, tmp_path / "run", tmp_path / "cache", stages=1)
    raw["model"].update(audio_speaker_normalisation=True, audio_encoder=None)
    with pytest.raises(ValueError, match="needs an audio encoder"):
        TrainConfig.from_dict(raw, TASKS)


class _OneEntry:
    """Stands in for the cache reader (ClipJob): the entry's features, as the cache returns them."""

    cache = None

    def __init__(self, media: MediaInputs) -> None:
        self.media = media

    def read_cached_features(self, keys: dict[str, str]) -> MediaInputs:
        return self.media


def test_the_training_loaders_read_standardised_features() -> None:
    values = torch.arange(12, dtype=torch.float32).reshape(1, 2, 6)  # (1, T, D)
    media = MediaInputs(audio=ModalityInput(features=values))
    row = ManifestRow(id="r", audio="r.wav", extra={"speaker": "a"}, manifest_path=Path("/m.jsonl"))
    statistics = {speaker_of(row): (torch.full((6,), 3.0), torch.full((6,), 2.0))}
    standardiser = SpeakerStandardiser(statistics, torch.zeros(6), torch.ones(6))
    read = CachedMedia(_OneEntry(media), {"r": {"audio": "k"}}, standardiser)(row)
    torch.testing.assert_close(read.audio.features, (values - 3.0) / 2.0)
    stranger = ManifestRow(id="r", audio="r.wav", manifest_path=Path("/m.jsonl"))
    assert CachedMedia(_OneEntry(media), {"r": {"audio": "k"}}, standardiser)(stranger) is media
