"""Verifiable rewards of the reinforcement stage: named functions of one answer and its reference row.

Each reward maps ``(raw answer text, reference manifest row, the task's answer keys)`` to a value in
[0, 1], or None when it does not apply: the task does not ask for what it checks (labels in an
evidence-only task), or the row records nothing it can check (an evidence reward on a corpus with
labels only). A reward that scored keys the task never asks for would pull the policy away from the
task's own answer format.
A stage names the rewards it uses and their weights; the total is the weighted mean of the rewards
that apply. The rewards read the same things the evaluation reads (the answer parser, the taxonomy's
families, the synthetic set's cue levels, the absent-channel reader), so a rewarded answer is one
the report scores well; the report's figures still come from the report's scorers.

- ``format``: the answer parses and holds every key the task asks for, not empty (labels,
  explanation, evidence).
- ``labels``: set F1 of the answer's label families against the reference labels' families.
- ``evidence``: per evidence key, the channel's described level is its true one (rows recording
  ``extra.cues``), and a channel the clip lacks is null or said to be missing; an answer that
  describes a missing channel anywhere in its raw text (evidence or explanation) scores 0.
- ``length``: 1 up to ``max_chars`` of answer, falling linearly to 0 at twice that.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from affect_llm.data.manifest import ManifestRow
from affect_llm.evaluation.absent_channels import channels_of, check_answer, states_absence
from affect_llm.evaluation.metrics import set_scores
from affect_llm.evaluation.synth_evidence import EVIDENCE_CHANNELS, read_level
from affect_llm.labels.parse import ParseResult, parse_answer
from affect_llm.labels.taxonomy import Taxonomy, load_taxonomy

LENGTH_MAX_CHARS = 400


@dataclass(frozen=True)
class Judged:
    """An answer with what every reward needs, parsed once."""

    raw: str
    parsed: ParseResult
    row: ManifestRow
    keys: tuple[str, ...] = ("labels", "explanation", "evidence")

    @property
    def reference(self) -> dict[str, Any]:
        return self.row.to_dict()


RewardFn = Callable[[Judged], float | None]


@lru_cache(maxsize=1)
def _taxonomy() -> Taxonomy:
    return load_taxonomy()


def format_reward(judged: Judged) -> float:
    if not judged.parsed.ok:
        return 0.0
    answer = judged.parsed.answer
    given = {"labels": bool(answer.labels), "explanation": bool((answer.explanation or "").strip()),
             "evidence": isinstance(answer.evidence, dict) and bool(answer.evidence)}
    return 1.0 if all(given[key] for key in judged.keys) else 0.0


def labels_reward(judged: Judged) -> float | None:
    if "labels" not in judged.keys or not judged.row.labels:
        return None
    if not judged.parsed.ok:
        return 0.0
    return set_scores(judged.row.labels, judged.parsed.answer.labels, _taxonomy()).f1


def evidence_reward(judged: Judged) -> float | None:
    if "evidence" not in judged.keys:
        return None
    reference = judged.reference
    present = set(channels_of(reference))
    extra = judged.row.extra if isinstance(judged.row.extra, dict) else {}
    cues = extra.get("cues") if isinstance(extra.get("cues"), dict) else None
    if cues is None and len(present) == len(EVIDENCE_CHANNELS):
        return None  # nothing recorded to check: every channel present, no levels known
    if check_answer({"id": judged.row.id, "raw": judged.raw}, reference).describes_absent:
        return 0.0
    if not judged.parsed.ok:
        return 0.0
    evidence = judged.parsed.answer.evidence or {}
    hits = []
    for key, channel in EVIDENCE_CHANNELS.items():
        value = evidence.get(key)
        if key not in present:
            hits.append(states_absence(value))
        elif cues is not None and cues.get(channel) is not None:
            hits.append(read_level(channel, value) == cues[channel])
    return sum(hits) / len(hits) if hits else None


def length_reward(judged: Judged) -> float:
    extra = len(judged.raw) - LENGTH_MAX_CHARS
    return 1.0 if extra <= 0 else max(0.0, 1.0 - extra / LENGTH_MAX_CHARS)


REWARDS: dict[str, RewardFn] = {
    "format": format_reward,
    "labels": labels_reward,
    "evidence": evidence_reward,
    "length": length_reward,
}


def check_reward_weights(weights: Mapping[str, float], where: str) -> None:
    """Refuse unknown reward names and negative or all-zero weights.

    Raises:
        ValueError: Naming ``where`` and the offending names.
    """
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise ValueError(f"{where}: unknown rewards {unknown}; known: {sorted(REWARDS)}")
    if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"{where}: reward weights must be >= 0 with at least one > 0")


# The answer key each reward judges; the others judge any answer.
_REWARD_KEYS: dict[str, str] = {"labels": "labels", "evidence": "evidence"}


def check_rewards_apply(weights: Mapping[str, float], keys: tuple[str, ...], where: str, task: str) -> None:
    """Refuse rewards of which none can judge a task's answers: every answer would score 0 and the
    stage would learn nothing.

    Raises:
        ValueError: Naming ``where``, the task and its keys.
    """
    if not any(w > 0 and _REWARD_KEYS.get(name, keys[0]) in keys for name, w in weights.items()):
        raise ValueError(f"{where}: no reward in {sorted(weights)} judges task '{task}', whose answers hold "
                         f"{list(keys)}: add 'format' or a reward of one of those keys")


def score_answer(raw: str, row: ManifestRow, weights: Mapping[str, float],
                 keys: tuple[str, ...] = ("labels", "explanation", "evidence")) -> dict[str, float | None]:
    """Every named reward of one answer and ``total``, the weighted mean of those that apply.

    Args:
        raw: The generated text.
        row: Its reference manifest row.
        weights: Reward name -> weight.
        keys: The answer keys the task asks for (``AffectPrompt.task_keys``); the reason task's by default.
    """
    judged = Judged(raw, parse_answer(raw, require_labels="labels" in keys), row, tuple(keys))
    values: dict[str, float | None] = {name: REWARDS[name](judged) for name in weights}
    applied = [(weights[name], v) for name, v in values.items() if v is not None and weights[name] > 0]
    total_weight = sum(w for w, _ in applied)
    values["total"] = sum(w * v for w, v in applied) / total_weight if total_weight else 0.0
    return values
