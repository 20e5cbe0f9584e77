"""Generation with the model in this process: batched, left-padded, and streamed.

Every answer decodes through :func:`~affect_llm.generation.batch_stream.stream_batch`: the prompt
prefix every clip shares (system prompt, chat header) is computed once and its keys and values kept
for later batches (:class:`~affect_llm.generation.prefix_cache.PrefixCache`: a batch of one, such as a
chat's turn, loads them instead of computing them again), a row that reaches its end of turn leaves
the batch, and the KV cache grows in place. Greedy answers are those of
``model.generate`` where the checkpoint's generation config changes no logits (tested); sampling draws from each request's own seeded generator, so a clip's
sampled answer does not depend on which clips share its batch. Compiled decoding
(``DecodingSettings.compile``) runs the same loop with its decoding step compiled over a static cache
(:class:`~affect_llm.generation.compiled_step.CompiledDecoder`), which keeps every row to the end of
the batch. A streamed answer (the chat) is a batch of one whose tokens are handed over as they come; one
greedy answer decoded alone, eagerly or compiled, verifies drafts of its next tokens several at a step
(:mod:`~affect_llm.generation.ngram_drafts`), drawn from the n-grams of the answers decoded before.
On a CPU the LLM's linear layers run packed for oneDNN (:mod:`~affect_llm.generation.packed_linear`:
the same tokens) where that measures faster at load time for the rows the caller decodes: 1.35x to
1.5x faster on the AMD EPYC cores, slower at one row on an Intel Xeon without AMX, where MKL's plain
matmul is ahead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import replace
from queue import Queue
from threading import Event, Lock, Thread

import torch

from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.batch_stream import (
    BatchItem,
    BatchStats,
    IncrementalDetokenizer,
    TokenCollector,
    cache_argument,
    stream_batch,
)
from affect_llm.generation.compiled_step import (
    CompiledDecoder,
    compiles_over_packed_layers,
    supports_static_copy,
)
from affect_llm.generation.ngram_drafts import NgramDrafter
from affect_llm.generation.packed_linear import PackingProbe, measure_packing, pack_linear_layers
from affect_llm.generation.prefix_cache import PrefixCache
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.trainable import is_peft_wrapped, is_quantized, merge_lora_for_inference
from affect_llm.processing.processor import AffectProcessor

logger = logging.getLogger(__name__)
# Drafters kept for requests that send a cache_salt (the least recently used goes first), and the
# tokens each remembers (a few answers; about 1 MB of n-grams each at most).
SALTED_DRAFTERS = 64
SALTED_DRAFTER_TOKENS = 2048


class HFBackend:
    """Batched generation of the composite model in this process.

    Args:
        model: The loaded model (LoRA attached or merged), on the device it generates on.
        processor: Its processor.
        merge_lora: Fold an attached LoRA adapter into the LLM's weights first (in memory; not for
            a 4-bit LLM): the same answers under greedy decoding, without two extra matmuls per
            adapted layer and token.
        pack_weights: On a CPU, lay the LLM's float32 linear weights out for oneDNN (a 4- or 8-bit LLM, or
            one with its adapter still attached, stays as it is); None: where it measures faster at
            ``rows`` (:func:`~affect_llm.generation.packed_linear.measure_packing`, about a second).
        rows: Rows the backend will mostly decode at once (``explain``'s batch size; 1 for a chat),
            at which packing is measured; compiled decoding keeps packed layers from
            ``PACKED_COMPILE_MIN_ROWS`` rows on
            (:func:`~affect_llm.generation.compiled_step.compiles_over_packed_layers`).

    Attributes:
        packing: The measurement behind the choice (None where it was not measured).
    """

    name = "hf"

    def __init__(
        self, model: AffectForConditionalGeneration, processor: AffectProcessor, merge_lora: bool = True,
        pack_weights: bool | None = None, rows: int = 1,
    ) -> None:
        if merge_lora:
            merge_lora_for_inference(model)
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device
        self.rows = rows
        self._decoder: CompiledDecoder | None = None
        # Learns from every answer this backend decodes, so a chat's or a batch job's later answers
        # draft from its earlier ones; requests with a cache_salt draft from their salt's own drafter.
        self.drafter = NgramDrafter()
        self._salted_drafters: OrderedDict[str, NgramDrafter] = OrderedDict()
        # The shared prompt prefix of recent answers: a batch of one (a chat turn, explain --batch-size 1,
        # a lone request) loads it instead of computing it again. None: every prompt computed whole.
        self.prefixes: PrefixCache | None = PrefixCache()
        self._drafters_lock = Lock()
        self._warned_eager = False
        self.packing: PackingProbe | None = None
        if (pack_weights is not False and self.device.type == "cpu" and not is_peft_wrapped(model)
                and not is_quantized(model.language_model)):
            if pack_weights is None:
                self.packing = measure_packing(self.model.language_model, rows)
                if self.packing is not None:
                    logger.info("LLM weights: %s", self.packing.describe())
            if pack_weights or (self.packing is not None and self.packing.pays):
                pack_linear_layers(self.model.language_model)

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], settings: DecodingSettings) -> list[str]:
        if not requests:
            return []
        sinks = [TokenCollector() for _ in requests]
        self.decode([BatchItem(request, settings, sink) for request, sink in zip(requests, sinks, strict=True)],
                    settings.compile)
        return [self.processor.tokenizer.decode(sink.tokens, skip_special_tokens=True) for sink in sinks]

    @torch.no_grad()
    def decode(self, items: list[BatchItem], compile: bool = False) -> BatchStats:
        """One batch through ``stream_batch``, its decoding step compiled where ``compile`` asks (the
        server's scheduler calls this with requests of mixed settings)."""
        decoder = self._decoder_for(compile)
        drafter = self._drafter_for(items)
        if decoder is None:
            return stream_batch(self.model, self.processor, items, drafter=drafter, prefixes=self.prefixes)
        # Held for the whole batch: a stream whose reader left (a chat turn interrupted during the
        # compile) may still be decoding when the next turn starts.
        with decoder.lock:
            return stream_batch(self.model, self.processor, items, decoder=decoder, drafter=drafter,
                                prefixes=self.prefixes)

    def _drafter_for(self, items: list[BatchItem]) -> NgramDrafter:
        """The drafter of the batch's salt (drafts apply to a batch of one, whose salt is its row's)."""
        if len(items) != 1 or items[0].request.cache_salt is None:
            return self.drafter
        salt = items[0].request.cache_salt
        with self._drafters_lock:
            drafter = self._salted_drafters.pop(salt, None) or NgramDrafter(memory_tokens=SALTED_DRAFTER_TOKENS)
            self._salted_drafters[salt] = drafter  # most recently used last
            while len(self._salted_drafters) > SALTED_DRAFTERS:
                self._salted_drafters.popitem(last=False)
        return drafter

    def compile_ahead(self, max_new_tokens: int = 2, draft_tokens: int = 0, several_rows: bool = True) -> bool:
        """Compile the decoding step now, for batches of every size, instead of at the first requests.

        A server's batches take any number of rows and any context length; compiled with symbolic
        sizes from the start, two graphs serve them all (dynamo compiles one row apart from several):
        both are made here on a short text-only prompt, once with one row and once with two
        (``several_rows=False``: one row only, as a chat decodes). With ``draft_tokens`` (one greedy
        answer verifying drafts, as a chat's turn does) a third graph, of one row fed a token and its
        draft, is made too.

        Returns:
            Whether the step compiled (False where the LLM decodes eagerly: sliding-window layers).
        """
        decoder = self._decoder_for(True, dynamic=True)
        if decoder is None:
            return False
        settings = DecodingSettings(max_new_tokens=max(2, max_new_tokens), null_absent_evidence=False,
                                    guard_absent_explanation=False, compile=True, draft_tokens=0)
        request = GenerationRequest(self.processor.build_messages("reason", (), None, "Say hello."),
                                    absent=("audio", "video", "text"))
        answer = TokenCollector()  # the one-row answer, which the drafted run below drafts from
        for rows in (1, 2) if several_rows else (1,):
            # Without the end of turn: every row decodes its budget, so the compiled step runs.
            sinks = [answer] if rows == 1 else [TokenCollector() for _ in range(rows)]
            self.decode([BatchItem(request, settings, sink, stop_at_eos=False) for sink in sinks], compile=True)
        if draft_tokens:
            # The same prompt again, drafted from its own answer: the drafts hold, so a step feeds several tokens.
            warm = NgramDrafter()
            warm.remember(answer.tokens)
            drafted = replace(settings, max_new_tokens=max(4, max_new_tokens), draft_tokens=draft_tokens)
            with decoder.lock:
                stream_batch(self.model, self.processor,
                             [BatchItem(request, drafted, TokenCollector(), stop_at_eos=False)],
                             decoder=decoder, drafter=warm)
        return True

    def _decoder_for(self, compile: bool, dynamic: bool | None = None) -> CompiledDecoder | None:
        """The compiled decoding step of this backend's LLM when ``compile`` asks for it, made on first use
        (with ``dynamic`` as :func:`~affect_llm.generation.compiled_step.compile_options` takes it)."""
        if not compile:
            return None
        if not supports_static_copy(self.model.language_model.config):
            if not self._warned_eager:
                logger.warning("compiled decoding copies each prompt's cache into a static one, which this LLM's "
                               "sliding-window layers do not keep whole: decoding eagerly")
                self._warned_eager = True
            return None
        if self._decoder is None:
            language_model = self.model.language_model
            self._decoder = CompiledDecoder(language_model, cache_argument(language_model), dynamic=dynamic,
                                            keep_packed=compiles_over_packed_layers(language_model, self.rows))
            # Kept prefixes were computed on the layers as they were: the decoder may unpack them, and it
            # switches the LLM's attention function (the same outputs up to float rounding).
            if self.prefixes is not None:
                self.prefixes.clear()
        return self._decoder

    def stream(self, request: GenerationRequest, settings: DecodingSettings) -> Iterator[str]:
        """Yield text pieces as they are generated (one request; the chat uses this).

        Generation runs in a thread feeding a queue. An error there (a bad setting, running out of
        memory) is raised here instead of leaving the reader waiting for ever; closing the iterator
        early (Ctrl-C in the chat) stops generation at the next token and waits for it.
        """
        sink = _QueueSink(IncrementalDetokenizer(self.processor.tokenizer))
        failures: list[BaseException] = []

        def run() -> None:
            try:
                self.decode([BatchItem(request, settings, sink)], settings.compile)
            except BaseException as exc:  # noqa: BLE001 (handed to the reading thread, which raises it)
                failures.append(exc)
            finally:
                sink.pieces.put(None)

        thread = Thread(target=run, daemon=True, name="affect-llm-generate")
        thread.start()
        try:
            while (piece := sink.pieces.get()) is not None:
                yield piece
        finally:
            sink.stop.set()
            thread.join()
        if failures:
            raise failures[0]

    def close(self) -> None:
        """Nothing to stop: the model lives in this process."""


class _QueueSink:
    """A :class:`~affect_llm.generation.batch_stream.TokenSink` that hands text pieces to a reading
    thread; ``None`` on the queue ends them (put by the generating thread once it is done)."""

    def __init__(self, detokenizer: IncrementalDetokenizer) -> None:
        self.detokenizer = detokenizer
        self.pieces: Queue[str | None] = Queue()
        self.stop = Event()  # the reader went away

    def put(self, token_id: int) -> None:
        if piece := self.detokenizer.push(token_id):
            self.pieces.put(piece)

    def cancelled(self) -> bool:
        return self.stop.is_set()

    def end(self, reason: str) -> None:
        if rest := self.detokenizer.flush():
            self.pieces.put(rest)
