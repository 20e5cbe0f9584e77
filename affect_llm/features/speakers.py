"""Per-speaker standardisation of audio features (``model.audio_speaker_normalisation``).

A voice's emotion is read against that speaker's own baseline: an unseen speaker whose neutral
voice sits where the training speakers' fear does is read as afraid. With this on, the audio
projector sees each clip's encoder features standardised by the mean and spread of its speaker's
clips (every step of every clip of that speaker in the manifest, labels unused) instead of by the
training set's statistics. It is the speaker normalisation of the speech-emotion literature, and it
needs a speaker's other clips, so it applies where a manifest names speakers (``extra.speaker``)
with at least :data:`MIN_SPEAKER_CLIPS` clips; other clips (one clip in a chat, a speaker with
too few clips) keep the training statistics.

The projector standardises its input with fixed buffers (``feature_mean``, ``feature_std``), so a
clip of speaker ``s`` is mapped to ``(x - mean_s) / std_s * feature_std + feature_mean``: the
projector's own step then yields ``(x - mean_s) / std_s`` and the model needs no other input.

Shape letters: T steps, D encoder width, S speakers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from affect_llm.data.manifest import ManifestRow
from affect_llm.features.moments import mean_and_std, step_moments
from affect_llm.fileio import share_written_weights
from affect_llm.modeling.media import MediaInputs, ModalityInput

# Fewer clips than this give a noisy baseline (one emotion may be all of them): such speakers keep
# the training statistics.
MIN_SPEAKER_CLIPS = 8
# The statistics of a few hundred clips are as good as those of thousands; more are not read.
MAX_SPEAKER_CLIPS = 256


def speaker_of(row: ManifestRow) -> str | None:
    """The row's speaker, qualified by its manifest (speakers of two corpora never merge); None if unnamed."""
    speaker = (row.extra or {}).get("speaker")
    if speaker is None or not str(speaker).strip():
        return None
    return f"{row.manifest_path or ''}#{speaker}"


