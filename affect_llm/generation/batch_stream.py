"""Batched generation that hands every request its tokens as they are decoded, and drops finished rows.

``model.generate`` decodes a batch until its last row ends and keeps computing rows that already
ended; its streamers accept batch size 1 only. A server batching concurrent requests needs more:
each request streams its own tokens, has its own token budget and sampling settings, and a request
whose client went away must stop costing compute. :func:`stream_batch` is that loop: one prefill of
the batch (the prompt prefix every request shares computed once, or loaded where an earlier batch
kept it, the rest left-padded after it,
media tokens merged by ``model.embed_inputs`` as ``generate`` merges them), then one decoding step
per token for the rows still running; a row that ends (end of turn, its budget, or its sink reports
it cancelled) is removed from the batch and from the KV cache (``batch_select_indices``), so later
steps compute only the live rows. The cache is a :class:`~affect_llm.generation.kv_cache.GrowingCache`:
each step writes into room reserved ahead instead of copying the whole cache.

Under greedy decoding the tokens are those of transformers' ``model.generate`` on the left-padded
batch (the same positions and mask; tested), under a generation config that changes no logits
(``generate`` would also apply a checkpoint's repetition penalty, for one; this loop does not). Sampling is seeded per request with its own
generator, so a request samples the same tokens whatever it is batched with.

Shape letters: B live rows, L prompt tokens, V vocabulary, D LLM width.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, Protocol

import torch
from transformers import StaticCache

from affect_llm.generation.absent_evidence import AbsentChannelGuard, guards_for
from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.compiled_step import CompiledDecoder
from affect_llm.generation.kv_cache import GrowingCache
from affect_llm.generation.ngram_drafts import NgramDrafter
from affect_llm.generation.prefix_cache import PrefixCache
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor, batch_to_device

FinishReason = Literal["stop", "length", "cancelled"]
# A shared prompt prefix shorter than this is not worth a forward pass of its own.
MIN_SHARED_PREFIX = 8


class TokenSink(Protocol):
    """Receives one request's tokens; called from the generating thread.

    A sink may also have ``prompt_cached(tokens: int)``: it is called once, before the first token,
    with how many of the prompt's tokens were loaded from kept prefixes instead of computed (a
    server's ``usage.prompt_tokens_details.cached_tokens``).
    """

    def put(self, token_id: int) -> None:
        """One new token (never the end-of-turn token)."""
        ...

    def cancelled(self) -> bool:
        """True once nobody waits for the rest (the row is then dropped before the next step)."""
        ...

    def end(self, reason: FinishReason) -> None:
        """The request is done: ``stop`` (end of turn), ``length`` (budget) or ``cancelled``."""
        ...


class TokenCollector:
    """A sink that keeps one answer's tokens, read once the batch is done (whole answers, no streaming)."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.reason: FinishReason | None = None

    def put(self, token_id: int) -> None:
        self.tokens.append(token_id)

    def cancelled(self) -> bool:
        return False

    def end(self, reason: FinishReason) -> None:
        self.reason = reason


@dataclass
class BatchItem:
    """One request of a batch.

    Attributes:
        request: Chat and media (cached features or encoder inputs).
        settings: Its decoding settings (budget, greedy or seeded sampling).
        sink: Where its tokens go.
        stop_at_eos: End at the end-of-turn token (False decodes the whole budget: load tests).
    """

    request: GenerationRequest
    settings: DecodingSettings
    sink: TokenSink
    stop_at_eos: bool = True


@dataclass
class BatchStats:
    """What one call of :func:`stream_batch` computed.

    Attributes:
        rows: Requests in the batch.
        steps: Decoding steps after the prefill.
        row_steps: Sum over steps of the rows computed in that step (the cost of decoding).
        finished: Finish reason per request, in batch order.
    """

    rows: int = 0
    steps: int = 0
    row_steps: int = 0
    finished: list[FinishReason] = field(default_factory=list)


