"""Decoding that writes ``null`` as the evidence of a channel the clip does not have.

A clip without a voice, a face or words must not get a description of one: the prompt says which
channels are missing, and training teaches the model to answer ``null`` for them, but a small model
still falls back on its most frequent description ("The face is neutral."). The clip's channels
are known facts, not something to predict, so decoding enforces them: once the answer reaches the
key of a missing channel inside ``"evidence": {...}``, the next tokens are forced to spell ``": null``.
Everything else (labels, explanation, evidence of present channels) is the model's own choice, and
the explanation is written after the evidence (prompt v5), conditioned on those nulls.

The guard reads the decoded text of the tokens generated so far, so it holds whatever way the
tokenizer splits ``": null"``; it is stateless between steps and costs one decode of the answer
per step (answers are a few hundred tokens). Engines that take no per-step hook (vLLM) apply it
after the fact: :func:`first_departure` finds where a free answer left the guard, and the answer is
continued from there with the forced token in place, which under greedy decoding gives the answer
the hook would have given.

The same guard carries the explanation's rule (:mod:`affect_llm.generation.absent_explanation`):
the tokens of words that describe a missing channel are forbidden while the explanation is being
written. That rule needs the per-step hook, so the HF backends hold it and the vLLM backend does not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers import LogitsProcessor

from affect_llm.generation.absent_explanation import ExplanationGuard

# What follows an evidence key whose channel is missing, in the canonical layout (json.dumps).
NULL_VALUE = '": null'
# An evidence key being written: `"evidence": {`, earlier keys and a comma (no nested braces), then
# the key's name, with whatever part of its `": null` value is already there.
_KEY_AT_END = re.compile(r'"evidence"\s*:\s*\{(?:[^{}]*,)?\s*"(?P<key>audio|video|text)(?P<tail>"?\s*:?\s*n?u?l?)$')
_LOOSE_TAIL = re.compile(r'"\s*:\s*(?P<partial>n(?:u(?:l)?)?)?')


class AbsentChannelGuard:
    """What one answer may write next about the channels its clip lacks.

    Two rules, each on or off: the evidence of a missing channel is ``null`` (:meth:`forced`), and
    the explanation does not describe a missing channel (:meth:`banned`,
    :mod:`affect_llm.generation.absent_explanation`).

    Args:
        tokenizer: The LLM's tokenizer.
        absent: Evidence keys (``audio``, ``video``, ``text``) the clip does not have.
        null_evidence: Force ``null`` as a missing channel's evidence.
        explanation: Forbid words describing a missing channel in the explanation.
    """

    def __init__(
        self, tokenizer: Any, absent: Sequence[str], null_evidence: bool = True, explanation: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.absent = frozenset(absent)
        self.null_evidence = null_evidence
        self.explanation = ExplanationGuard(tokenizer, tuple(self.absent)) if explanation else None
        self._decoded: tuple[tuple[int, ...], str] = ((), "")

    def text(self, generated: Sequence[int]) -> str:
        """The decoded answer so far (kept for the step: both rules read the same text)."""
        key = tuple(generated)
        if key != self._decoded[0]:
            self._decoded = (key, self.tokenizer.decode(list(key), skip_special_tokens=True))
        return self._decoded[1]

    def forced(self, generated: Sequence[int]) -> int | None:
        """The next token id of the answer whose generated ids are ``generated``, if it is forced."""
        if not self.null_evidence or not self.absent or not generated:
            return None
        match = _KEY_AT_END.search(self.text(generated))
        if match is None or match["key"] not in self.absent:
            return None
        rest = remaining_null(match["tail"])
        if not rest:
            return None
        return self.tokenizer(rest, add_special_tokens=False)["input_ids"][0]

    def banned(self, generated: Sequence[int]) -> list[int]:
        """Token ids the next position may not take (empty: no rule applies here)."""
        if self.explanation is None or not generated:
            return []
        return self.explanation.banned(self.text(generated))


class AbsentChannelLogitsProcessor(LogitsProcessor):
    """``generate``'s hook for :class:`AbsentChannelGuard`: one guard per batch row (None: free).

    The ids ``generate`` hands over may include the prompt; its length at the first call is
    remembered, so each guard sees only the answer.
    """

    def __init__(self, guards: Sequence[AbsentChannelGuard | None]) -> None:
        self.guards = list(guards)
        self.prompt_length: int | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        for row, guard in enumerate(self.guards):
            if guard is None:
                continue
            generated = input_ids[row, self.prompt_length:].tolist()
            token = guard.forced(generated)
            if token is not None:
                forced = torch.full_like(scores[row], float("-inf"))
                forced[token] = 0.0
                scores[row] = forced
            elif banned := guard.banned(generated):
                scores[row, banned] = float("-inf")
        return scores


def remaining_null(tail: str) -> str:
    """What is left to write of a missing channel's ``": null`` after ``tail`` (already written)."""
    if NULL_VALUE.startswith(tail):
        return NULL_VALUE[len(tail):]
    loose = _LOOSE_TAIL.fullmatch(tail)  # extra spaces around the colon: keep them, finish the null
    if loose is None:
        return ""
    return "null"[len(loose["partial"] or ""):]


def first_departure(
    guard: AbsentChannelGuard, generated: Sequence[int], start: int = 1
) -> tuple[int, int] | None:
    """Where an answer decoded without ``guard`` first departs from it: (position, forced token), or None.

    Tokens before that position are the ones the guard leaves free, so they stand; the answer goes on
    from the forced token. An answer that ends (or is cut by the token cap) right at a forced point
    has nothing to replace. Positions before ``start`` are taken as already checked (each check
    decodes the answer so far, so a continued answer is not checked again from its beginning).
    """
    for position in range(max(start, 1), len(generated)):
        forced = guard.forced(generated[:position])
        if forced is not None and generated[position] != forced:
            return position, forced
    return None


def guards_for(
    tokenizer: Any, absent_per_request: Sequence[Sequence[str]], null_evidence: bool = True, explanation: bool = False
) -> list[AbsentChannelGuard | None]:
    """One guard per request that lacks a channel, None for the others (and for all when both rules are off)."""
    if not (null_evidence or explanation):
        return [None] * len(absent_per_request)
    return [AbsentChannelGuard(tokenizer, absent, null_evidence, explanation) if absent else None
            for absent in absent_per_request]
