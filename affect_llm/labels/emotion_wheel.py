"""AffectGPT's emotion wheels: the word grouping behind the MER-UniBench scores.

A word is grouped in three steps, as the published evaluation (AffectGPT,
``my_affectgpt/evaluation/wheel.py``) defines them:

1. word form -> base words: ``forms`` lists, for each base word, its inflections (``angrily``
   -> ``angry``); a word outside that list is dropped from scoring;
2. base word -> wheel words: eight synonym runs map each synonym to the wheel words it was
   generated for (``irate`` -> ``mad``, ``furious``, ...);
3. wheel word -> cluster: on one of five wheels, every word of a branch joins its level-1 word
   (``level1``) or its level-2 word (``level2``); a level-1 word joins the first of its level-2
   words at ``level2``.

Among all wheel words reached in step 2, the alphabetically first one that is on the chosen
wheel decides the cluster, which makes the result unique. The tables are carried over from
AffectGPT (Apache-2.0); see ``data/emotion_wheel_LICENSE.txt`` and the ``source`` block of the
JSON file for the repository and commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

WheelLevel = Literal["level1", "level2"]
WHEEL_DATA_PATH = Path(__file__).parent / "data" / "emotion_wheel.json"
WHEEL_NAMES = ("wheel1", "wheel2", "wheel3", "wheel4", "wheel5")


@dataclass(frozen=True)
class EmotionWheel:
    """The three grouping tables and the five wheels.

    Attributes:
        forms: Word form -> base words having it as a form (a base word is its own form).
        synonyms: Base word -> wheel words it is a synonym of (a wheel word maps to itself).
        wheels: Wheel name -> ``{level1: {level2: [level3, ...]}}`` in sheet order.
        digest: First 12 hex digits of the data file's SHA-256 (recorded beside every score).
    """

    forms: dict[str, tuple[str, ...]]
    synonyms: dict[str, tuple[str, ...]]
    wheels: dict[str, dict[str, dict[str, list[str]]]]
    digest: str
    _maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ref(self) -> str:
        """``emotion_wheel.json#<hash12>``: which tables produced a number."""
        return f"{WHEEL_DATA_PATH.name}#{self.digest}"

    def wheel_map(self, wheel: str, level: WheelLevel) -> dict[str, str]:
        """Wheel word -> cluster name on ``wheel`` at ``level``.

        Raises:
            ValueError: Unknown wheel or level.
        """
        if wheel not in self.wheels:
            raise ValueError(f"unknown wheel {wheel!r}; known: {sorted(self.wheels)}")
        if level not in ("level1", "level2"):
            raise ValueError(f"wheel level must be 'level1' or 'level2', got {level!r}")
        if (wheel, level) not in self._maps:
            self._maps[(wheel, level)] = _build_wheel_map(self.wheels[wheel], level)
        return self._maps[(wheel, level)]

    def cluster(self, word: str, wheel: str, level: WheelLevel) -> str | None:
        """Cluster of ``word`` (lower-cased, stripped) on ``wheel`` at ``level``; None when unmapped."""
        word = word.lower().strip()
        wheel_map = self.wheel_map(wheel, level)
        reached = sorted(w for base in self.forms.get(word, ()) for w in self.synonyms.get(base, ()))
        for candidate in reached:
            if candidate in wheel_map:
                return wheel_map[candidate]
        return None

    def clusters(self, words: Iterable[str], wheel: str, level: WheelLevel) -> set[str]:
        """Set of clusters of ``words``; unmapped words are left out, as in the published metric."""
        found = (self.cluster(w, wheel, level) for w in words)
        return {c for c in found if c is not None}


def _build_wheel_map(tree: dict[str, dict[str, list[str]]], level: WheelLevel) -> dict[str, str]:
    # Assignment order follows the sheet: a word listed twice keeps its last position.
    mapping: dict[str, str] = {}
    for level1, branches in tree.items():
        mapping[level1] = level1 if level == "level1" else sorted(branches)[0]
        for level2, words in branches.items():
            target = level1 if level == "level1" else level2
            mapping[level2] = target
            for level3 in words:
                mapping[level3] = target
    return mapping


def _group(pairs: Iterable[tuple[str, Iterable[str]]], include_self: bool) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, set[str]] = {}
    for head, members in pairs:
        for member in members:
            grouped.setdefault(member, set()).add(head)
        if include_self:
            grouped.setdefault(head, set()).add(head)
    return {key: tuple(sorted(values)) for key, values in grouped.items()}


def load_emotion_wheel(path: str | Path | None = None) -> EmotionWheel:
    """Read the emotion-wheel tables.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not an emotion-wheel document or lacks a field (named).
    """
    file = Path(path) if path is not None else WHEEL_DATA_PATH
    if not file.is_file():
        raise FileNotFoundError(f"emotion-wheel file not found: {file}")
    raw = file.read_bytes()
    data: Any = json.loads(raw)
    if not isinstance(data, dict) or data.get("format") != "affect-llm-emotion-wheel":
        raise ValueError(f"{file}: not an affect-llm emotion-wheel file (field 'format')")
    for key in ("wheels", "synonym_runs", "forms"):
        if key not in data:
            raise ValueError(f"{file}: field {key!r} missing")
    # Synonyms: each wheel word maps to itself and every synonym to the wheel words it came from.
    synonym_pairs = [(word, syns) for rows in data["synonym_runs"].values() for word, syns in rows]
    return EmotionWheel(
        forms=_group(((name, forms) for name, forms in data["forms"]), include_self=True),
        synonyms=_group(synonym_pairs, include_self=True),
        wheels=data["wheels"],
        digest=hashlib.sha256(raw).hexdigest()[:12],
    )
