"""What can be wrong with a manifest line or a medium, and how bad it is: one table for every entry point.

An :class:`Issue` is one finding. Its ``code`` decides its severity through :data:`SEVERITY`:

- ``error``: the row cannot be used (the data check quarantines it; ``explain``, training, chat and
  the server refuse it, naming the file, the field and the reason);
- ``warning``: recorded (data check report, result rows, the chat's notes), and the row is used.

A :class:`MediaPolicy` may change a code's severity (``overrides``) or refuse audio below a sample
rate (``min_sample_rate``); the default policy is the one every command uses unless told otherwise.
Nothing here decodes files: :mod:`affect_llm.data.media` decodes and calls these checks, and
:mod:`affect_llm.data.validation` is the public entry point.

Shape letters: ``S`` audio samples, ``C`` channels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

Severity = Literal["error", "warning"]

# The one severity table. Codes, not reasons, are stable: tests, reports and callers match on them.
SEVERITY: Mapping[str, Severity] = MappingProxyType({
    # manifest lines
    "manifest": "error",          # invalid JSON or UTF-8, unknown key, value of the wrong type, no id
    "duplicate_id": "error",      # a later row with an id already used (the first one is kept)
    "no_content": "error",        # no media and no transcript: nothing to reason about
    "channel_without_medium": "error",  # extra.channels lists a channel no field of the row carries
    "no_split": "warning",        # no split: used by explain and chat, never taken into training
    # files
    "missing": "error",
    "not_a_file": "error",        # a directory, a socket...
    "empty": "error",             # 0 bytes
    "unreadable": "error",        # no read permission, a name too long to open, an I/O error
    "undecodable": "error",       # truncated, random bytes, text under a media name
    "wrong_kind": "error",        # an audio file in 'video', a video in 'image'...
    "wrong_extension": "warning",  # decodes, but its name says another format
    # video and images
    "no_frames": "error",
    "no_face": "warning",         # no detector found a face in any frame
    # audio
    "no_samples": "error",        # a header without samples
    "non_finite": "error",        # NaN or inf samples
    "too_short": "error",
    "silent": "error",            # silence is the row's only medium
    "silent_track": "warning",    # silence beside frames: the row is used without audio
    "no_audio_track": "warning",  # a video without sound: the row is used without audio
    "low_sample_rate": "warning",  # below 16 kHz: upsampled, the upper band stays empty
    "below_min_sample_rate": "error",  # below the policy's min_sample_rate
    "multichannel": "warning",    # mixed down to mono
})
MODEL_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Issue:
    """One finding about a manifest line or one of its media.

    Attributes:
        code: Key of :data:`SEVERITY` (``too_short``, ``missing``...).
        field: The manifest field concerned (``audio``, ``video``, ``labels``...), or None for the row.
        reason: What is wrong, for a person (``too short: 0.100 s < 0.25 s``).
        severity: ``error`` (row unusable) or ``warning`` (row used).
        path: The media file, when the issue is about one.
        line: 1-based manifest line (0 when not read from a manifest).
        id: The row's id, when known.
    """

    code: str
    field: str | None
    reason: str
    severity: Severity = "error"
    path: str | None = None
    line: int = 0
    id: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def at(self, line: int, row_id: str | None) -> Issue:
        """The same issue located at a manifest line and row id."""
        return replace(self, line=line, id=row_id)

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.field or 'row'}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def errors_of(issues: list[Issue]) -> list[Issue]:
    """The issues that make a row unusable."""
    return [issue for issue in issues if issue.is_error]


def decoder_reason(error: BaseException, limit: int = 160) -> str:
    """A decoder's error as a reason: its first line, cut to ``limit`` characters (its type when empty)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else type(error).__name__


class MediaError(ValueError):
    """A medium (or a row's media as a whole) that cannot be used.

    Attributes:
        path: The file, or None when the row as a whole is refused (``no_content``).
        field: The manifest field that referenced it (``video``, ``audio``, ``image``), or None.
        reason: What is wrong.
        code: The :data:`SEVERITY` key.
        issues: Every issue found for the row (errors and warnings), when known.
    """

    def __init__(self, path: str | Path | None, field: str | None, reason: str, code: str = "undecodable",
                 issues: tuple[Issue, ...] = ()) -> None:
        self.path = Path(path) if path is not None else None
        self.field = field
        self.reason = reason
        self.code = code
        self.issues = tuple(issues)
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}field '{field}': {reason}" if field else f"{where}{reason}")

    @classmethod
    def from_issues(cls, issues: list[Issue]) -> MediaError:
        """The error of the first error issue, carrying every issue of the row."""
        first = errors_of(issues)[0]
        return cls(first.path, first.field, first.reason, first.code, tuple(issues))

    def to_issue(self) -> Issue:
        path = None if self.path is None else str(self.path)
        return Issue(self.code, self.field, self.reason, SEVERITY.get(self.code, "error"), path)


