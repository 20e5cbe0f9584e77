"""Emotions in Polish speech recordings (Mięsikowska & Świsulski, 2020; Gdańsk University of Technology).

450 clips of 5 male speakers (m1-m5) saying 6 single words (nie, oddaj, podaj, stop, tak, trzymaj)
5 times each in anger, fear or a neutral tone; CC BY (doi:10.34808/h46c-hb44). The 16 kHz copy in
the nkululeko source distribution names files ``{speaker}.{emotion}_{word}_{repetition}.wav``,
e.g. ``m1.a_nie_2.wav`` (a anger, s fear, n neutral), and ships a speaker-independent split as
``polish_{train,dev,test}.csv`` (train m2, m3, m5; dev m4; test m1), used here with dev as ``val``.

Rows are audio only and have no transcript: the words are Polish, and recognising them is left to
speech recognition (``extra.channels`` is ``["audio"]`` until then).

The set records the acted emotion and nothing about how the voice sounds, so each row's explanation
and evidence say only that: the voice carries the acted emotion, and the clip has no face and no
transcript (``extra.explanation_source`` says so). With these, the clips train every task, not only
the label task, and a model learns to explain a real voice without a face or words to lean on.
"""

from __future__ import annotations

import re
from pathlib import Path

from affect_llm.data.adapters.common import BuildResult, read_csv_rows, require_columns, require_dir
from affect_llm.data.manifest import ManifestRow
from affect_llm.data.synth.text import absent_sentence

LICENCE = "CC BY; Mięsikowska & Świsulski (2020), Gdańsk University of Technology, doi:10.34808/h46c-hb44"
EMOTIONS = {"a": "angry", "s": "fearful", "n": "neutral"}
# The split CSVs name the emotion in full.
CSV_EMOTIONS = {"anger": "angry", "fear": "fearful", "neutral": "neutral"}
SPEAKER_SPLITS = {"m1": "test", "m2": "train", "m3": "train", "m4": "val", "m5": "train"}
CSV_SPLITS = {"polish_train.csv": "train", "polish_dev.csv": "val", "polish_test.csv": "test"}
WORDS = {"nie": "no", "oddaj": "give back", "podaj": "pass", "stop": "stop", "tak": "yes", "trzymaj": "hold"}
VOICE_PHRASES = {"angry": "The voice sounds angry", "fearful": "The voice sounds fearful",
                 "neutral": "The voice sounds neutral"}
EMOTION_NOUNS = {"angry": "anger", "fearful": "fear"}
NAME_RE = re.compile(r"^(m[1-5])\.([asn])_([a-z]+)_([1-5])$")


def build(root: Path) -> BuildResult:
    """Rows from every file named like ``m1.a_nie_2.wav`` under ``root``.

    When the split CSVs are under ``root`` too, each of their rows must agree with the file name
    (emotion) and the speaker split.

    Raises:
        FileNotFoundError: If no file follows the naming scheme.
        ValueError: If a split CSV disagrees with the file names (names the CSV, line and field).
    """
    root = require_dir(root, "polish")
    result = BuildResult()
    for path in sorted(root.rglob("*.wav")):
        match = NAME_RE.match(path.stem)
        if match is None or match.group(3) not in WORDS:
            result.skip(str(path), "file name does not follow SPEAKER.EMOTION_WORD_REPETITION (m1.a_nie_2)")
            continue
        speaker, code, word, repetition = match.groups()
        result.rows.append(
            ManifestRow(
                id=f"polish/{path.stem}",
                audio=str(path),
                labels=[EMOTIONS[code]],
                explanation=acted_explanation(EMOTIONS[code]),
                split=SPEAKER_SPLITS[speaker],
                source="polish",
                extra={
                    "speaker": speaker,
                    "word": word,
                    "word_en": WORDS[word],
                    "repetition": int(repetition),
                    "language": "pl",
                    "channels": ["audio"],
                    "evidence": {"audio": VOICE_PHRASES[EMOTIONS[code]] + ".", "video": None, "text": None},
                    "explanation_source": "acted emotion of the recording",
                    "licence": LICENCE,
                },
            )
        )
    if not result.rows:
        raise FileNotFoundError(f"polish: no file named like m1.a_nie_2.wav under {root}")
    _check_split_files(root, {row.id.split("/", 1)[1]: row for row in result.rows})
    return result


def acted_explanation(emotion: str) -> str:
    """What the set lets an explanation say: the voice's acted emotion, and the channels the clip lacks.

    ``"The voice sounds angry, which suggests anger. No face is visible and there is no transcript."``
    """
    voice = VOICE_PHRASES[emotion]
    if emotion in EMOTION_NOUNS:
        voice += f", which suggests {EMOTION_NOUNS[emotion]}"
    return f"{voice}. {absent_sentence(('face', 'text'))}"


def _check_split_files(root: Path, rows: dict[str, ManifestRow]) -> None:
    """Cross-check the published split CSVs (when present) against the names and speaker split."""
    for name, split in CSV_SPLITS.items():
        path = next(iter(sorted(root.rglob(name))), None)
        if path is None:
            continue
        for line, record in read_csv_rows(path):
            require_columns(path, record, ("file", "emotion"))
            stem = Path(record["file"]).stem
            row = rows.get(stem)
            if row is None:
                continue
            if CSV_EMOTIONS.get(record["emotion"]) != row.labels[0]:
                raise ValueError(
                    f"{path}:{line}: field 'emotion' is {record['emotion']!r} but {stem}.wav is {row.labels[0]}"
                )
            if row.split != split:
                raise ValueError(f"{path}:{line}: field 'file' {stem} is in {split} here but {row.split} by speaker")
