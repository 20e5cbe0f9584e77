"""The one validation path for rows and media, shared by ``data check``, training, ``explain``, chat and the server.

    from affect_llm.data.validation import validate_media, check_audio_array, errors_of

    issues = validate_media({"video": "clip.mp4", "audio": "clip.wav"})
    if errors_of(issues):                      # the row cannot be used
        print("; ".join(str(i) for i in errors_of(issues)))
    issues = check_audio_array(waveform, 8000)  # decoded audio in memory, (S,) or (S, C)

Every check, its code and its severity are in :mod:`affect_llm.data.issues` (:data:`SEVERITY` is the
one table: errors make a row unusable, warnings are recorded and the row is used). The checks run
while :func:`affect_llm.data.media.load_media` decodes, so whoever decodes a row for the model gets
the same verdict as whoever validates it here: ``load_media`` raises :class:`MediaError` where
:func:`validate_media` returns an error issue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from affect_llm.data.issues import (
    DEFAULT_POLICY,
    SEVERITY,
    Issue,
    MediaError,
    MediaPolicy,
    Severity,
    check_audio_array,
    check_file,
    check_format,
    errors_of,
)
from affect_llm.data.manifest import MEDIA_FIELDS, ManifestRow
from affect_llm.data.media import decode_row

__all__ = [
    "DEFAULT_POLICY", "SEVERITY", "Issue", "MediaError", "MediaPolicy", "Severity", "check_audio_array",
    "check_file", "check_format", "errors_of", "inspect_row", "validate_media", "validate_row",
]
# Frames a check decodes per video: what explain and training sample by default.
CHECK_FRAMES = 4
MediaSpec = ManifestRow | Mapping[str, Any]


def _as_row(media: MediaSpec) -> ManifestRow:
    if isinstance(media, ManifestRow):
        return media
    unknown = sorted(set(media) - {*MEDIA_FIELDS, "transcript", "id"})
    if unknown:
        raise ValueError(f"validate_media: unknown keys {unknown}; expected {[*MEDIA_FIELDS, 'transcript']}")
    paths = {name: None if media.get(name) is None else str(media[name]) for name in MEDIA_FIELDS}
    return ManifestRow(id=str(media.get("id") or "request"), transcript=media.get("transcript"), **paths)


def inspect_row(
    row: ManifestRow, *, policy: MediaPolicy | None = None, num_frames: int = CHECK_FRAMES,
    detect_faces: bool = True,
) -> tuple[list[Issue], dict[str, Any]]:
    """Every issue of a row (row-level and media) and what decoding found (durations, faces).

    Audio is judged whole; nothing is resampled or kept.

    Returns:
        The issues, located at the row's line and id, and the decoding meta.
    """
    item, issues = decode_row(row, num_frames=num_frames, max_audio_seconds=0.0, detect_faces=detect_faces,
                              policy=policy)
    policy = policy or DEFAULT_POLICY
    if row.split is None:
        issues.append(policy.issue("no_split", "split", "no split: explain and chat use the row, training "
                                   "never does (set 'split' to train it)"))
    return [issue.at(row.line, row.id) for issue in issues], item.meta


def validate_row(row: ManifestRow, *, policy: MediaPolicy | None = None, num_frames: int = CHECK_FRAMES,
                 detect_faces: bool = True) -> list[Issue]:
    """Every issue of a manifest row: its media (as :func:`validate_media`) and its split."""
    return inspect_row(row, policy=policy, num_frames=num_frames, detect_faces=detect_faces)[0]


def validate_media(media: MediaSpec, *, policy: MediaPolicy | None = None, num_frames: int = CHECK_FRAMES,
                   detect_faces: bool = True) -> list[Issue]:
    """Judge the media of one sample, as every command does before using it.

    Args:
        media: A :class:`ManifestRow`, or a mapping with any of ``video``, ``audio``, ``image`` (paths
            or None) and ``transcript``.
        policy: Severity adjustments (default: the one every command uses).
        num_frames: Frames decoded per video.
        detect_faces: Look for faces (only ``no_face`` warnings depend on it).

    Returns:
        The issues; the sample is usable when none is an error (:func:`errors_of` is empty).

    Raises:
        ValueError: If the mapping has keys other than the media fields and ``transcript``.
    """
    row = _as_row(media)
    _, issues = decode_row(row, num_frames=num_frames, max_audio_seconds=0.0, detect_faces=detect_faces,
                           policy=policy)
    return issues

