"""Build the synthetic sample set: plan every sample from a seed, render media in a process pool.

Layout written under ``out_dir``::

    manifest.jsonl        one row per sample (media paths relative to out_dir)
    synth_stamp.json      the parameters the set was built with (idempotence check)
    media/<id>.wav        16 kHz mono speech
    media/<id>.png        first face frame
    media/<id>.mp4        H.264 face clip with the speech as AAC

Splits: ``train`` and ``val`` mix cue="all" (every channel shows the emotion) with single-channel
cues; ``test`` holds the subsets cue in {audio, face, text, conflict}, where single-cue samples keep
the other channels neutral, so only a model that uses that channel can answer.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from affect_llm.data.synth.face import IMAGE_SIZE, FaceStyle, render_face_frames, sample_face_style
from affect_llm.data.synth.text import (
    CHANNELS,
    EMOTIONS,
    NEUTRAL,
    VALENCE_AROUSAL,
    evidence_for,
    explanation_for,
    labels_for,
    sentence_pool,
)
from affect_llm.data.synth.voice import Prosody, render_voice, sample_prosody

GENERATOR_VERSION = 1
STAMP_NAME = "synth_stamp.json"
MANIFEST_NAME = "manifest.jsonl"
FPS = 4
MIN_FRAMES = 4
TRAIN_CUE_MIX: tuple[tuple[str, float], ...] = (("all", 0.4), ("audio", 0.2), ("face", 0.2), ("text", 0.2))
TEST_CUES: tuple[str, ...] = ("audio", "face", "text", "conflict")
# Fewer channels carrying the cue (or channels that disagree) make a sample harder.
DIFFICULTY: dict[str, float] = {"all": 0.2, "audio": 0.6, "face": 0.6, "text": 0.5, "conflict": 0.9}


@dataclass(frozen=True)
class SampleSpec:
    """Everything needed to render one sample; rendering adds no randomness.

    Attributes:
        id: Sample id, also the media file stem.
        split: ``train``, ``val`` or ``test``.
        cue: ``all``, ``audio``, ``face``, ``text`` or ``conflict``.
        cues: Level shown per channel (``audio``, ``face``, ``text``): an emotion or ``neutral``.
        transcript: Spoken sentence, also the text channel.
        prosody: Speech settings.
        face_style: Face appearance.
    """

    id: str
    split: str
    cue: str
    cues: dict[str, str]
    transcript: str
    prosody: Prosody
    face_style: FaceStyle


def generate_synthetic_set(
    out_dir: Path,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 40,
    num_test_per_cue: int = 40,
    workers: int | None = None,
) -> Path:
    """Write the synthetic set under ``out_dir`` and return the manifest path.

    Same seed and sizes give byte-identical wav, png and manifest files. If ``out_dir`` already
    holds a manifest whose stamp matches the parameters, nothing is regenerated.

    Args:
        out_dir: Output folder (created if missing).
        seed: Seed of every random choice.
        num_train: Training samples (40% cue "all", 20% each single cue).
        num_val: Validation samples, same mix as training.
        num_test_per_cue: Test samples per cue in ``TEST_CUES``.
        workers: Worker processes; ``os.cpu_count()`` when None.

    Returns:
        Path to ``out_dir/manifest.jsonl``.

    Raises:
        ValueError: If a size is negative or ``workers`` < 1.
        RuntimeError: If espeak-ng, sox or ffmpeg fails for a sample.
    """
    for name, value in (
        ("num_train", num_train),
        ("num_val", num_val),
        ("num_test_per_cue", num_test_per_cue),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    manifest, stamp_path = out_dir / MANIFEST_NAME, out_dir / STAMP_NAME
    stamp = {
        "generator": "affect_llm.data.synth",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "num_test_per_cue": num_test_per_cue,
    }
    if manifest.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return manifest
    media = out_dir / "media"
    if stamp_path.is_file() and media.is_dir():
        # A set built with other parameters: drop its media so no stale clip survives.
        shutil.rmtree(media)
    media.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    specs = plan_samples(seed, num_train, num_val, num_test_per_cue)
    jobs = [(spec, out_dir) for spec in specs]
    if workers == 1 or len(specs) <= 1:
        rows = [_render_job(job) for job in jobs]
    else:
        with _pool_context().Pool(min(workers, len(specs))) as pool:
            rows = pool.map(_render_job, jobs, chunksize=4)
    stamp_path.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    # The manifest appears last and atomically: its presence means the media are complete.
    os.replace(tmp, manifest)
    return manifest


def plan_samples(seed: int, num_train: int, num_val: int, num_test_per_cue: int) -> list[SampleSpec]:
    """Decide every sample (cues, sentence, prosody, face) from ``seed`` alone.

    Args:
        seed: Seed of every random choice.
        num_train: Training samples.
        num_val: Validation samples.
        num_test_per_cue: Test samples per test cue.

    Returns:
        Specs in manifest order: train, val, test (cue by cue).
    """
    rng = np.random.default_rng([seed, 0])
    groups: list[tuple[str, str]] = []
    for split, total in (("train", num_train), ("val", num_val)):
        cues = [cue for cue, count in _mix_counts(total) for _ in range(count)]
        groups += [(split, cues[i]) for i in rng.permutation(len(cues))]
    groups += [("test", cue) for cue in TEST_CUES for _ in range(num_test_per_cue)]
    # Balanced emotions within every (split, cue) subset, in shuffled order.
    emotion_of: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    offsets = {key: int(rng.integers(len(EMOTIONS))) for key in sorted(set(groups))}
    for key in groups:
        emotion_of.append(EMOTIONS[(seen.get(key, 0) + offsets[key]) % len(EMOTIONS)])
        seen[key] = seen.get(key, 0) + 1
    specs = []
    counters: dict[str, int] = {}
    for index, ((split, cue), emotion) in enumerate(zip(groups, emotion_of, strict=True)):
        sample_rng = np.random.default_rng([seed, 1, index])
        cues = _channel_levels(cue, emotion, sample_rng)
        pool = sentence_pool(cues["text"], held_out=split == "test")
        counters[split] = counters.get(split, 0) + 1
        specs.append(
            SampleSpec(
                id=f"synth-{split}-{counters[split] - 1:04d}",
                split=split,
                cue=cue,
                cues=cues,
                transcript=pool[int(sample_rng.integers(len(pool)))],
                prosody=sample_prosody(cues["audio"], sample_rng),
                face_style=sample_face_style(sample_rng),
            )
        )
    return specs


def _mix_counts(total: int) -> list[tuple[str, int]]:
    """Split ``total`` over ``TRAIN_CUE_MIX`` by largest remainder, so counts sum exactly."""
    raw = [(cue, total * share) for cue, share in TRAIN_CUE_MIX]
    counts = {cue: int(math.floor(value)) for cue, value in raw}
    by_remainder = sorted(raw, key=lambda item: (-(item[1] - math.floor(item[1])), item[0]))
    for cue, _ in by_remainder[: total - sum(counts.values())]:
        counts[cue] += 1
    return [(cue, counts[cue]) for cue, _ in TRAIN_CUE_MIX]


def _channel_levels(cue: str, emotion: str, rng: np.random.Generator) -> dict[str, str]:
    if cue == "all":
        return dict.fromkeys(CHANNELS, emotion)
    if cue in CHANNELS:
        return {channel: emotion if channel == cue else NEUTRAL for channel in CHANNELS}
    if cue == "conflict":
        others = [e for e in EMOTIONS if e != emotion]
        order = rng.permutation(len(others))
        face, third = others[int(order[0])], others[int(order[1])]
        # Two or three different emotions; when two, the words stay neutral.
        text = third if rng.random() < 0.5 else NEUTRAL
        return {"audio": emotion, "face": face, "text": text}
    raise ValueError(f"unknown cue {cue!r}; expected all, {', '.join(CHANNELS)} or conflict")


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork avoids re-importing the caller's __main__ (spawn breaks unguarded scripts); workers
    # only run numpy/OpenCV and subprocesses, which are safe after fork.
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _render_job(job: tuple[SampleSpec, Path]) -> dict:
    spec, out_dir = job
    return render_sample(spec, out_dir)


def render_sample(spec: SampleSpec, out_dir: Path) -> dict:
    """Write the wav, png and mp4 of one sample and return its manifest row.

    Args:
        spec: The planned sample.
        out_dir: Set folder; media go to ``out_dir/media``.

    Returns:
        The manifest row (media paths relative to ``out_dir``).

    Raises:
        RuntimeError: If a media tool fails.
    """
    rel = {ext: f"media/{spec.id}.{ext}" for ext in ("wav", "png", "mp4")}
    duration = render_voice(spec.transcript, spec.prosody, out_dir / rel["wav"])
    num_frames = max(MIN_FRAMES, math.ceil(duration * FPS))
    frames = render_face_frames(spec.cues["face"], spec.face_style, num_frames)  # (K, H, W, 3)
    png = out_dir / rel["png"]
    if not cv2.imwrite(str(png), cv2.cvtColor(frames[0], cv2.COLOR_RGB2BGR)):
        raise RuntimeError(f"OpenCV could not write {png}")
    _write_mp4(frames, out_dir / rel["wav"], out_dir / rel["mp4"])
    labels = labels_for(spec.cues)
    valence = float(np.mean([VALENCE_AROUSAL[e][0] for e in labels]))
    arousal = float(np.mean([VALENCE_AROUSAL[e][1] for e in labels]))
    return {
        "id": spec.id,
        "video": rel["mp4"],
        "audio": rel["wav"],
        "image": rel["png"],
        "transcript": spec.transcript,
        "labels": labels,
        "explanation": explanation_for(spec.cues),
        "valence": round(valence, 3),
        "arousal": round(arousal, 3),
        "split": spec.split,
        "source": "synth",
        "extra": {
            "cue": spec.cue,
            "cues": dict(spec.cues),
            "difficulty": DIFFICULTY[spec.cue],
            "evidence": evidence_for(spec.cues, spec.transcript),
            "duration": round(duration, 4),
            "num_frames": num_frames,
            "prosody": spec.prosody.to_dict(),
            "face_style": spec.face_style.to_dict(),
        },
    }


def _write_mp4(frames: np.ndarray, wav: Path, out_mp4: Path) -> None:
    """Encode RGB frames (K, H, W, 3) as H.264 yuv420p at ``FPS`` with the wav muxed as AAC."""
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{IMAGE_SIZE}x{IMAGE_SIZE}", "-r", str(FPS), "-i", "-",
        "-i", str(wav),
        "-map", "0:v", "-map", "1:a",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", "-threads", "1",
        "-c:a", "aac", "-b:a", "64k", "-shortest",
        "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact", "-map_metadata", "-1",
        str(out_mp4),
    ]  # fmt: skip
    result = subprocess.run(
        command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True, check=False
    )
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ffmpeg failed writing {out_mp4} (exit {result.returncode}): {stderr}")
