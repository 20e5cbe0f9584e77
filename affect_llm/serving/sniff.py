"""What a medium is, read from its first bytes: the name or MIME type a client claims decides nothing.

Only the formats the decoders behind :func:`affect_llm.data.media.load_media` read are recognised:
audio (wav, flac, mp3, ogg, m4a), images (png, jpeg, gif, webp, bmp) and videos (mp4 / mov,
webm / mkv, avi). Anything else is refused before a decoder sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MediaKind = Literal["audio", "image", "video"]


@dataclass(frozen=True)
class Sniffed:
    """The kind and format of a medium, and the file suffix its decoder expects.

    Attributes:
        kind: ``audio``, ``image`` or ``video``.
        format: ``wav``, ``png``, ``mp4``, ...
    """

    kind: MediaKind
    format: str

    @property
    def suffix(self) -> str:
        return "." + {"jpeg": "jpg", "matroska": "mkv"}.get(self.format, self.format)


# (offset, magic bytes, kind, format); RIFF and ISO base media files are told apart below.
_SIGNATURES: tuple[tuple[int, bytes, MediaKind, str], ...] = (
    (0, b"fLaC", "audio", "flac"),
    (0, b"OggS", "audio", "ogg"),
    (0, b"ID3", "audio", "mp3"),
    (0, b"\x89PNG\r\n\x1a\n", "image", "png"),
    (0, b"\xff\xd8\xff", "image", "jpeg"),
    (0, b"GIF87a", "image", "gif"),
    (0, b"GIF89a", "image", "gif"),
    (0, b"BM", "image", "bmp"),
    (0, b"\x1a\x45\xdf\xa3", "video", "matroska"),
)
_RIFF = {b"WAVE": ("audio", "wav"), b"WEBP": ("image", "webp"), b"AVI ": ("video", "avi")}
# ISO base media brands that hold sound only.
_AUDIO_BRANDS = (b"M4A ", b"M4B ", b"F4A ")


def sniff(data: bytes) -> Sniffed | None:
    """The kind and format of ``data`` from its signature, or None when it is none of the known ones."""
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        kind, fmt = _RIFF[data[8:12]]
        return Sniffed(kind, fmt)  # type: ignore[arg-type]
    if data[4:8] == b"ftyp":
        return Sniffed("audio", "m4a") if data[8:12] in _AUDIO_BRANDS else Sniffed("video", "mp4")
    for offset, magic, kind, fmt in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return Sniffed(kind, fmt)
    # An MPEG audio frame header without an ID3 tag: 11 sync bits, then a layer other than "reserved".
    if len(data) >= 2 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:
        return Sniffed("audio", "mp3")
    return None


def describe(sniffed: Sniffed | None) -> str:
    """``a png image``, ``wav audio``, ``an mp4 video`` or ``not a known audio, image or video format``."""
    if sniffed is None:
        return "not a known audio, image or video format"
    if sniffed.kind == "audio":
        return f"{sniffed.format} audio"
    article = "an" if sniffed.format[0] in "aeiou" else "a"
    return f"{article} {sniffed.format} {sniffed.kind}"
