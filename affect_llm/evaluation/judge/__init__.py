"""Plausibility judges behind one Protocol (OpenAI-compatible, local HF, embedding), with a disk cache."""

from affect_llm.evaluation.judge.cache import JudgeCache, cache_key
from affect_llm.evaluation.judge.protocol import (
    Judge,
    JudgeError,
    JudgeKind,
    JudgeResult,
    PairwiseResult,
    compare_pair,
)

__all__ = [
    "Judge",
    "JudgeCache",
    "JudgeError",
    "JudgeKind",
    "JudgeResult",
    "PairwiseResult",
    "cache_key",
    "compare_pair",
]
