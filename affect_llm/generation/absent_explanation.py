"""Decoding that keeps an explanation from describing a channel the clip does not have.

The evidence of a missing channel is forced to ``null`` (:mod:`affect_llm.generation.absent_evidence`),
but the explanation is free text: a small model trained mostly on clips with every channel still
writes its most frequent clause ("the face is neutral") into the explanation of an audio-only clip.
While an answer is inside its ``"explanation"`` string, this guard forbids the tokens that spell a
word describing a missing channel (the lexicon of :mod:`affect_llm.labels.channel_words`, the one the
evaluation counts with), so the model writes about the channels the clip has. Two places stay free:

- right after a negation ("there is no face", "without a voice"): a missing channel may be named
  to say that it is missing, which is how the training targets end ("No face is visible.");
- inside quotes (the clip's transcript quoted in the explanation).

Words are forbidden however the tokenizer spells them: a token that starts a describing word (" face"),
and, while a word is being written, a token that would complete it into one: after "l" (following a
stray byte, a GRPO policy's "and\ufffdl" + "augh" + "ing") the token "aughing", after "laugh" the
token "ing". A completing token counts when its letters are exactly the rest of a describing word
(the next character, if any, not a letter), so other words with the same start pass ("l" + "ow" is
forbidden for a clip without audio, "l" + "oss" is not). The evaluation reads the raw answers with
the same lexicon, so anything that slips through is counted, never hidden.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from affect_llm.labels.channel_words import DESCRIBING_WORDS, NEGATIONS, describing_words, is_describing_word

# The explanation string being written: its opening quote, then escaped or ordinary characters up to
# the end of the text (an explanation that is closed does not match).
_OPEN_EXPLANATION = re.compile(r'"explanation"\s*:\s*"(?P<body>(?:[^"\\]|\\.)*)$', re.DOTALL)
# Where a clause starts: the scorer splits clauses the same way.
_CLAUSE_END = re.compile(r"[.;:!?\n]|\\n|,|\bbut\b|\bwhile\b|\bwhereas\b|\bhowever\b", re.IGNORECASE)
# The letters at the end of the text: the word being written (empty after a non-letter).
_WORD_SO_FAR = re.compile(r"[^\W\d_]*$")
# A token's leading letters (none when it starts with a space or a non-letter).
_LEADING_LETTERS = re.compile(r"[^\W\d_]+")
# The clause so far ends in a negation and at most two words: the next word may name a missing channel.
_AFTER_NEGATION = re.compile(rf"\b(?:{NEGATIONS})(?:\s+\w+){{0,2}}\s*$", re.IGNORECASE)


# Backends whose decoding takes a per-step hook, which this guard needs; vLLM's engine takes none and
# holds the evidence rule only. The CLI and the server both ask here.
EXPLANATION_RULE_BACKENDS = frozenset({"hf"})


def backend_holds_explanation_rule(backend: str) -> bool:
    """Whether the ``backend`` can hold the explanation rule while it decodes."""
    return backend in EXPLANATION_RULE_BACKENDS


class ExplanationGuard:
    """Tokens an answer's explanation may not take next, for a clip that lacks ``absent`` channels.

    Args:
        tokenizer: The LLM's tokenizer.
        absent: Evidence keys (``audio``, ``video``, ``text``) the clip does not have.
    """

    def __init__(self, tokenizer: Any, absent: Sequence[str]) -> None:
        self.absent = tuple(c for c in DESCRIBING_WORDS if c in absent)
        self.forbidden = sorted({i for c in self.absent for i in describing_token_ids(tokenizer, c)})
        self.words = tuple(sorted({w for c in self.absent for w in describing_words(c)}))
        self.completions = completion_token_ids(tokenizer, self.words) if self.words else {}

    def banned(self, text: str) -> list[int]:
        """Token ids the next position may not take, given the answer's decoded ``text`` so far."""
        if not self.words:
            return []
        body = open_explanation(text)
        if body is None:
            return []
        if (body.count('\\"') + body.count("\u201c") - body.count("\u201d")) % 2:
            return []  # inside a quotation
        clause = _CLAUSE_END.split(body)[-1]
        if _AFTER_NEGATION.search(clause):
            return []
        # The word being written (letters back to the last non-letter; empty after a space, a stray
        # byte or punctuation) and the tokens that would make it a describing word.
        start = _WORD_SO_FAR.search(body)[0].lower()
        completing = {i for word in self.words if word.startswith(start) and len(word) > len(start)
                      for i in self.completions.get(word[len(start):], ())}
        # Called for every token of every answer: most positions complete nothing, and then the
        # precomputed list serves without a new set or sort.
        return sorted(completing.union(self.forbidden)) if completing else self.forbidden


def open_explanation(text: str) -> str | None:
    """The explanation written so far (JSON-escaped) when ``text`` ends inside it, else None."""
    match = _OPEN_EXPLANATION.search(text)
    return None if match is None else match["body"]


@lru_cache(maxsize=16)
def describing_token_ids(tokenizer: Any, channel: str) -> tuple[int, ...]:
    """Ids of the tokens that spell a whole describing word of ``channel``.

    A token counts when its text, stripped, is one describing word and it starts a word: it begins
    with a space, or with a capital (the first word of the explanation follows its quote without a
    space). Lower-case tokens without a space are left to :func:`completion_token_ids`: they may end
    longer words ("sur" + "face").
    """
    ids = []
    for index, piece in enumerate(_pieces(tokenizer)):
        word = piece.strip()
        if not word.isalpha() or not is_describing_word(word, channel):
            continue
        if piece[:1].isspace() or word[0].isupper():
            ids.append(index)
    return tuple(ids)


@lru_cache(maxsize=16)
def completion_token_ids(tokenizer: Any, words: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Rest of a word (any suffix of one of ``words``, the whole word included) -> ids of the tokens
    without a leading space whose letters are exactly that rest, lower case, followed by nothing or
    by a character that is not a letter."""
    rests = {word[k:] for word in words for k in range(len(word))}
    found: dict[str, list[int]] = {}
    for index, piece in enumerate(_pieces(tokenizer)):
        letters = _LEADING_LETTERS.match(piece)
        if letters is not None and letters[0] in rests and letters[0].islower():
            found.setdefault(letters[0], []).append(index)
    return {rest: tuple(ids) for rest, ids in found.items()}


@lru_cache(maxsize=4)
def _pieces(tokenizer: Any) -> tuple[str, ...]:
    return tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))
