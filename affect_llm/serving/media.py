"""A request's media -> the model's encoder features and the clip's words, off the event loop, cached.

Reading a part (base64, a ``data:`` URL, or a file under ``--allowed-media-dir``), checking its
size and sniffing its kind from its bytes happen in a worker thread; decoding, encoding and speech
recognition in one dedicated thread (decord must not decode two clips at once from threads, see
:class:`affect_llm.features.featurize.MediaOptions`). A clip is keyed by the SHA-256 of its media
bytes, so a clip sent again (every turn of a conversation resends it) is neither decoded nor
encoded again, and concurrent requests with the same clip wait for one decoding.

Without a transcript from the client, the words of a clip with sound come from speech recognition
(:class:`affect_llm.features.asr.SpeechRecognizer`) and are marked as recognised.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import tempfile
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from affect_llm.data.manifest import ManifestRow
from affect_llm.features.asr import SpeechRecognizer, Transcription, row_audio
from affect_llm.features.featurize import MediaFeaturizer
from affect_llm.modeling.media import MediaInputs
from affect_llm.serving.conversation import MediaRef
from affect_llm.serving.errors import ApiError, bad_request
from affect_llm.serving.sniff import Sniffed, describe, sniff

MB = 1024 * 1024


@dataclass(frozen=True)
class Medium:
    """One media part, read and sniffed.

    Attributes:
        ref: The part it came from.
        sniffed: Kind and format, from its bytes.
        digest: SHA-256 of its bytes.
        data: The bytes of an inline part (None for a local file).
        path: The allowed local file (None for an inline part).
    """

    ref: MediaRef
    sniffed: Sniffed
    digest: str
    data: bytes | None = None
    path: Path | None = None


@dataclass
class Clip:
    """A decoded clip: what the model reads, and its recognised words.

    Attributes:
        media: Encoder features per modality the model has.
        recognised: Speech recognised in its sound, once asked for (None: not run, or no sound).
        asr_done: Whether recognition ran (or there was no sound to run it on).
    """

    media: MediaInputs
    recognised: Transcription | None = None
    asr_done: bool = False


@dataclass
class MediaStats:
    """Counters for ``/health``: cache hits and misses, clips decoded, recognitions run."""

    hits: int = 0
    misses: int = 0
    decoded: int = 0
    recognised: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class MediaLimits:
    """What the server reads.

    Attributes:
        max_media_bytes: Largest medium (decoded bytes).
        allowed_media_dir: Folder local ``file://`` paths must lie in; None refuses every path.
        max_audio_seconds: Longest audio, read from its header before decoding: compressed silence
            is tiny on the wire (an hour of FLAC is about 0.7 MB) and gigabytes once decoded.
        max_image_pixels: Largest image, read from its header likewise.
    """

    max_media_bytes: int = 32 * MB
    allowed_media_dir: Path | None = None
    max_audio_seconds: float = 600.0
    max_image_pixels: int = 40_000_000


def _decode_base64(payload: str, param: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the data is not valid base64", param) from None


def _data_url_bytes(url: str, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request("a data: URL must be base64 encoded (data:<type>;base64,<data>)", param)
    return _decode_base64(payload, param)


def read_medium(ref: MediaRef, limits: MediaLimits) -> Medium:
    """Read, size-check and sniff one part (blocking: run it in a thread).

    Raises:
        ApiError: 400 for bad base64, a remote URL, or bytes of another kind than the part says;
            403 for a local path when none are allowed or one outside the allowed folder; 413 for
            a medium over the size limit.
    """
    path = None
    if ref.base64 is not None:
        data = _decode_base64(ref.base64, ref.param)
    elif ref.url is not None and ref.url.startswith("data:"):
        data = _data_url_bytes(ref.url, ref.param)
    elif ref.url is not None and (ref.url.startswith("file://") or ref.url.startswith("/")):
        path = _allowed_path(ref, limits)
        data = path.read_bytes()
    else:
        raise bad_request("remote URLs are not fetched; send the media inline as a data: URL", ref.param)
    if len(data) > limits.max_media_bytes:
        raise _too_large(ref.param, len(data), limits)
    if not data:
        raise bad_request(f"the data is empty (0 bytes), not {_expected(ref)}", ref.param, "unsupported_media")
    sniffed = sniff(data[:64])
    if sniffed is None or sniffed.kind != ref.expected:
        raise bad_request(f"the data is {describe(sniffed)}, not {_expected(ref)}", ref.param, "unsupported_media")
    _check_decoded_size(data, sniffed.kind, ref.param, limits)
    return Medium(ref, sniffed, hashlib.sha256(data).hexdigest(), None if path else data, path)


def _check_decoded_size(data: bytes, kind: str, param: str, limits: MediaLimits) -> None:
    """Refuse audio longer, or an image larger, than the limits, from the header alone (413).

    A header the readers here cannot parse (m4a audio) is left to the decoder, whose errors name the
    part; videos are read a few sampled frames at a time and are not checked.
    """
    if kind == "audio":
        import soundfile as sf

        try:
            info = sf.info(io.BytesIO(data))
        except (sf.LibsndfileError, RuntimeError, TypeError):
            return
        seconds = info.frames / info.samplerate if info.samplerate else 0.0
        if seconds > limits.max_audio_seconds:
            raise ApiError(413, f"{param}: the audio lasts {seconds:.0f} s, over the limit of "
                                f"{limits.max_audio_seconds:.0f} s per clip", param, "media_too_large")
    elif kind == "image":
        from PIL import Image, UnidentifiedImageError

        with warnings.catch_warnings():  # PIL warns past 89 million pixels; the limit here decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                width, height = Image.open(io.BytesIO(data)).size  # the header only: nothing decoded yet
            except Image.DecompressionBombError as bomb:  # past twice PIL's own limit
                raise ApiError(413, f"{param}: {bomb}", param, "media_too_large") from None
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                return
        if width * height > limits.max_image_pixels:
            raise ApiError(413, f"{param}: the image is {width} x {height} pixels, over the limit of "
                                f"{limits.max_image_pixels / 1e6:.0f} million", param, "media_too_large")


def _expected(ref: MediaRef) -> str:
    return {"audio": "audio (wav, mp3, flac, ogg, m4a)", "image": "an image (png, jpeg, gif, webp, bmp)",
            "video": "a video (mp4, webm, mkv, avi)"}[ref.expected]


def _too_large(param: str, size: int, limits: MediaLimits) -> ApiError:
    return ApiError(413, f"{param}: the medium is {size / MB:.1f} MB, over the limit of "
                         f"{limits.max_media_bytes / MB:.1f} MB per medium", param, "media_too_large")


def _allowed_path(ref: MediaRef, limits: MediaLimits) -> Path:
    assert ref.url is not None
    raw = unquote(urlparse(ref.url).path) if ref.url.startswith("file://") else ref.url
    if limits.allowed_media_dir is None:
        raise ApiError(403, f"{ref.param}: local file paths are refused (the server was started without "
                            "--allowed-media-dir)", ref.param, "path_not_allowed")
    root = limits.allowed_media_dir.resolve()
    path = Path(raw).resolve()  # symlinks followed: a link inside the folder may not lead out of it
    if not path.is_relative_to(root):
        raise ApiError(403, f"{ref.param}: {raw} is outside the allowed media folder", ref.param, "path_not_allowed")
    if not path.is_file():
        raise bad_request(f"{raw}: no such file", ref.param, "file_not_found")
    if path.stat().st_size > limits.max_media_bytes:
        raise _too_large(ref.param, path.stat().st_size, limits)
    return path


def clip_media(media: list[Medium]) -> dict[str, Medium]:
    """The clip's sound and picture; a repeat of the same bytes is the same medium.

    Raises:
        ApiError: 400 when one slot gets two different media (one conversation, one clip).
    """
    clip: dict[str, Medium] = {}
    for medium in media:
        seen = clip.get(medium.ref.slot)
        if seen is None:
            clip[medium.ref.slot] = medium
        elif seen.digest != medium.digest:
            raise bad_request(f"a conversation is about one clip; this {medium.ref.slot} differs from the one in "
                              f"{seen.ref.param} (start a new conversation for another clip)", medium.ref.param)
    return clip


@dataclass
class MediaStore:
    """Decodes clips once and keeps their features, keyed by content.

    Args:
        featurizer: Decodes and encodes a clip (the checkpoint's encoders and frame sampling).
        recognizer: Speech recognition for clips without a transcript; None disables it.
        limits: Size limit and allowed local folder.
        max_clips: Clips kept (least recently used ones leave first).
    """

    featurizer: MediaFeaturizer
    recognizer: SpeechRecognizer | None
    limits: MediaLimits = field(default_factory=MediaLimits)
    max_clips: int = 128
    stats: MediaStats = field(default_factory=MediaStats)

    def __post_init__(self) -> None:
        self._clips: OrderedDict[str, Clip] = OrderedDict()
        self._pending: dict[str, asyncio.Future[Clip]] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="affect-media")

    async def prepare(self, refs: list[MediaRef], want_words: bool) -> tuple[Clip, bool]:
        """The clip of a conversation and whether it came from the cache.

        Args:
            refs: Every media part of the request (repeats included).
            want_words: Whether to recognise speech (no transcript from the client).

        Raises:
            ApiError: For a part that cannot be read or decoded (the message names the part).
        """
        read = [await asyncio.to_thread(read_medium, ref, self.limits) for ref in refs]
        media = clip_media(read)
        key = "|".join(f"{slot}={m.sniffed.kind}:{m.digest}" for slot, m in sorted(media.items()))
        has_sound = "audio" in media or ("visual" in media and media["visual"].sniffed.kind == "video")
        want_words = want_words and has_sound and self.recognizer is not None
        clip = self._clips.get(key)
        if clip is not None and (clip.asr_done or not want_words):
            self._clips.move_to_end(key)
            self.stats.hits += 1
            return clip, True
        job = f"{key}|words={want_words}"
        pending = self._pending.get(job)
        if pending is not None:  # the same clip is being decoded for another request
            self.stats.hits += 1
            return await asyncio.shield(pending), True
        self.stats.misses += 1
        future: asyncio.Future[Clip] = asyncio.get_running_loop().run_in_executor(
            self._worker, self._decode, media, clip, want_words)
        self._pending[job] = future
        try:
            clip = await asyncio.shield(future)
        finally:
            self._pending.pop(job, None)
        self._clips[key] = clip
        while len(self._clips) > self.max_clips:
            self._clips.popitem(last=False)
        return clip, False

    def _decode(self, media: dict[str, Medium], known: Clip | None, want_words: bool) -> Clip:
        """Decode + encode (+ recognise) in the media thread; files land in a temporary folder."""
        with tempfile.TemporaryDirectory(prefix="affect-serve-") as tmp:
            row, params = self._row(media, Path(tmp))
            clip = known
            if clip is None:
                features = self.featurizer([row])
                if row.id not in features:
                    raise self._decode_error(params, self.featurizer.failures.pop(row.id, "cannot decode the clip"))
                self.stats.decoded += 1
                clip = Clip(features[row.id])
            if want_words and not clip.asr_done:
                clip.recognised = self._recognise(row)
                clip.asr_done = True
        return clip

    @staticmethod
    def _decode_error(params: dict[str, str], failure: str) -> ApiError:
        """A 400 naming the part whose file failed (the decoder names the temporary file)."""
        param = next((p for path, p in params.items() if path in failure), next(iter(params.values())))
        for path, name in params.items():
            failure = failure.replace(f"{path}: ", "").replace(path, name)
        return bad_request(f"cannot decode the media: {failure}", param, "undecodable_media")

    def _row(self, media: dict[str, Medium], folder: Path) -> tuple[ManifestRow, dict[str, str]]:
        fields: dict[str, Any] = {}
        params: dict[str, str] = {}
        for slot, medium in media.items():
            path = medium.path
            if path is None:
                path = folder / f"{slot}{medium.sniffed.suffix}"
                path.write_bytes(medium.data or b"")
            name = "audio" if slot == "audio" else medium.sniffed.kind
            fields[name] = str(path)
            params[str(path)] = medium.ref.param
        return ManifestRow(id="clip", **fields), params

    def _recognise(self, row: ManifestRow) -> Transcription | None:
        assert self.recognizer is not None
        audio, _ = row_audio(row)  # the clip passed the media checks before it got here
        if audio is None or len(audio) == 0:
            return None
        self.stats.recognised += 1
        return self.recognizer.transcribe([audio])[0]

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
