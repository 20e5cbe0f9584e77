"""Open-vocabulary emotion taxonomy: surface word -> base word -> fine cluster -> family.

The mapping lives in ``affect_llm/labels/data/taxonomy.json`` (built once by
``scripts/build_taxonomy.py``; sources and licences are recorded in the file). Families are the
six basic emotions plus ``neutral``; fine clusters follow Parrott's secondary groups with a few
additions (calm, confusion, curiosity, boredom). A word the taxonomy does not know normalises to
None; callers count such words instead of forcing them into a class.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA_PATH = Path(__file__).resolve().parent / "data" / "taxonomy.json"

# Degree words that do not change which emotion is meant ("very happy", "a bit annoyed").
_MODIFIERS = (
    "a little bit",
    "a little",
    "a bit",
    "kind of",
    "sort of",
    "very",
    "slightly",
    "somewhat",
    "extremely",
    "really",
    "quite",
    "mildly",
    "deeply",
    "highly",
    "so",
    "too",
    "rather",
    "fairly",
    "truly",
    "mostly",
    "mild",
    "strong",
    "intense",
    "moderate",
    "moderately",
    "strongly",
    "feeling",
    "feels",
    "looks",
    "seems",
    "appears",
    "sounds",
    "slight",
    "deep",
    "great",
    "extreme",
    "pure",
    "utter",
    "sheer",
)
# A negated word names a different state ("not happy"): never map it onto the word itself.
_NEGATIONS = ("not", "no", "never", "without", "non", "hardly", "barely")
_SPACE = re.compile(r"[\s_\-/]+")
_EDGE = re.compile(r"^[^\w]+|[^\w]+$")


class TaxonomyError(ValueError):
    """The taxonomy data file is missing fields or inconsistent."""


def clean_word(word: str) -> str:
    """Lower-case, trim punctuation, unify separators and spaces."""
    text = _SPACE.sub(" ", str(word).lower()).strip()
    return _EDGE.sub("", text).strip()


@dataclass(frozen=True)
class Taxonomy:
    """Two-level emotion taxonomy.

    Attributes:
        families: Family name -> valence sign (-1, 0, 1).
        fine_clusters: Fine cluster -> (family, valence sign).
        bases: Base word -> fine cluster.
        forms: Surface form -> base word.
        sources: Provenance records from the data file.
    """

    families: dict[str, int]
    fine_clusters: dict[str, tuple[str, int]]
    bases: dict[str, str]
    forms: dict[str, str] = field(repr=False)
    sources: tuple[dict[str, str], ...] = field(default=(), repr=False)

    def normalize(self, word: str) -> str | None:
        """Base emotion word for ``word``, or None when it is not an emotion word we know."""
        text = clean_word(word)
        while text:
            if text in self.forms:
                return self.forms[text]
            head, _, rest = text.partition(" ")
            if head in _NEGATIONS:
                return None
            stripped = _strip_modifier(text)
            if stripped == text:
                return None
            text = stripped
        return None

    def fine(self, word: str) -> str | None:
        """Fine cluster of ``word`` (e.g. ``irritability`` for "annoyed"), or None."""
        base = self.normalize(word)
        return None if base is None else self.bases[base]

    def family(self, word: str) -> str | None:
        """Family of ``word`` (joy, sadness, anger, fear, surprise, disgust, neutral), or None."""
        fine = self.fine(word)
        return None if fine is None else self.fine_clusters[fine][0]

    def valence(self, word: str) -> int | None:
        """Valence sign of ``word``'s fine cluster (-1, 0, 1), or None when unknown."""
        fine = self.fine(word)
        return None if fine is None else self.fine_clusters[fine][1]

    def normalize_labels(self, words: Iterable[str]) -> tuple[list[str], list[str]]:
        """Split ``words`` into known base words and unknown cleaned words, both de-duplicated in order."""
        known: list[str] = []
        unknown: list[str] = []
        for word in words:
            base = self.normalize(word)
            if base is not None:
                if base not in known:
                    known.append(base)
                continue
            text = clean_word(word)
            if text and text not in unknown:
                unknown.append(text)
        return known, unknown


def _strip_modifier(text: str) -> str:
    for modifier in _MODIFIERS:
        if text.startswith(modifier + " "):
            return text[len(modifier) + 1 :].strip()
    return text


def taxonomy_from_dict(data: dict[str, Any], source: str = "<dict>") -> Taxonomy:
    """Build and check a :class:`Taxonomy` from the parsed data file.

    Raises:
        TaxonomyError: A field is missing, or a base/fine cluster refers to something undefined.
    """
    for key in ("families", "fine", "bases", "forms"):
        if not isinstance(data.get(key), dict):
            raise TaxonomyError(f"{source}: field {key!r} missing or not a mapping")
    families = {str(k): int(v) for k, v in data["families"].items()}
    fine: dict[str, tuple[str, int]] = {}
    for name, spec in data["fine"].items():
        if spec.get("family") not in families:
            raise TaxonomyError(f"{source}: fine cluster {name!r} has unknown family {spec.get('family')!r}")
        fine[name] = (spec["family"], int(spec.get("valence", families[spec["family"]])))
    bases: dict[str, str] = {}
    for base, spec in data["bases"].items():
        if spec.get("fine") not in fine:
            raise TaxonomyError(f"{source}: base {base!r} has unknown fine cluster {spec.get('fine')!r}")
        bases[base] = spec["fine"]
    forms = dict(data["forms"])
    missing = sorted({b for b in forms.values() if b not in bases})
    if missing:
        raise TaxonomyError(f"{source}: forms point at undefined bases {missing[:5]}")
    return Taxonomy(families, fine, bases, forms, tuple(data.get("sources", ())))


@lru_cache(maxsize=4)
def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load the taxonomy data file (the packaged one by default); cached per path.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TaxonomyError: The file is malformed.
    """
    file = Path(path) if path is not None else DATA_PATH
    if not file.is_file():
        raise FileNotFoundError(f"taxonomy data file not found: {file}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaxonomyError(f"{file}: not valid JSON ({exc})") from exc
    return taxonomy_from_dict(data, str(file))


def normalize_labels(words: Iterable[str], taxonomy: Taxonomy | None = None) -> tuple[list[str], list[str]]:
    """Known base words and unknown words in ``words`` (packaged taxonomy by default)."""
    return (taxonomy or load_taxonomy()).normalize_labels(words)
