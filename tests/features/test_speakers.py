"""Per-speaker standardisation of audio features: grouping, statistics and the mapping onto the projector."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from affect_llm.data.manifest import ManifestRow
from affect_llm.features.speakers import (
    MIN_SPEAKER_CLIPS,
    load_statistics,
    manifest_standardiser,
    save_statistics,
    speaker_of,
    speaker_rows,
    speaker_statistics,
    standardiser_for,
)
from affect_llm.modeling.media import MediaInputs, ModalityInput
from affect_llm.modeling.projectors import MediaProjector

WIDTH = 6


def _row(index: int, speaker: str | None, manifest: str = "/data/a/manifest.jsonl", audio: bool = True) -> ManifestRow:
    extra = {} if speaker is None else {"speaker": speaker}
    return ManifestRow(id=f"{speaker}-{index}", audio=f"{index}.wav" if audio else None,
                       image=None if audio else f"{index}.png", extra=extra, manifest_path=Path(manifest))


def _features(seed: int, shift: float, scale: float, steps: int = 5) -> MediaInputs:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(1, steps, WIDTH, generator=generator) * scale + shift  # (1, T, D)
    return MediaInputs(audio=ModalityInput(features=values))


def _speaker_set() -> tuple[list[ManifestRow], dict[str, MediaInputs]]:
    """Two speakers with different baselines (shift, spread), 10 clips each."""
    rows, media = [], {}
    for index in range(10):
        for speaker, shift, scale in (("low", -3.0, 0.5), ("high", 4.0, 2.0)):
            row = _row(index, speaker)
            rows.append(row)
            media[row.id] = _features(index * 7 + len(speaker), shift, scale)
    return rows, media


def _featurize(media: dict[str, MediaInputs]):
    def features(rows):
        for row in rows:
            yield {row.id: media[row.id]}
    return features


def _projector() -> MediaProjector:
    projector = MediaProjector("mlp", WIDTH, 8, 2)
    projector.calibrate([torch.randn(40, WIDTH) * 3 + 1])
    return projector


def test_speaker_is_qualified_by_its_manifest() -> None:
    assert speaker_of(_row(0, "m1", "/a/manifest.jsonl")) != speaker_of(_row(0, "m1", "/b/manifest.jsonl"))
    assert speaker_of(_row(0, None)) is None
    assert speaker_of(_row(0, "  ")) is None


def test_only_speakers_with_enough_clips_with_audio_are_grouped() -> None:
    rows = [_row(i, "many") for i in range(MIN_SPEAKER_CLIPS)]
    rows += [_row(i, "few") for i in range(MIN_SPEAKER_CLIPS - 1)]
    rows += [_row(i, "silent", audio=False) for i in range(MIN_SPEAKER_CLIPS)]
    rows += [_row(i, None) for i in range(MIN_SPEAKER_CLIPS)]
    groups = speaker_rows(rows)
    assert [s.rsplit("#", 1)[1] for s in groups] == ["many"]
    assert len(next(iter(groups.values()))) == MIN_SPEAKER_CLIPS


def test_statistics_are_those_of_the_speakers_concatenated_steps() -> None:
    rows, media = _speaker_set()
    statistics = speaker_statistics(speaker_rows(rows), _featurize(media), WIDTH)
    for speaker in ("low", "high"):
        steps = torch.cat([media[r.id].audio.features[0] for r in rows if r.extra["speaker"] == speaker])
        mean, std = statistics[speaker_of(_row(0, speaker))]
        torch.testing.assert_close(mean, steps.mean(0))
        torch.testing.assert_close(std, steps.std(0))


def test_statistics_summed_across_processes_equal_one_process() -> None:
    rows, media = _speaker_set()
    groups = speaker_rows(rows)
    whole = speaker_statistics(groups, _featurize(media), WIDTH)
    # Two "processes": each reads every other row; the reduce adds the other's sums to its own.
    shares = []
    for rank in range(2):
        def features(chosen, rank=rank):
            return _featurize(media)(chosen[rank::2])
        shares.append(features)
    partial: list[torch.Tensor] = []
    speaker_statistics(groups, shares[1], WIDTH, reduce=lambda t: partial.append(t) or t)
    split = speaker_statistics(groups, shares[0], WIDTH, reduce=lambda t: t + partial[0])
    for speaker in whole:
        torch.testing.assert_close(split[speaker][0], whole[speaker][0])
        torch.testing.assert_close(split[speaker][1], whole[speaker][1])


def test_projector_sees_each_speakers_own_z_scores() -> None:
    rows, media = _speaker_set()
    projector = _projector()
    standardiser = standardiser_for(projector, speaker_statistics(speaker_rows(rows), _featurize(media), WIDTH))
    for speaker in ("low", "high"):
        mine = [r for r in rows if r.extra["speaker"] == speaker]
        mapped = torch.cat([standardiser(r, media[r.id]).audio.features[0] for r in mine])
        seen = (mapped - projector.feature_mean) / projector.feature_std  # what the projector computes first
        torch.testing.assert_close(seen.mean(0), torch.zeros(WIDTH), atol=1e-5, rtol=0)
        torch.testing.assert_close(seen.std(0), torch.ones(WIDTH), atol=1e-5, rtol=0)


def test_clips_without_a_known_speaker_or_audio_are_unchanged() -> None:
    rows, media = _speaker_set()
    standardiser = standardiser_for(_projector(), speaker_statistics(speaker_rows(rows), _featurize(media), WIDTH))
    stranger = _features(99, 0.0, 1.0)
    assert standardiser(_row(0, "unknown"), stranger) is stranger
    assert standardiser(_row(0, None), stranger) is stranger
    faces_only = MediaInputs(face=ModalityInput(features=torch.ones(1, 2, 3)))
    assert standardiser(rows[0], faces_only) is faces_only


def test_mapping_keeps_the_feature_dtype_and_mask() -> None:
    rows, media = _speaker_set()
    standardiser = standardiser_for(_projector(), speaker_statistics(speaker_rows(rows), _featurize(media), WIDTH))
    half = MediaInputs(audio=ModalityInput(features=media[rows[0].id].audio.features.half(),
                                           feature_mask=torch.tensor([[True, True, True, False, False]])))
    mapped = standardiser(rows[0], half).audio
    assert mapped.features.dtype == torch.float16
    assert mapped.feature_mask.tolist() == [[True, True, True, False, False]]


def test_explain_reads_only_the_speakers_of_the_rows_it_will_explain() -> None:
    rows, media = _speaker_set()
    read: list[str] = []

    def features(chosen):
        read.extend(r.id for r in chosen)
        return _featurize(media)(chosen)

    standardiser = manifest_standardiser(rows, features, _projector(), lambda r: r.extra["speaker"] == "high")
    clip = _features(0, 0.0, 1.0)
    assert standardiser.applies_to(_row(0, "high"), clip) and not standardiser.applies_to(_row(0, "low"), clip)
    assert read and all(row_id.startswith("high-") for row_id in read)


@pytest.mark.parametrize("clips", [0, MIN_SPEAKER_CLIPS - 1])
def test_explain_without_enough_clips_standardises_nothing(clips: int) -> None:
    rows = [_row(i, "solo") for i in range(clips)]
    media = {r.id: _features(i, 0.0, 1.0) for i, r in enumerate(rows)}
    standardiser = manifest_standardiser(rows, _featurize(media), _projector())
    assert standardiser.statistics == {}


def test_saved_statistics_load_back(tmp_path: Path) -> None:
    rows, media = _speaker_set()
    statistics = speaker_statistics(speaker_rows(rows), _featurize(media), WIDTH)
    save_statistics(statistics, tmp_path / "s.safetensors")
    loaded = load_statistics(tmp_path / "s.safetensors")
    assert sorted(loaded) == sorted(statistics)
    for speaker, (mean, std) in statistics.items():
        assert torch.equal(loaded[speaker][0], mean) and torch.equal(loaded[speaker][1], std)
