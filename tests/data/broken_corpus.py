"""Build a corpus of broken and odd inputs, one kind per manifest line, with the verdict each must get.

Every file is generated here (numpy, soundfile, ffmpeg, the synthetic face renderer): nothing binary
is committed. Run it to look at the files:

    python tests/data/broken_corpus.py /tmp/broken      # writes /tmp/broken/manifest.jsonl

Each :class:`Case` says what the line holds, whether the row must be usable (``ok``) or refused
(``error``), and the code (:data:`affect_llm.data.issues.SEVERITY`) the checks must give it.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class Case:
    """One manifest line of the corpus.

    Attributes:
        line: 1-based line in the manifest.
        id: The row id (None where the line has no readable id).
        kind: What is odd about it.
        verdict: ``ok`` (the row is used, maybe with warnings) or ``error`` (refused).
        code: The issue code that decides it (a warning's code for ``ok`` rows; None when clean).
    """

    line: int
    id: str | None
    kind: str
    verdict: str
    code: str | None


def _tone(seconds: float, rate: int = 16000, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    # A tone whose loudness moves like syllables: enough to be neither silent nor constant.
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
    return (amplitude * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _face_clip(path: Path, audio: np.ndarray | None, work: Path, seed: int = 0) -> Path:
    """An mp4 of a rendered face (4 fps, 8 frames), with ``audio`` muxed as AAC or no sound track."""
    from affect_llm.data.synth.face import render_face_frames, sample_face_style
    from affect_llm.data.synth.render import write_mp4

    frames = render_face_frames("happy", sample_face_style(np.random.default_rng(seed)), 8)  # (K, H, W, 3)
    wav = None
    if audio is not None:
        wav = work / f"{path.stem}.track.wav"
        sf.write(str(wav), audio, 16000)
    write_mp4(frames, wav, path)
    return path


def _media(root: Path) -> None:
    """Every media file the manifest names."""
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    good = _face_clip(root / "good.mp4", _tone(2.0), work)
    sf.write(str(root / "good.wav"), _tone(1.0), 16000)
    (root / "zero.mp4").write_bytes(b"")
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "random.mp4").write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "text.mp4").write_text("this is a note, not a video\n")
    (root / "folder.mp4").mkdir(exist_ok=True)
    sf.write(str(root / "nan.wav"), np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(str(root / "header_only.wav"), np.zeros(0, dtype=np.float32), 16000)
    sf.write(str(root / "short.wav"), _tone(0.1), 16000)
    sf.write(str(root / "phone.wav"), np.stack([_tone(1.0, 8000)] * 2, axis=1), 8000)
    sf.write(str(root / "silent.wav"), np.zeros(16000, dtype=np.float32), 16000)
    _face_clip(root / "silent_track.mp4", np.zeros(32000, dtype=np.float32), work)
    _face_clip(root / "no_track.mp4", None, work)
    shutil.copy(root / "good.wav", root / "named_wrong.mp3")
    shutil.copy(root / "good.wav", root / "audio_as_video.mp4")
    _still_images(root)
    sf.write(str(root / "pcm24.wav"), _tone(2.0), 16000, subtype="PCM_24")
    sf.write(str(root / "whole.flac"), _tone(2.0), 16000)
    for name in ("pcm24.wav", "whole.flac"):
        data = (root / name).read_bytes()
        (root / f"cut_{name}").write_bytes(data[: int(len(data) * 0.6)])
    # A recording that opens with a pause longer than a 4 s audio window.
    sf.write(str(root / "late_voice.wav"), np.concatenate([np.zeros(5 * 16000, np.float32), _tone(2.0)]), 16000)
    _ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "1", "-c:a", "aac",
             str(root / "voice.m4a")])
    shutil.rmtree(work)


def _still_images(root: Path) -> None:
    """A PNG with an alpha channel (read after the videos: decord's zlib once broke every PNG)."""
    from PIL import Image

    from affect_llm.data.synth.face import render_face_frames, sample_face_style

    frame = render_face_frames("happy", sample_face_style(np.random.default_rng(3)), 1)[0]  # (H, W, 3)
    alpha = np.full(frame.shape[:2] + (1,), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([frame, alpha], axis=2), "RGBA").save(root / "alpha.png")


def _ffmpeg(args: list[str]) -> None:
    import subprocess

    subprocess.run([shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _row(row_id: str, **fields: object) -> dict:
    return {"id": row_id, "labels": ["happy"], "split": "test", **fields}


# (kind, line content, verdict, code). A line is a dict (written as JSON) or raw bytes.
LINES: tuple[tuple[str, dict | bytes, str, str | None], ...] = (
    ("good video with a face and a voice", _row("good_video", video="good.mp4", transcript="I did it!"), "ok", None),
    ("good audio", _row("good_audio", audio="good.wav"), "ok", None),
    ("zero bytes", _row("zero_bytes", video="zero.mp4"), "error", "empty"),
    ("truncated mp4", _row("truncated", video="truncated.mp4"), "error", "undecodable"),
    ("random bytes", _row("random_bytes", video="random.mp4"), "error", "undecodable"),
    ("text named .mp4", _row("text_as_mp4", video="text.mp4"), "error", "undecodable"),
    ("directory named .mp4", _row("folder_as_mp4", video="folder.mp4"), "error", "not_a_file"),
    ("missing file", _row("missing", audio="nowhere.wav"), "error", "missing"),
    ("NaN audio", _row("nan_audio", audio="nan.wav"), "error", "non_finite"),
    ("zero samples (header-only WAV)", _row("zero_samples", audio="header_only.wav"), "error", "no_samples"),
    ("0.1 s audio", _row("short_audio", audio="short.wav"), "error", "too_short"),
    ("silent audio, nothing else", _row("silent_audio", audio="silent.wav"), "error", "silent"),
    ("8 kHz stereo speech", _row("phone_stereo", audio="phone.wav"), "ok", "low_sample_rate"),
    ("silent video whose frames carry a face", _row("silent_video", video="silent_track.mp4"), "ok", "silent_track"),
    ("video without an audio track", _row("no_audio_track", video="no_track.mp4"), "ok", "no_audio_track"),
    ("wrong extension (WAV named .mp3)", _row("wrong_extension", audio="named_wrong.mp3"), "ok", "wrong_extension"),
    ("audio file in the video field", _row("audio_as_video", video="audio_as_video.mp4"), "error", "wrong_kind"),
    ("duplicate id", _row("good_audio", audio="short.wav"), "error", "duplicate_id"),
    ("malformed JSON", b'{"id": "broken", "video": "good.mp4"', "error", "manifest"),
    ("missing id", {"video": "good.mp4", "labels": ["sad"]}, "error", "manifest"),
    ("labels of the wrong type", _row("labels_str", audio="good.wav", labels="happy"), "error", "manifest"),
    ("non-UTF-8 line", json.dumps(_row("latin1", audio="good.wav", transcript="caf@")).encode().replace(b"@", b"\xe9"),
     "error", "manifest"),
    ("unknown key", _row("unknown_key", audio="good.wav", speaker="A"), "error", "manifest"),
    ("no media and no transcript", _row("nothing"), "error", "no_content"),
    ("hand-written row: id, video and labels only", {"id": "minimal", "video": "good.mp4", "labels": ["joy"]},
     "ok", "no_split"),
    ("PNG with an alpha channel, after videos", _row("alpha_png", image="alpha.png"), "ok", None),
    ("file name longer than the file system allows", _row("long_name", audio="\u58f0" * 100 + ".wav"),
     "error", "unreadable"),
    ("WAV cut short after its header", _row("cut_wav", audio="cut_pcm24.wav"), "error", "undecodable"),
    ("FLAC cut short", _row("cut_flac", audio="cut_whole.flac"), "error", "undecodable"),
    ("speech after 5 s of silence", _row("late_voice", audio="late_voice.wav"), "ok", None),
    ("M4A audio in the video field", _row("m4a_as_video", video="voice.m4a"), "error", "wrong_kind"),
    ("extra.channels listing no channel", _row("no_channels", audio="good.wav", extra={"channels": []}),
     "error", "no_content"),
    ("extra.channels listing a face the row has no frames for",
     _row("face_claimed", audio="good.wav", transcript="I did it!", extra={"channels": ["audio", "video"]}),
     "error", "channel_without_medium"),
)


def _readable_id(raw: bytes) -> str | None:
    """The id a reader can still name for a line (a bad byte elsewhere in the line leaves it readable)."""
    try:
        obj = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return None
    return obj.get("id") if isinstance(obj, dict) else None


def build_broken_corpus(root: Path) -> tuple[Path, list[Case]]:
    """Write the media and ``manifest.jsonl`` under ``root``; returns the manifest and its cases."""
    root.mkdir(parents=True, exist_ok=True)
    _media(root)
    cases = []
    with (root / "manifest.jsonl").open("wb") as handle:
        for line, (kind, content, verdict, code) in enumerate(LINES, start=1):
            raw = content if isinstance(content, bytes) else json.dumps(content).encode("utf-8")
            handle.write(raw + b"\n")
            cases.append(Case(line, _readable_id(raw), kind, verdict, code))
    return root / "manifest.jsonl", cases


if __name__ == "__main__":
    manifest, built = build_broken_corpus(Path(sys.argv[1] if len(sys.argv) > 1 else "broken_corpus"))
    for case in built:
        print(f"{case.line:3d}  {case.verdict:5s}  {case.code or '-':16s}  {case.kind}")
    print(manifest)
