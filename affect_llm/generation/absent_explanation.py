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

Only whole-word tokens are forbidden: a word the tokenizer spells in pieces ("eye" + "brows") passes
when its first piece is not itself a describing word. A describing word's token without a leading
space ("voice", "tone") is forbidden where it would start a word, after a character that is not a
letter (a space token, punctuation, a stray byte). A sampled policy still wrote "and\ufffdlaughing"
in a text-only explanation: after the stray byte it spelled the word in three pieces ("l" + "augh" +
"ing"), which no single-token rule sees. The evaluation reads the raw answers with the same lexicon,
so anything that slips through is counted, never hidden.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from affect_llm.labels.channel_words import DESCRIBING_WORDS, NEGATIONS, is_describing_word

# The explanation string being written: its opening quote, then escaped or ordinary characters up to
# the end of the text (an explanation that is closed does not match).
_OPEN_EXPLANATION = re.compile(r'"explanation"\s*:\s*"(?P<body>(?:[^"\\]|\\.)*)$', re.DOTALL)
# Where a clause starts: the scorer splits clauses the same way.
_CLAUSE_END = re.compile(r"[.;:!?\n]|\\n|,|\bbut\b|\bwhile\b|\bwhereas\b|\bhowever\b", re.IGNORECASE)
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
        # Also the bare (unspaced, lower-case) spellings, for a position where they would start a word.
        self.forbidden_at_word_start = sorted(
            {*self.forbidden, *(i for c in self.absent for i in describing_token_ids(tokenizer, c, bare=True))})

    def banned(self, text: str) -> list[int]:
        """Token ids the next position may not take, given the answer's decoded ``text`` so far."""
        if not self.forbidden_at_word_start:
            return []
        body = open_explanation(text)
        if body is None:
            return []
        if (body.count('\\"') + body.count("\u201c") - body.count("\u201d")) % 2:
            return []  # inside a quotation
        clause = _CLAUSE_END.split(body)[-1]
        if _AFTER_NEGATION.search(clause):
            return []
        # Inside a word a bare token only continues it ("sur" + "face"); after a space, a stray byte
        # or punctuation it would start one.
        return self.forbidden if body[-1:].isalpha() else self.forbidden_at_word_start


def open_explanation(text: str) -> str | None:
    """The explanation written so far (JSON-escaped) when ``text`` ends inside it, else None."""
    match = _OPEN_EXPLANATION.search(text)
    return None if match is None else match["body"]


@lru_cache(maxsize=32)
def describing_token_ids(tokenizer: Any, channel: str, bare: bool = False) -> tuple[int, ...]:
    """Ids of the tokens that spell a whole describing word of ``channel``.

    A token counts when its text, stripped, is one describing word and it starts a word: it begins
    with a space, or with a capital (the first word of the explanation follows its quote without a
    space). Lower-case tokens without a space end longer words ("sur" + "face") and are left out;
    ``bare=True`` gives those instead, for positions where the text so far ends in a non-letter.
    """
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    ids = []
    for index, piece in enumerate(pieces):
        word = piece.strip()
        if not word.isalpha() or not is_describing_word(word, channel):
            continue
        starts_word = piece[:1].isspace() or word[0].isupper()
        if starts_word != bare:
            ids.append(index)
    return tuple(ids)
