"""Do the answers describe channels the clip does not have? Read from the raw model output.

An explanation that describes a voice in a silent photo, or a face in an audio clip, is invented:
the worst failure of an explainable emotion model. This scorer reads each answer's raw text, not
the parsed row, because a parser may drop or blank keys (an evidence string of the wrong type, a
truncated object) and hide exactly the text that invents a channel.

Per clip, a channel is *present* when the reference row says so: ``extra.channels`` (evidence keys
``audio``, ``video``, ``text``) when the row has it, else its media fields (audio: an ``audio`` or
``video`` file; video: a ``video`` or ``image`` file; text: a transcript). Per channel the answer
*describes* it when

- its ``evidence`` object has a value for the channel's key (or an alias such as ``face``) that is
  not null and does not state absence ("absent", "none", "no audio", "not visible", ...), or
- its ``explanation`` (or, for text that holds no JSON object, the whole raw text) has a clause
  with a word of that channel (voice, pitch, tone ... / face, smile, brows ... / words, says,
  sentence ...) that is not a statement of absence ("there is no audio", "no face is visible").

An answer that describes an absent channel is counted against its subset (``extra.cue``, else the
row's ``source``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from affect_llm.data.manifest import CHANNEL_KEYS, recorded_channels
from affect_llm.labels.channel_words import DESCRIBING_WORDS, NEGATIONS, describing_pattern

# Evidence keys a model may use instead of the schema's, mapped onto the schema's.
KEY_ALIASES: dict[str, str] = {
    "audio": "audio", "voice": "audio", "speech": "audio", "acoustic": "audio", "prosody": "audio",
    "video": "video", "face": "video", "visual": "video", "image": "video", "facial": "video",
    "text": "text", "transcript": "text", "words": "text", "language": "text", "lexical": "text",
}  # fmt: skip
_DESCRIBING_RE = {channel: describing_pattern(channel) for channel in DESCRIBING_WORDS}
_CHANNEL_NOUN = (
    r"audio|voices?|sound|speech|speaker|face|faces|video|image|picture|frames?|visuals?|camera|"
    r"transcripts?|words?|text|subtitles?|speaking|spoken words"
)
# A clause that says a channel is missing: "no face is visible", "there is no audio", "the audio is
# absent", "without a transcript", "the clip is silent".
_ABSENCE_RE = re.compile(
    rf"\b(?:{NEGATIONS})\s+(?:\w+\s+){{0,2}}(?:{_CHANNEL_NOUN})\b"
    rf"|\b(?:{_CHANNEL_NOUN})\b[^.;,]{{0,40}}\b(?:missing|absent|unavailable|none|not\s+"
    r"(?:present|available|visible|audible|provided|given|shown|heard|seen|included|detected|found|there))\b"
    r"|\b(?:silent|silence|cannot\s+be\s+(?:heard|seen)|can't\s+be\s+(?:heard|seen)|not\s+applicable|n/a)\b",
    re.IGNORECASE,
)
_ABSENT_VALUE_RE = re.compile(
    r"^\W*(?:none|null|n/?a|absent|missing|unavailable|not\s+(?:available|present|applicable)|-+)\W*$",
    re.IGNORECASE,
)
# Quoted words are the clip's transcript, not the answer's own description.
_QUOTED_RE = re.compile(r'"[^"]*"|\u201c[^\u201d]*\u201d')
_CLAUSE_SPLIT_RE = re.compile(r"[.;:!?\n]+|,|\bbut\b|\bwhile\b|\bwhereas\b|\bhowever\b", re.IGNORECASE)


@dataclass
class AnswerCheck:
    """What one answer says about each channel.

    Attributes:
        id: Sample id.
        subset: ``extra.cue`` of the reference, else its ``source``.
        present: Channels the clip has (evidence keys).
        described: Channels the answer describes, each with where: ``evidence`` and/or ``explanation``.
        parsed: Whether the raw text held a JSON object (False: the whole text was read as prose).
        has_output: Whether there was any raw text at all (False for a failed generation).
        words: Per described channel, the words that gave it away in the explanation.
    """

    id: str
    subset: str
    present: tuple[str, ...]
    described: dict[str, list[str]] = field(default_factory=dict)
    parsed: bool = True
    has_output: bool = True
    words: dict[str, list[str]] = field(default_factory=dict)

    @property
    def absent(self) -> tuple[str, ...]:
        """Channels the clip does not have."""
        return tuple(c for c in CHANNEL_KEYS if c not in self.present)

    @property
    def describes_absent(self) -> list[str]:
        """Absent channels the answer describes anyway."""
        return [c for c in self.absent if c in self.described]


def channels_of(ref: dict[str, Any]) -> tuple[str, ...]:
    """Channels a reference row has, as evidence keys in schema order.

    ``extra.channels`` wins when present; otherwise media fields decide (a video is taken to carry
    sound, since nothing in the row says it does not).

    Raises:
        ValueError: If ``extra.channels`` is not a list of known channel names (names the row id).
    """
    listed = recorded_channels(ref.get("extra"), ref.get("id"))
    if listed is not None:
        return listed
    has = {
        "audio": bool(ref.get("audio") or ref.get("video")),
        "video": bool(ref.get("video") or ref.get("image")),
        "text": bool(ref.get("transcript")),
    }
    return tuple(c for c in CHANNEL_KEYS if has[c])


def read_raw_answer(raw: str) -> tuple[dict[str, Any] | None, str]:
    """The first JSON object in ``raw`` and the prose to read for descriptions.

    Returns:
        ``(object, prose)``: prose is the object's ``explanation`` plus any text around the
        object; without an object, ``(None, raw)``.
    """
    decoder = json.JSONDecoder()
    start = raw.find("{")
    while start != -1:
        try:
            value, end = decoder.raw_decode(raw, start)
        except json.JSONDecodeError:
            start = raw.find("{", start + 1)
            continue
        if isinstance(value, dict):
            explanation = value.get("explanation")
            explanation = explanation if isinstance(explanation, str) else json.dumps(explanation or "")
            around = f"{raw[:start]}\n{raw[end:]}".replace("```json", " ").replace("```", " ")
            return value, f"{explanation}\n{around}"
        start = raw.find("{", start + 1)
    return None, raw


def describing_words(prose: str) -> dict[str, list[str]]:
    """Per channel, the describing words of ``prose`` outside clauses that state absence."""
    found: dict[str, list[str]] = {}
    for clause in _CLAUSE_SPLIT_RE.split(_QUOTED_RE.sub(" ", prose)):
        if not clause.strip() or _ABSENCE_RE.search(clause):
            continue
        for channel, pattern in _DESCRIBING_RE.items():
            words = [m.group(0).lower() for m in pattern.finditer(clause)]
            if words:
                found.setdefault(channel, []).extend(words)
    return found


def evidence_channels(evidence: Any) -> list[str]:
    """Channels an evidence object describes: keys (or aliases) whose value is not an absence."""
    if not isinstance(evidence, dict):
        return []
    described = []
    for key, value in evidence.items():
        channel = KEY_ALIASES.get(str(key).strip().lower())
        if channel is None or channel in described or states_absence(value):
            continue
        described.append(channel)
    return described


def states_absence(value: Any) -> bool:
    """Whether an evidence value says the channel is missing (null, empty, "none", "no face visible")."""
    if value is None:
        return True
    if isinstance(value, str):
        text = value.strip()
        return not text or bool(_ABSENT_VALUE_RE.match(text)) or bool(_ABSENCE_RE.search(text))
    return isinstance(value, list | dict) and not value


def check_answer(result: dict[str, Any], ref: dict[str, Any]) -> AnswerCheck:
    """What one raw answer says about each channel of its clip (see the module docstring)."""
    extra = ref.get("extra") if isinstance(ref.get("extra"), dict) else {}
    subset = str(extra.get("cue") or ref.get("source") or "unnamed")
    check = AnswerCheck(id=str(result.get("id")), subset=subset, present=channels_of(ref))
    raw = result.get("raw")
    if not isinstance(raw, str) or not raw.strip():
        check.has_output = False
        return check
    obj, prose = read_raw_answer(raw)
    check.parsed = obj is not None
    for channel in evidence_channels((obj or {}).get("evidence")):
        check.described.setdefault(channel, []).append("evidence")
    for channel, words in describing_words(prose).items():
        check.described.setdefault(channel, []).append("explanation")
        check.words[channel] = sorted(set(words))
    return check


def score_absent_channels(
    results: Iterable[dict[str, Any]], refs: dict[str, dict[str, Any]], max_examples: int = 5
) -> dict[str, Any]:
    """Count answers that describe an absent channel, per subset and per channel.

    Args:
        results: Rows written by ``affect-llm explain`` (``id``, ``raw``).
        refs: Reference manifest rows by id; results without a reference are skipped.
        max_examples: Offending ids kept per subset.

    Returns:
        ``{"overall": totals, "by_subset": {subset: totals}}`` where totals are ``clips`` (clips
        with at least one absent channel), ``describing_absent`` (answers describing one anyway),
        ``rate``, ``in_evidence`` / ``in_explanation`` (where it was described), ``unparseable``,
        ``no_output``, ``by_channel`` (per channel: ``absent``, ``described_absent``, ``present``,
        ``described_present``) and ``examples`` (offending ids with channels and words).
    """
    checks = [check_answer(res, refs[str(res.get("id"))]) for res in results if str(res.get("id")) in refs]
    by_subset: dict[str, list[AnswerCheck]] = {}
    for check in checks:
        by_subset.setdefault(check.subset, []).append(check)
    return {
        "overall": _totals(checks, max_examples),
        "by_subset": {name: _totals(group, max_examples) for name, group in sorted(by_subset.items())},
    }


def _totals(checks: list[AnswerCheck], max_examples: int) -> dict[str, Any]:
    missing = [c for c in checks if c.absent]
    offending = [c for c in missing if c.describes_absent]
    by_channel = {}
    for channel in CHANNEL_KEYS:
        without = [c for c in checks if channel in c.absent]
        with_it = [c for c in checks if channel in c.present and c.has_output]
        by_channel[channel] = {
            "absent": len(without),
            "described_absent": sum(channel in c.described for c in without),
            "present": len(with_it),
            "described_present": sum(channel in c.described for c in with_it),
        }
    return {
        "clips": len(missing),
        "describing_absent": len(offending),
        "rate": len(offending) / len(missing) if missing else 0.0,
        "in_evidence": sum(any("evidence" in c.described[ch] for ch in c.describes_absent) for c in offending),
        "in_explanation": sum(any("explanation" in c.described[ch] for ch in c.describes_absent) for c in offending),
        "unparseable": sum(c.has_output and not c.parsed for c in missing),
        "no_output": sum(not c.has_output for c in missing),
        "by_channel": by_channel,
        "examples": [
            {"id": c.id, "channels": c.describes_absent,
             "words": {ch: c.words.get(ch, []) for ch in c.describes_absent}}
            for c in sorted(offending, key=lambda c: c.id)[:max_examples]
        ],
    }  # fmt: skip