class _Sampler:
    """Next-token choice of one row: argmax, or a draw from its own seeded generator, held to the
    request's channel guard (the one ``AbsentChannelLogitsProcessor`` holds for ``generate``)."""

    def __init__(self, settings: DecodingSettings, guard: AbsentChannelGuard | None = None) -> None:
        self.settings = settings
        self.guard = guard
        self.generated: list[int] = []
        self.generator: torch.Generator | None = None
        if settings.do_sample:
            self.generator = torch.Generator().manual_seed(settings.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """``(V,)`` logits -> token id."""
        forced = self.guard.forced(self.generated) if self.guard is not None else None
        if forced is None and self.guard is not None and (banned := self.guard.banned(self.generated)):
            logits = logits.clone()
            logits[banned] = float("-inf")
        token = self._choose(logits) if forced is None else forced
        self.generated.append(token)
        return token

    def _choose(self, logits: torch.Tensor) -> int:
        if self.generator is None:
            return int(logits.argmax())
        probs = torch.softmax(logits.float() / max(self.settings.temperature, 1e-5), dim=-1)  # (V,)
        if self.settings.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            drop = sorted_probs.cumsum(-1) - sorted_probs > self.settings.top_p
            probs = probs.scatter(0, order, sorted_probs.masked_fill(drop, 0.0))
        return int(torch.multinomial(probs.cpu(), 1, generator=self.generator))


def shared_prefix_length(prompts: list[list[int]], stop_ids: set[int]) -> int:
    """Leading tokens every prompt shares, up to the first media placeholder, leaving each one token.

    Returns 0 when fewer than ``MIN_SHARED_PREFIX`` tokens are shared (not worth a forward of its own).
    """
    limit = min(len(ids) for ids in prompts) - 1
    first = prompts[0]
    length = 0
    while length < limit and first[length] not in stop_ids and all(ids[length] == first[length] for ids in prompts):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


def _prefill(model: AffectForConditionalGeneration, processor: AffectProcessor, items: list[BatchItem],
             cache: GrowingCache, cached: dict[str, Any], prefixes: PrefixCache | None = None,
             ) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run the prompts through the LLM, filling the cache; returns ``(output, mask (B, L), positions (B, 1))``.

    The prefix all prompts share (the system prompt and chat header) is computed once and its keys
    and values repeated for every row: with a batch of B requests, B - 1 copies of its cost are
    saved; with ``prefixes``, the part of it an earlier batch computed is loaded from there instead.
    The rest of each prompt is left-padded after it, so a row reads
    ``[shared prefix][padding][own tokens]``; padding is masked, and positions count only real
    tokens, as ``generate`` counts them.
    """
    lm = model.language_model
    device = model.get_input_embeddings().weight.device
    prompts = [processor.encode_text(item.request.messages)["input_ids"] for item in items]
    shared = shared_prefix_length(prompts, set(processor.token_ids().values()))
    salts = {item.request.cache_salt for item in items}
    if len(salts) > 1:
        prefixes = None  # rows of different salts: none of them reads or keeps another's prefix
    reused = 0
    if shared:
        prefix, salt = prompts[0][:shared], salts.pop()
        generation = prefixes.generation if prefixes is not None else 0
        reused = prefixes.load(prefix, cache, MIN_SHARED_PREFIX, salt) if prefixes is not None else 0
        if reused < shared:
            lm(input_ids=torch.tensor(prefix[reused:], device=device)[None],  # (1, P - reused)
               position_ids=torch.arange(reused, shared, device=device)[None], **cached)
            if prefixes is not None:
                prefixes.store(prefix, cache, generation, salt)
        if len(items) > 1:
            cache.batch_repeat_interleave(len(items))
    for item in items:
        report = getattr(item.sink, "prompt_cached", None)
        if report is not None:
            report(reused)
    rest = [{"input_ids": ids[shared:], "media": item.request.media} for ids, item in zip(prompts, items, strict=True)]
    batch = batch_to_device(processor.collate(rest, padding_side="left"), device)
    own_mask = batch["attention_mask"]  # (B, S)
    mask = torch.cat([own_mask.new_ones(len(items), shared), own_mask], dim=-1)  # (B, P + S)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, shared:]  # (B, S)
    embeds = model.embed_inputs(batch["input_ids"], batch["media"])  # (B, S, D)
    out = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, **cached)
    return out, mask, positions[:, -1:]


@torch.no_grad()
def stream_batch(
    model: AffectForConditionalGeneration,
    processor: AffectProcessor,
    items: list[BatchItem],
    eos_token_id: int | None = None,
    decoder: CompiledDecoder | None = None,
    drafter: NgramDrafter | None = None,
    prefixes: PrefixCache | None = None,
) -> BatchStats:
    """Decode a batch, handing each token to its request's sink as soon as it is chosen.

    Args:
        model: The composite model (LoRA attached or merged).
        processor: Its processor.
        items: The requests; rows already cancelled are ended before the prefill.
        eos_token_id: End-of-turn token (default: the tokenizer's).
        decoder: Decode through its compiled step over a static cache (the prompt's forward stays
            eager); rows that end then stay in the batch, their steps not handed out, until the last
            one ends.
        drafter: Where one greedy row decodes and its settings ask for drafts
            (``DecodingSettings.draft_tokens``), verify its drafts several tokens a step
            (:func:`_decode_with_drafts`), eagerly or through ``decoder``'s step; it also learns from
            the answer.
        prefixes: Load the shared prompt prefix's keys and values from here where an earlier batch
            computed them, and keep this batch's there (the same LLM weights, laid out the same way,
            in every batch that uses it), under the rows' ``cache_salt``; a batch whose rows differ
            in salt neither loads nor keeps one.

    Returns:
        Counts of rows and steps, and each request's finish reason.
    """
    stats = BatchStats(rows=len(items), finished=["cancelled"] * len(items))
    eos = processor.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    live = [i for i, item in enumerate(items) if not _ended_early(item, stats, i)]
    if not live:
        return stats
    samplers = {i: _Sampler(items[i].settings, _guard(processor, items[i])) for i in live}
    produced = dict.fromkeys(live, 0)
    cache = GrowingCache()
    cached = {cache_argument(model.language_model): cache, "use_cache": True, "logits_to_keep": 1}
    out, mask, positions = _prefill(model, processor, [items[i] for i in live], cache, cached,  # (B, L), (B, 1)
                                    prefixes)
    logits = out.logits[:, -1, :]  # (B, V)
    del out  # it holds the growing cache, which the compiled step no longer needs
    step = model.language_model
    if decoder is not None:
        budget = max(items[i].settings.max_new_tokens for i in live)
        static, length = decoder.static_copy(cache, len(live), budget)
        cache, cached = static, {"use_cache": True, "logits_to_keep": 1}  # the growing cache released
        # The whole cache's length at once: the mask's shape never changes (causality hides what is unwritten).
        mask = torch.cat([mask, mask.new_ones(len(live), length - mask.shape[-1])], dim=-1)  # (B, length)
        step = partial(decoder.step, static)
    if drafter is not None and len(live) == 1 and drafts_apply(items[live[0]].settings):
        _decode_with_drafts(step, cache, cached, logits[0], positions, items[live[0]], samplers[live[0]],
                            drafter, eos, stats, live[0], static_mask=mask if decoder is not None else None)
        return stats
    ended: list[int] = []  # rows that stay in a static batch after they ended
    while True:
        next_ids, keep = [], []
        for row, index in enumerate(live):
            item = items[index]
            if index in ended:
                next_ids.append(eos if eos is not None else 0)
                continue
            token = samplers[index](logits[row])
            reason = _step_end(item, token, eos, produced[index])
            if reason is None:
                item.sink.put(token)
                produced[index] += 1
                reason = "length" if produced[index] >= item.settings.max_new_tokens else None
            if reason is not None:
                stats.finished[index] = reason
                item.sink.end(reason)
                ended.append(index)
                next_ids.append(token)
            else:
                next_ids.append(token)
                keep.append(row)
        if not keep:
            return stats
        if decoder is None:
            if len(keep) < len(live):
                # Rows that ended leave the batch and the cache: later steps cost only the live ones.
                cache.batch_select_indices(torch.tensor(keep, device=mask.device))
                mask, positions = mask[keep], positions[keep]
                live = [live[row] for row in keep]
                next_ids = [next_ids[row] for row in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)  # (B, L + 1)
        positions = positions + 1
        step_ids = torch.tensor(next_ids, device=mask.device)[:, None]  # (B, 1)
        logits = step(input_ids=step_ids, attention_mask=mask, position_ids=positions, **cached).logits[:, -1, :]
        stats.steps += 1
        stats.row_steps += len(live)


def drafts_apply(settings: DecodingSettings) -> bool:
    """Drafts are verified against greedy choices only (sampling would need rejection sampling)."""
    return settings.draft_tokens > 0 and not settings.do_sample


def _decode_with_drafts(step: Callable[..., Any], cache: GrowingCache | StaticCache, cached: dict[str, Any],
                        logits: torch.Tensor, positions: torch.Tensor, item: BatchItem, sampler: _Sampler,
                        drafter: NgramDrafter, eos: int | None, stats: BatchStats, index: int,
                        static_mask: torch.Tensor | None = None) -> None:
    """Decode one greedy row, each step feeding the last chosen token and a draft of the next ones.

    The logits after each fed token are checked in order: a draft token stays while it is the token
    the sampler (argmax under the channel guard) chooses there, and the first choice that differs
    is the step's last token; the cache's positions past what was kept are cut off. ``logits``
    ``(V,)`` are the prompt's last position, ``positions`` ``(1, 1)`` its position.

    ``step`` is the LLM's forward, or a compiled decoder's step over the static ``cache`` whose whole
    length ``static_mask`` ``(1, length)`` spans: cutting positions off a static cache moves its
    length back, and the next step writes over them (causality hides them until then). A step feeds
    one token, or one and its draft: compiled, the two make two graphs, the second with its number of
    tokens symbolic.
    """
    answer: list[int] = []
    budget = item.settings.max_new_tokens
    rows, fed = logits[None], []  # rows[j]: logits after the j-th fed token; fed: the draft fed after the first
    while True:
        for j in range(len(fed) + 1):
            token = sampler(rows[j])
            reason = _step_end(item, token, eos, len(answer))
            if reason is None:
                item.sink.put(token)
                answer.append(token)
                reason = "length" if len(answer) >= budget else None
            if reason is not None:
                stats.finished[index] = reason
                item.sink.end(reason)
                drafter.remember(answer + ([token] if reason == "stop" else []))
                return
            if j == len(fed) or token != fed[j]:
                break
        kept = j  # draft tokens whose choice matched: their keys and values stay in the cache
        if len(fed) > kept:
            cache.crop(kept - len(fed))
        positions = positions[:, kept:kept + 1]  # the position of the last token kept
        # No draft past the budget: the step's own token may be the last one.
        draft = drafter.propose(answer, min(item.settings.draft_tokens, budget - len(answer) - 1))
        ids = torch.tensor([[token, *draft]], device=positions.device)  # (1, 1 + d)
        positions = positions + torch.arange(1, ids.shape[1] + 1, device=positions.device)  # (1, 1 + d)
        if static_mask is None:
            mask = positions.new_ones(1, cache.get_seq_length() + ids.shape[1])  # one row: nothing padded
            keep = ids.shape[1]
        else:
            # 0 keeps every position's logits: one constant for the compiled graph of every draft's length,
            # and a step without a draft runs the graph of one token a step.
            mask, keep = static_mask, 0 if ids.shape[1] > 1 else 1
        rows = step(input_ids=ids, attention_mask=mask, position_ids=positions,
                    **{**cached, "logits_to_keep": keep}).logits[0]  # (1 + d, V)
        fed = draft
        stats.steps += 1
        stats.row_steps += 1


def _guard(processor: AffectProcessor, item: BatchItem) -> AbsentChannelGuard | None:
    """The guard of one request's channels under its own settings (None: nothing to hold)."""
    settings = item.settings
    return guards_for(processor.tokenizer, [item.request.absent], settings.null_absent_evidence,
                      settings.guard_absent_explanation)[0]


def cache_argument(language_model: torch.nn.Module) -> str:
    """``cache`` where the LLM's forward takes it, else the older ``past_key_values``."""
    base = language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _ended_early(item: BatchItem, stats: BatchStats, index: int) -> bool:
    """End a row that is cancelled, or has no budget, before anything is computed for it."""
    if item.sink.cancelled():
        item.sink.end("cancelled")
        return True
    if item.settings.max_new_tokens <= 0:
        stats.finished[index] = "length"
        item.sink.end("length")
        return True
    return False


def _step_end(item: BatchItem, token: int, eos: int | None, produced: int) -> FinishReason | None:
    """Why a row ends at this token, before it is handed out; None to keep decoding."""
    if item.sink.cancelled():
        return "cancelled"
    if item.stop_at_eos and eos is not None and token == eos:
        return "stop"
    return None


class IncrementalDetokenizer:
    """Token ids -> text pieces, holding back a piece that ends inside a multi-byte character.

    Args:
        tokenizer: The checkpoint's tokenizer; special tokens are skipped, as whole answers are decoded.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.token_ids: list[int] = []
        self.emitted = 0

    def push(self, token_id: int) -> str:
        """The text this token completes ('' while a character is incomplete)."""
        self.token_ids.append(token_id)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        return self._take(text)

    def flush(self) -> str:
        """Whatever is left once the request ended."""
        return self._take(self.text())

    def text(self) -> str:
        """The whole decoded text so far."""
        return self.tokenizer.decode(self.token_ids, skip_special_tokens=True)

    def _take(self, text: str) -> str:
        piece = text[self.emitted:]
        self.emitted = len(text)
        return piece
