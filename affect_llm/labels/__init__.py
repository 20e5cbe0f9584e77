"""Emotion label taxonomy and structured-answer parsing."""

from affect_llm.labels.parse import Answer, ParseResult, parse_answer
from affect_llm.labels.taxonomy import Taxonomy, TaxonomyError, load_taxonomy, normalize_labels

__all__ = [
    "Answer",
    "ParseResult",
    "Taxonomy",
    "TaxonomyError",
    "load_taxonomy",
    "normalize_labels",
    "parse_answer",
]
