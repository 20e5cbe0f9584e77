"""IEMOCAP (Busso et al., 2008): five sessions of dyadic acted dialogues.

Published layout under ``--root`` (the ``IEMOCAP_full_release`` folder)::

    Session{1..5}/dialog/EmoEvaluation/Ses01F_impro01.txt
    Session{1..5}/dialog/transcriptions/Ses01F_impro01.txt
    Session{1..5}/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav
    Session{1..5}/dialog/avi/DivX/Ses01F_impro01.avi

An evaluation line reads ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``
(valence, activation, dominance on 1-5). The manifest stores valence and arousal rescaled to
[-1, 1] (``(x - 3) / 2``). The dialogue videos hold both speakers for the whole dialogue, so
they go to ``extra`` with the utterance's start and end rather than to ``video``.
``xxx`` (no annotator majority) gives an empty label list. Split by session: 1-3 train, 4 val,
5 test.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from affect_llm.data.adapters.common import BuildResult, check_media, require_dir
from affect_llm.data.manifest import ManifestRow

logger = logging.getLogger(__name__)

LABELS = {
    "neu": "neutral",
    "hap": "happy",
    "sad": "sad",
    "ang": "angry",
    "exc": "excited",
    "fru": "frustrated",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgust",
    "oth": "other",
}
EVAL_RE = re.compile(
    r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\s+(?P<turn>Ses\w+)\s+(?P<label>\w+)\s+"
    r"\[(?P<v>[\d.]+),\s*(?P<a>[\d.]+),\s*(?P<d>[\d.]+)\]"
)
TRANSCRIPT_RE = re.compile(r"^(?P<turn>Ses\w+)\s+\[[^\]]*\]:\s*(?P<text>.*)$")
SESSION_SPLITS = {1: "train", 2: "train", 3: "train", 4: "val", 5: "test"}


def _rescale(value: str) -> float:
    return (float(value) - 3.0) / 2.0


def _transcripts(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    found = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = TRANSCRIPT_RE.match(line.strip())
        if match:
            found[match["turn"]] = match["text"].strip()
    return found


def build(root: Path) -> BuildResult:
    """Rows for every evaluated utterance of every session under ``root``.

    Raises:
        FileNotFoundError: If no ``Session*/dialog/EmoEvaluation/*.txt`` exists.
    """
    root = require_dir(root, "iemocap")
    result = BuildResult()
    eval_files = sorted(root.glob("Session*/dialog/EmoEvaluation/*.txt"))
    if not eval_files:
        raise FileNotFoundError(f"iemocap: no Session*/dialog/EmoEvaluation/*.txt under {root}")
    without_words: list[str] = []
    for eval_path in eval_files:
        session_dir = eval_path.parents[2]
        session = int(re.sub(r"\D", "", session_dir.name) or 0)
        dialog = eval_path.stem
        texts = _transcripts(session_dir / "dialog" / "transcriptions" / f"{dialog}.txt")
        dialog_video = session_dir / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
        for line_no, line in enumerate(
            eval_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        ):
            match = EVAL_RE.match(line.strip())
            if match is None:
                continue
            turn = match["turn"]
            if turn not in texts:
                # The row is kept (its voice and labels stand without words), so it is not a skipped
                # annotation; the prompt then says the clip has no words.
                without_words.append(f"{eval_path.name}:{line_no} ({turn})")
            row = ManifestRow(
                id=f"iemocap/{turn}",
                audio=str(session_dir / "sentences" / "wav" / dialog / f"{turn}.wav"),
                transcript=texts.get(turn),
                labels=[LABELS[match["label"]]] if match["label"] in LABELS else [],
                valence=_rescale(match["v"]),
                arousal=_rescale(match["a"]),
                split=SESSION_SPLITS.get(session, "train"),
                source="iemocap",
                extra={
                    "raw_label": match["label"],
                    "dominance": _rescale(match["d"]),
                    "session": session,
                    "speaker": f"Ses{session:02d}{turn.rsplit('_', 1)[-1][0]}",
                    "dialog_video": str(dialog_video) if dialog_video.is_file() else None,
                    "start": float(match["start"]),
                    "end": float(match["end"]),
                },
            )
            check_media(row, result)
            result.rows.append(row)
    if without_words:
        logger.warning("iemocap: %d evaluated turns have no transcript line and are kept without words, "
                       "e.g. %s", len(without_words), ", ".join(without_words[:3]))
    return result
