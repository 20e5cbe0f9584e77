"""The generation interface every backend implements, and the settings and requests it takes.

A request is a chat (with media placeholders) plus the media of its clip (usually cached encoder
features); a backend returns the generated text of each request, in order, or streams one request's
text as it is generated. Decoding is greedy unless ``do_sample``, and sampling is seeded, so a rerun
gives the same text. Backends receive an already loaded model and processor
(:func:`affect_llm.generation.load.load_backend` loads them once).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from affect_llm.modeling.media import MediaInputs
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor


@dataclass
class DecodingSettings:
    """Decoding of every backend.

    Attributes:
        max_new_tokens: Cap on generated tokens.
        do_sample: Sample instead of greedy decoding.
        temperature / top_p: Sampling parameters.
        seed: Seed of sampling (greedy ignores it).
        null_absent_evidence: Write ``null`` as the evidence of a channel the request lacks
            (:mod:`affect_llm.generation.absent_evidence`); off, the model's own answer is kept.
        guard_absent_explanation: Keep the explanation from describing a channel the request lacks:
            its describing words are forbidden there, except right after a negation ("no face")
            (:mod:`affect_llm.generation.absent_explanation`; HF backends only, vLLM takes no
            per-step hook); off, the model's own words are kept.
        compile: Decode with a static KV cache and a compiled decoding step (``torch.compile``;
            on a CPU with inductor's C++ wrapper; batches through
            :class:`~affect_llm.generation.compiled_step.CompiledDecoder`). Greedy answers are
            unchanged; the first batch pays a compile of minutes on a CPU (in every process below
            16 rows, whose frozen graph inductor does not cache), and a new batch size or static
            cache length one more, as does the first step that verifies drafts (``draft_tokens``).
            Worth it for batch jobs; the hf backend only.
        draft_tokens: Where one greedy answer decodes alone (a chat, ``explain --batch-size 1``, a
            lone request to the server; with ``compile`` or without), verify up to this many
            drafted tokens a step (:mod:`~affect_llm.generation.ngram_drafts`): the same answer in
            fewer reads of the weights; 0 decodes one token a step. The hf backend only.
    """

    max_new_tokens: int = 160
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    null_absent_evidence: bool = True
    guard_absent_explanation: bool = True
    compile: bool = False
    draft_tokens: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"DecodingSettings.max_new_tokens must be a whole number >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.draft_tokens, bool) or not isinstance(self.draft_tokens, int) or self.draft_tokens < 0:
            raise ValueError(f"DecodingSettings.draft_tokens must be a whole number >= 0, got {self.draft_tokens!r}")
        # A temperature of 0 or below would divide the logits by nothing or turn them round; a top_p
        # outside (0, 1] keeps no token or means nothing.
        if not self.temperature > 0:
            raise ValueError(f"DecodingSettings.temperature must be above 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"DecodingSettings.top_p must be above 0 and at most 1, got {self.top_p!r}")

    def as_dict(self) -> dict:
        return asdict(self)


# Decoding fields that do not change answers: compiled decoding and verified drafts give the same
# tokens, and the sampling parameters are not read without sampling.
_SPEED_FIELDS = ("compile", "draft_tokens")
_SAMPLING_FIELDS = ("temperature", "top_p", "seed")


def answer_decoding(decoding: Any) -> Any:
    """A row's ``decoding`` (:meth:`DecodingSettings.as_dict`) without the fields that leave its answers
    as they are: what a resumed run or a merge compares."""
    if not isinstance(decoding, dict):
        return decoding
    kept = {key: value for key, value in decoding.items() if key not in _SPEED_FIELDS}
    if not kept.get("do_sample"):
        kept = {key: value for key, value in kept.items() if key not in _SAMPLING_FIELDS}
    return kept


def seed_or_fresh(seed: int | None) -> int:
    """The seed of one sampled answer: the one asked for, which makes the answer reproducible, or a fresh
    draw, so that asking again without one gives another answer (as OpenAI's API does)."""
    return seed if seed is not None else secrets.randbits(63)


def llm_context_tokens(model: Any) -> int | None:
    """The context of a model's LLM in tokens (``max_position_embeddings``); None where its config names none."""
    return getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)


def fits_context(context_tokens: int | None, prompt_tokens: int, budget: int) -> bool:
    """Whether a prompt and its answer's token budget fit the LLM's context (always, where it is unknown).

    Past the context the model's positions mean nothing, so the chat and the server refuse a turn that
    could run past it instead of answering from positions it never learned.
    """
    return context_tokens is None or prompt_tokens + budget <= context_tokens


@dataclass
class GenerationRequest:
    """One chat, the media of its clip, and the evidence channels (``audio``, ``video``, ``text``) it lacks.

    ``cache_salt``: what this request may reuse of earlier ones (the hf backend's kept prompt prefixes
    and its drafts) comes only from requests with the same salt (a server's client or tenant; None,
    the default, is shared by every request that sends none).
    """

    messages: list[dict[str, str]]
    media: MediaInputs = field(default_factory=MediaInputs)
    absent: tuple[str, ...] = ()
    cache_salt: str | None = None


class GenerationBackend(Protocol):
    """What ``explain``, ``chat``, the pipeline and the server need from a backend.

    Attributes:
        name: ``hf`` or ``vllm`` (recorded in every output row).
        model: The loaded model; its encoders compute the features of new clips.
        processor: Its processor (prompts, tokenizer, media preparation).
    """

    name: str
    model: AffectForConditionalGeneration
    processor: AffectProcessor

    def generate(self, requests: list[GenerationRequest], settings: DecodingSettings) -> list[str]:
        """The text of each request, in order."""
        ...

    def stream(self, request: GenerationRequest, settings: DecodingSettings) -> Iterator[str]:
        """Text pieces of one request as they are generated."""
        ...

    def close(self) -> None:
        """Release what the backend started (engines, worker processes)."""
        ...