@dataclass(frozen=True)
class MediaPolicy:
    """How strictly media are judged; the default is what every command uses.

    Attributes:
        min_sample_rate: Audio files below this rate are errors (``below_min_sample_rate``); None
            refuses none (below 16 kHz is then a ``low_sample_rate`` warning).
        min_audio_seconds: Shorter audio is an error (``too_short``).
        silence_peak: Peak amplitude below which audio counts as silent (about -80 dBFS).
        overrides: Code -> severity, replacing :data:`SEVERITY` entries (e.g. ``{"no_face": "error"}``).
    """

    min_sample_rate: int | None = None
    min_audio_seconds: float = 0.25
    silence_peak: float = 1e-4
    overrides: Mapping[str, Severity] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.overrides) - set(SEVERITY))
        if unknown:
            raise ValueError(f"MediaPolicy.overrides: unknown codes {unknown}; known: {sorted(SEVERITY)}")
        bad = {k: v for k, v in self.overrides.items() if v not in ("error", "warning")}
        if bad:
            raise ValueError(f"MediaPolicy.overrides: severities must be 'error' or 'warning', got {bad}")
        if self.min_sample_rate is not None and self.min_sample_rate <= 0:
            raise ValueError(f"MediaPolicy.min_sample_rate must be > 0, got {self.min_sample_rate}")

    def issue(self, code: str, field: str | None, reason: str, path: str | Path | None = None) -> Issue:
        """An issue whose severity comes from the table, as this policy adjusts it."""
        severity = self.overrides.get(code) or SEVERITY[code]
        return Issue(code, field, reason, severity, None if path is None else str(path))


DEFAULT_POLICY = MediaPolicy()


def check_file(path: Path, field: str, policy: MediaPolicy = DEFAULT_POLICY) -> Issue | None:
    """Exists, is a regular file, is readable and not empty; None when all hold."""
    try:
        return _file_problem(path, field, policy)
    except OSError as exc:
        # exists() and is_file() raise on errors other than "not found": a name longer than the
        # file system allows (a long CJK file name), a path through a file, I/O errors.
        return policy.issue("unreadable", field, f"cannot open: {exc.strerror or exc}", path)


def _file_problem(path: Path, field: str, policy: MediaPolicy) -> Issue | None:
    if not path.exists():
        return policy.issue("missing", field, "file not found", path)
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file"
        return policy.issue("not_a_file", field, f"{kind}, not a media file", path)
    if not os.access(path, os.R_OK):
        return policy.issue("unreadable", field, "no permission to read the file", path)
    if path.stat().st_size == 0:
        return policy.issue("empty", field, "empty file (0 bytes)", path)
    return None


def check_audio_array(
    audio: np.ndarray,
    sample_rate: int | None,
    *,
    field: str = "audio",
    channels: int | None = None,
    has_frames: bool = False,
    policy: MediaPolicy = DEFAULT_POLICY,
    path: str | Path | None = None,
) -> list[Issue]:
    """Problems of a decoded waveform ``(S,)`` or ``(S, C)``, before any resampling.

    Usable on in-memory audio (a server's upload) as well as on decoded files.

    Args:
        audio: The samples, float.
        sample_rate: Their rate in Hz; None when unknown (a track decoded straight to 16 kHz).
        field: Manifest field for the issues.
        channels: Channels of the source; default ``C`` of a 2-D array, else 1.
        has_frames: Whether the row also has frames (a video or image): silence is then a warning
            and the row is used without audio, else an error.
        policy: Severity adjustments and thresholds.
        path: The file, for the issues.

    Returns:
        The issues, errors and warnings, in the order found.
    """
    found: list[Issue] = []
    channels = channels if channels is not None else (audio.shape[1] if audio.ndim == 2 else 1)
    if sample_rate is not None and sample_rate < MODEL_SAMPLE_RATE:
        if policy.min_sample_rate is not None and sample_rate < policy.min_sample_rate:
            found.append(policy.issue("below_min_sample_rate", field,
                                      f"sample rate {sample_rate} Hz below {policy.min_sample_rate} Hz", path))
        else:
            found.append(policy.issue("low_sample_rate", field, f"sample rate {sample_rate} Hz: upsampled to "
                                      f"{MODEL_SAMPLE_RATE} Hz (nothing above {sample_rate // 2} Hz)", path))
    if channels > 1:
        found.append(policy.issue("multichannel", field, f"{channels} channels (mixed down to mono)", path))
    if audio.shape[0] == 0:
        found.append(policy.issue("no_samples", field, "no audio samples (a header only)", path))
        return found
    finite = np.isfinite(audio)
    if not finite.all():
        found.append(policy.issue("non_finite", field, f"{int((~finite).sum())} NaN/inf samples", path))
        return found
    seconds = audio.shape[0] / (sample_rate or MODEL_SAMPLE_RATE)
    peak = float(np.abs(audio).max())
    if seconds < policy.min_audio_seconds:
        found.append(policy.issue("too_short", field, f"too short: {seconds:.3f} s < {policy.min_audio_seconds} s",
                                  path))
    elif peak < policy.silence_peak:
        level = f"peak {peak:.1e}" if peak > 0 else "all zeros"
        if has_frames:
            found.append(policy.issue("silent_track", field, f"silent ({level}): used without audio", path))
        else:
            found.append(policy.issue("silent", field, f"silent ({level})", path))
    return found


