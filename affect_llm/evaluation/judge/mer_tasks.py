"""Judge tasks of the published MER scoring: synonym groups (MER2024-OV) and sentiment (MER-UniBench).

The prompt texts are the published ones (``evaluation/data/prompts/mer/v1.yaml``). Their
answers are checked, never repaired: an answer that is not a list of lists of words, or not one
of the three sentiments, is a failure that is retried and then reported.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from affect_llm.evaluation.judge.chat import ChatJudge, ChatTask
from affect_llm.prompts import PromptFile, load_prompt

MER_PROMPT_ROOT = Path(__file__).resolve().parents[1] / "data" / "prompts"
SENTIMENTS = ("positive", "negative", "neutral")
GROUPS_MAX_TOKENS = 512
SENTIMENT_MAX_TOKENS = 16


def load_mer_prompt(version: str = "v1") -> PromptFile:
    """The published MER prompts (``mer@v1#hash``)."""
    return load_prompt("mer", version, root=MER_PROMPT_ROOT)


def require_chat_judge(judge: Any, what: str) -> ChatJudge:
    """``judge`` when it can answer chat tasks, else a ValueError naming what needed it."""
    if not isinstance(judge, ChatJudge):
        name = "no judge" if judge is None else f"judge {getattr(judge, 'identity', judge)!r}"
        raise ValueError(f"{what} needs a chat judge (--judge openai or --judge hf), got {name}")
    return judge


def check_groups(text: str) -> tuple[list[list[str]] | None, str | None]:
    """A list of lists of words in ``text`` (JSON or a Python literal), lower-cased and stripped."""
    start, end = text.find("["), text.rfind("]")
    if start == -1 or end < start:
        return None, "answer has no list"
    body = text[start : end + 1]
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        try:
            value = ast.literal_eval(body)
        except (ValueError, SyntaxError) as exc:
            return None, f"answer is not a list literal ({exc.__class__.__name__})"
    if not isinstance(value, list) or not all(isinstance(g, list | tuple) for g in value):
        return None, "answer must be a list of lists"
    if not all(isinstance(w, str) for g in value for w in g):
        return None, "every group member must be a string"
    return [[w.lower().strip() for w in g if w.strip()] for g in value], None


def check_sentiment(text: str) -> tuple[str | None, str | None]:
    """``positive`` / ``negative`` / ``neutral`` (a JSON string or the bare word, any case)."""
    word = text.strip().strip("\"'").strip().rstrip(".").lower()
    if word not in SENTIMENTS:
        return None, f"answer must be one of {SENTIMENTS}, got {text.strip()[:40]!r}"
    return word, None


def groups_task(prompt: PromptFile, labels: Sequence[str]) -> ChatTask:
    """Ask for synonym groups of ``labels`` (sorted: the published code's set order was arbitrary)."""
    rendered = str(sorted(labels))
    return ChatTask(
        prompt=prompt,
        template="groups",
        fields=(("labels", rendered),),
        check=check_groups,
        schema=prompt.data["schemas"]["groups"],
        max_tokens=GROUPS_MAX_TOKENS,
        kind="mer-ov-groups",
        key_texts=(rendered, ""),
    )


def sentiment_task(prompt: PromptFile, labels: Sequence[str]) -> ChatTask:
    """Ask for the sentiment of a label list, rendered ``[a, b]`` as the published pipeline did."""
    rendered = "[" + ", ".join(labels) + "]"
    return ChatTask(
        prompt=prompt,
        template="sentiment",
        fields=(("labels", rendered),),
        check=check_sentiment,
        schema=prompt.data["schemas"]["sentiment"],
        max_tokens=SENTIMENT_MAX_TOKENS,
        kind="mer-sentiment",
        key_texts=(rendered, ""),
    )


def group_heads(groups: Sequence[Sequence[str]]) -> dict[str, str]:
    """Word -> first word of its group; a word in several groups keeps its last one (as published)."""
    heads: dict[str, str] = {}
    for group in groups:
        for word in group:
            heads[word] = group[0]
    return heads