def speaker_rows(rows: Iterable[ManifestRow], min_clips: int = MIN_SPEAKER_CLIPS) -> dict[str, list[ManifestRow]]:
    """Speaker -> the rows its statistics are read from (evenly spaced, at most :data:`MAX_SPEAKER_CLIPS`).

    Only rows with an audio or video file count (a video without a sound track adds nothing to
    the sums), and only speakers with at least ``min_clips`` of them.
    """
    groups: dict[str, list[ManifestRow]] = {}
    for row in rows:
        speaker = speaker_of(row)
        if speaker is not None and (row.audio or row.video):
            groups.setdefault(speaker, []).append(row)
    chosen = {}
    for speaker, members in sorted(groups.items()):
        if len(members) < min_clips:
            continue
        step = max(1, len(members) // MAX_SPEAKER_CLIPS)
        chosen[speaker] = members[::step][:MAX_SPEAKER_CLIPS]
    return chosen


@dataclass(frozen=True)
class SpeakerStandardiser:
    """Row + media -> the same media, audio features mapped onto the speaker's own statistics.

    Attributes:
        statistics: Speaker (:func:`speaker_of`) -> ``(mean (D,), std (D,))`` of its clips' features.
        target_mean / target_std: ``(D,)`` the audio projector's standardisation buffers.
    """

    statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def applies_to(self, row: ManifestRow, media: MediaInputs) -> bool:
        """Whether the row's audio features are mapped (its speaker is known and it has audio features)."""
        return media.audio is not None and media.audio.is_features and speaker_of(row) in self.statistics

    def __call__(self, row: ManifestRow, media: MediaInputs) -> MediaInputs:
        if not self.applies_to(row, media):
            return media
        part = media.audio
        mean, std = self.statistics[speaker_of(row)]
        values = part.features.float()  # (N, T, D)
        device = values.device
        scale = self.target_std.to(device) / std.to(device)  # both float32
        mapped = (values - mean.to(device)) * scale + self.target_mean.to(device)
        audio = ModalityInput(features=mapped.to(part.features.dtype), feature_mask=part.feature_mask)
        return dataclasses.replace(media, audio=audio)

    def describe(self) -> str:
        return f"audio standardised per speaker for {len(self.statistics)} speakers"


def speaker_statistics(
    groups: dict[str, list[ManifestRow]],
    features: Callable[[Sequence[ManifestRow]], Iterable[dict[str, MediaInputs]]],
    width: int,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each speaker's audio feature mean and spread over the valid steps of its clips.

    Args:
        groups: Speaker -> rows (:func:`speaker_rows`); every process passes the same groups.
        features: Rows -> batches of ``{row id: media}`` (cached features or the encoders' output);
            a process may be handed only its share of the rows.
        width: The audio feature width ``D``.
        reduce: Sums the ``(S, 3, D)`` moments across processes (None: one process).

    Returns:
        Speaker -> ``(mean (D,), std (D,))`` float32, for speakers with at least two feature steps.
    """
    speakers = sorted(groups)
    index = {speaker: i for i, speaker in enumerate(speakers)}
    owner = {row.id: index[speaker] for speaker, rows in groups.items() for row in rows}
    sums = torch.zeros(len(speakers), 3, width, dtype=torch.float64)  # (S, 3, D)
    rows = [row for speaker in speakers for row in groups[speaker]]
    for batch in features(rows):
        for row_id, media in batch.items():
            part = media.audio
            if part is not None and part.is_features and row_id in owner:
                sums[owner[row_id]] += step_moments(part).cpu()
    if reduce is not None:
        sums = reduce(sums)
    statistics = {}
    for speaker, moments in zip(speakers, sums, strict=True):
        found = mean_and_std(moments)
        if found is not None:
            statistics[speaker] = found
    return statistics


def standardiser_for(projector: torch.nn.Module, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]
                     ) -> SpeakerStandardiser:
    """The standardiser that maps each speaker onto ``projector``'s own standardisation buffers."""
    return SpeakerStandardiser(statistics, projector.feature_mean.detach().float().cpu(),
                               projector.feature_std.detach().float().cpu())


def manifest_standardiser(
    rows: Iterable[ManifestRow],
    featurize: Callable[[Sequence[ManifestRow]], Iterable[dict[str, MediaInputs]]],
    projector: torch.nn.Module,
    wanted: Callable[[ManifestRow], bool] = lambda row: True,
) -> SpeakerStandardiser:
    """The standardiser for explaining a manifest: statistics of every speaker the wanted rows name.

    Each speaker's statistics come from all its clips in the manifest, whichever split, shard or
    resumed part of it is explained, so every shard and every rerun standardises a clip alike.

    Args:
        rows: Every row of the manifest.
        featurize: Rows -> batches of ``{row id: features}`` (the run's featurizer, its cache included).
        projector: The audio projector (its standardisation is the target).
        wanted: Rows that will be explained (e.g. of one split): only their speakers are read.
    """
    rows = list(rows)
    needed = {speaker_of(row) for row in rows if wanted(row)} - {None}
    groups = {s: members for s, members in speaker_rows(rows).items() if s in needed}
    statistics = speaker_statistics(groups, featurize, projector.feature_mean.numel()) if groups else {}
    return standardiser_for(projector, statistics)


def save_statistics(statistics: dict[str, tuple[torch.Tensor, torch.Tensor]], path: Path) -> None:
    """Write the statistics (safetensors, keys ``<speaker>::mean`` and ``<speaker>::std``) for inspection."""
    from safetensors.torch import save_file

    tensors = {f"{speaker}::{name}": value.contiguous() for speaker, pair in statistics.items()
               for name, value in zip(("mean", "std"), pair, strict=True)}
    save_file(tensors, str(path))
    share_written_weights(path.parent)


def load_statistics(path: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """What :func:`save_statistics` wrote."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    speakers = sorted({key.rsplit("::", 1)[0] for key in tensors})
    return {speaker: (tensors[f"{speaker}::mean"], tensors[f"{speaker}::std"]) for speaker in speakers}