# Leading bytes of the formats media come in: (offset, magic, format).
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (8, b"WAVE", "wav"), (0, b"fLaC", "flac"), (0, b"OggS", "ogg"), (0, b"ID3", "mp3"), (0, b"\xff\xfb", "mp3"),
    (0, b"\xff\xf3", "mp3"), (4, b"ftyp", "mp4"), (0, b"\x1a\x45\xdf\xa3", "mkv"), (8, b"AVI ", "avi"),
    (0, b"FLV", "flv"), (0, b"\x89PNG", "png"), (0, b"\xff\xd8\xff", "jpeg"), (0, b"GIF8", "gif"),
    (0, b"BM", "bmp"), (8, b"WEBP", "webp"),
)
FORMAT_KIND: Mapping[str, str] = MappingProxyType({
    "wav": "audio", "flac": "audio", "ogg": "audio", "mp3": "audio", "mp4": "video", "mkv": "video",
    "avi": "video", "flv": "video", "png": "image", "jpeg": "image", "gif": "image", "bmp": "image",
    "webp": "image", "m4a": "audio", "heif": "image", "text": "text",
})
FORMAT_EXTENSIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "wav": (".wav", ".wave"), "flac": (".flac",), "ogg": (".ogg", ".oga", ".opus"), "mp3": (".mp3",),
    "mp4": (".mp4", ".m4a", ".m4v", ".mov", ".3gp", ".aac"), "mkv": (".mkv", ".webm"), "avi": (".avi",),
    "flv": (".flv",), "png": (".png",), "jpeg": (".jpg", ".jpeg"), "gif": (".gif",), "bmp": (".bmp",),
    "webp": (".webp",), "m4a": (".m4a", ".m4b", ".m4p", ".mp4", ".aac"), "heif": (".heic", ".heif", ".hif", ".avif"),
})
# What each field may hold; an mp4 may be audio only (m4a), so the audio field accepts video containers.
FIELD_KINDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "video": ("video",), "audio": ("audio", "video"), "image": ("image",),
})


# ISO media files all start with "ftyp"; the major brand after it says what the file holds.
_FTYP_BRANDS: Mapping[bytes, str] = MappingProxyType({
    **dict.fromkeys((b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"F4B "), "m4a"),
    **dict.fromkeys((b"avif", b"avis", b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"),
                    "heif"),
})


def sniff_format(path: Path) -> str | None:
    """The format named by a file's first bytes (``wav``, ``mp4``, ``png``..., ``text``), or None."""
    with path.open("rb") as handle:
        head = handle.read(512)
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return _FTYP_BRANDS.get(head[8:12], name) if name == "mp4" else name
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text" if text.strip() and all(ch.isprintable() or ch.isspace() for ch in text) else None


def check_format(path: Path, field: str, policy: MediaPolicy = DEFAULT_POLICY) -> Issue | None:
    """A file whose content is not the kind its field holds (error), or not what its name says (warning).

    Decoders read content, not names: a WAV named ``.mp3`` decodes (a warning), a WAV in ``video`` or a
    text file named ``.mp4`` never will (an error naming what the file really is).
    """
    found = sniff_format(path)
    if found is None:
        return None
    kind = FORMAT_KIND[found]
    if kind == "text":
        return policy.issue("undecodable", field, f"a text file, not {field}", path)
    if kind not in FIELD_KINDS.get(field, (kind,)):
        return policy.issue("wrong_kind", field, f"holds {found.upper()} {kind}, not {field}: put it in "
                            f"'{kind}'", path)
    if path.suffix.lower() not in FORMAT_EXTENSIONS[found]:
        return policy.issue("wrong_extension", field, f"named {path.suffix or 'without extension'} but holds "
                            f"{found.upper()}", path)
    return None


class RefusedInputError(ValueError):
    """Under ``--strict``: a manifest line or a medium was refused, and the command stops there."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} (--strict stops at the first refused input; without it the input is "
                         "recorded and the run goes on)")
