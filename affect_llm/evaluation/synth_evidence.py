"""Do the answers describe the cues that are really there? Scored on the synthetic set.

A label can be right for the wrong reason: an answer that names the emotion but says "the face is
neutral" about a smiling face explains nothing. On the synthetic set every channel's level is known
(``extra.cues``) and the reference phrases are fixed, so each channel's evidence string can be read
back into a level and compared with the truth. Three figures per cue subset:

- ``channel``: per evidence key (``audio``, ``video``, ``text``), the share of clips whose evidence
  describes that channel's true level (neutral channels included), or, for a channel the clip does
  not have, leaves it null or says it is missing;
- ``cue_channel``: the share of clips whose evidence describes every cue-carrying (non-neutral)
  channel correctly, the figure that says whether the model looked where the emotion is;
- ``explanation``: the share of clips whose explanation contains the phrase of every cue-carrying
  channel.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from affect_llm.data.synth.text import CHANNELS, EMOTIONS, NEUTRAL, channel_phrase
from affect_llm.evaluation.absent_channels import states_absence

# Evidence keys of the answer schema, and the synthetic channel each describes.
EVIDENCE_CHANNELS: dict[str, str] = {"audio": "audio", "video": "face", "text": "text"}


def read_level(channel: str, description: Any) -> str | None:
    """The level (an emotion or ``"neutral"``) whose reference phrase ``description`` starts with.

    Args:
        channel: A synthetic channel: ``audio``, ``face`` or ``text``.
        description: The model's evidence string for that channel (anything else gives None).

    Returns:
        The level, or None when the text matches no reference phrase.
    """
    if not isinstance(description, str):
        return None
    text = description.strip().lower()
    for level in (*EMOTIONS, NEUTRAL):
        if text.startswith(channel_phrase(channel, level)):
            return level
    return None


def score_evidence(results: Iterable[dict[str, Any]], refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Evidence and explanation faithfulness per cue subset (see the module docstring).

    Args:
        results: Rows written by ``affect-llm explain`` (``id``, ``evidence``, ``explanation``).
        refs: Manifest rows of the synthetic set by id; rows without ``extra.cues`` are skipped.

    Returns:
        ``{"channel": {cue: {key: share}}, "cue_channel": {cue: share}, "explanation": {cue: share},
        "count": {cue: n}}``.
    """
    channel_hits: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    cue_hits: dict[str, list[bool]] = defaultdict(list)
    explanation_hits: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        ref = refs.get(result.get("id"))
        cues = ((ref or {}).get("extra") or {}).get("cues")
        if not isinstance(cues, dict) or set(cues) != set(CHANNELS):
            continue
        subset = ref["extra"].get("cue", "?")
        evidence = result.get("evidence") if isinstance(result.get("evidence"), dict) else {}
        explanation = (result.get("explanation") or "").lower()
        carrying = [c for c in CHANNELS if cues[c] is not None and cues[c] != NEUTRAL]
        described = {key: _describes(channel, cues[channel], evidence.get(key))
                     for key, channel in EVIDENCE_CHANNELS.items()}
        for key, hit in described.items():
            channel_hits[subset][key].append(hit)
        cue_hits[subset].append(all(hit for key, hit in described.items() if EVIDENCE_CHANNELS[key] in carrying))
        explanation_hits[subset].append(all(channel_phrase(c, cues[c]) in explanation for c in carrying))
    return {
        "channel": {s: {k: _mean(v) for k, v in by_key.items()} for s, by_key in sorted(channel_hits.items())},
        "cue_channel": {s: _mean(v) for s, v in sorted(cue_hits.items())},
        "explanation": {s: _mean(v) for s, v in sorted(explanation_hits.items())},
        "count": {s: len(v) for s, v in sorted(cue_hits.items())},
    }


def _describes(channel: str, level: str | None, description: Any) -> bool:
    """Right evidence for one channel: its true level, or for an absent channel (level None) no
    description at all."""
    if level is None:
        return states_absence(description)
    return read_level(channel, description) == level


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else 0.0
