"""Generation with the model in this process: batched, left-padded.

A batch decodes through :func:`~affect_llm.generation.batch_stream.stream_batch`: the prompt prefix
every clip shares (system prompt, chat header) is computed once, a row that reaches its end of turn
leaves the batch, and the KV cache grows in place. Greedy answers are those of ``model.generate``
(tested); sampling draws from each request's own seeded generator, so a clip's sampled answer does
not depend on which clips share its batch. Compiled decoding (``DecodingSettings.compile``) runs the
same loop with the decoding step compiled over a static cache
(:class:`~affect_llm.generation.compiled_step.CompiledDecoder`), which keeps every row to the end of
the batch; ``model.generate`` compiles instead for an LLM with sliding-window layers.
On a CPU the LLM's linear layers run packed for oneDNN (:mod:`~affect_llm.generation.packed_linear`:
the same tokens, 1.35x to 1.5x faster on the measured cores), compiled decoding included.
"""

from __future__ import annotations

from collections.abc import Iterator
from threading import Event, Thread
from typing import Any

import torch
from transformers import (
    CompileConfig,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from affect_llm.generation.absent_evidence import AbsentChannelLogitsProcessor, guards_for
from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.batch_stream import BatchItem, TokenCollector, cache_argument, stream_batch
from affect_llm.generation.compiled_step import CompiledDecoder, supports_static_copy
from affect_llm.generation.packed_linear import pack_linear_layers
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.modeling.trainable import is_peft_wrapped, is_quantized, merge_lora_for_inference
from affect_llm.processing.processor import AffectProcessor, batch_to_device


def compiled_decoding(device: torch.device) -> dict[str, Any]:
    """The ``generate`` arguments of compiled decoding on ``device``: a static KV cache and how to compile.

    On CUDA, transformers' default (CUDA graphs). On a CPU, inductor with its C++ wrapper: the graph's
    two hundred small kernel and matmul calls per step are made from C++ instead of Python (the
    embedded default: 8-10% more decoding steps per second; its first compile takes two to three
    times as long); transformers compiles on a CPU only when asked to explicitly. Shapes are static at first
    and become dynamic after the first change (another prompt length or batch size), so a batch job
    compiles about twice.
    Inductor's ``freezing`` (weights as constants, pre-packed for MKL) is left off: passed as a
    compile option it was not applied (the graph still took the weights as inputs), and set in
    inductor's config it froze the static KV cache with the weights, so the graph compiled for
    one clip failed on the next clip's cache (torch 2.13).
    """
    if device.type == "cuda":
        config = CompileConfig()
    else:
        config = CompileConfig(mode=None, options={"cpp_wrapper": True})
        config._compile_all_devices = True  # transformers' switch for compiling off-GPU
    return {"cache_implementation": "static", "compile_config": config}


class HFBackend:
    """Batched generation of the composite model in this process.

    Args:
        model: The loaded model (LoRA attached or merged), on the device it generates on.
        processor: Its processor.
        merge_lora: Fold an attached LoRA adapter into the LLM's weights first (in memory; not for
            a 4-bit LLM): the same answers under greedy decoding, without two extra matmuls per
            adapted layer and token.
        pack_weights: On a CPU, lay the LLM's float32 linear weights out for oneDNN (a 4- or 8-bit LLM, or
            one with its adapter still attached, stays as it is).
    """

    name = "hf"

    def __init__(
        self, model: AffectForConditionalGeneration, processor: AffectProcessor, merge_lora: bool = True,
        pack_weights: bool = True,
    ) -> None:
        if merge_lora:
            merge_lora_for_inference(model)
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device
        self._decoder: CompiledDecoder | None = None
        if (pack_weights and self.device.type == "cpu" and not is_peft_wrapped(model)
                and not is_quantized(model.language_model)):
            # Here, not per call: the server's scheduler decodes with stream_batch directly.
            pack_linear_layers(self.model.language_model)

    def _batch(self, requests: list[GenerationRequest]) -> dict[str, Any]:
        items = [{**self.processor.encode_text(r.messages), "media": r.media} for r in requests]
        return batch_to_device(self.processor.collate(items, padding_side="left"), self.device)

    def _generate_kwargs(self, requests: list[GenerationRequest], settings: DecodingSettings) -> dict[str, Any]:
        tokenizer = self.processor.tokenizer
        kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
                                  "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        guards = guards_for(tokenizer, [r.absent for r in requests], settings.null_absent_evidence,
                            settings.guard_absent_explanation)
        if any(guards):  # guards_for leaves None where a request lacks nothing or both rules are off
            kwargs["logits_processor"] = LogitsProcessorList([AbsentChannelLogitsProcessor(guards)])
        if settings.compile:
            kwargs.update(compiled_decoding(self.device))
        if settings.do_sample:
            torch.manual_seed(settings.seed)
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    @torch.no_grad()
    def generate(self, requests: list[GenerationRequest], settings: DecodingSettings) -> list[str]:
        if not requests:
            return []
        decoder = self._compiled_decoder() if settings.compile else None
        if settings.compile and decoder is None:
            output = self.model.generate(**self._batch(requests), **self._generate_kwargs(requests, settings))
            return self.processor.tokenizer.batch_decode(output, skip_special_tokens=True)
        sinks = [TokenCollector() for _ in requests]
        stream_batch(self.model, self.processor,
                     [BatchItem(request, settings, sink) for request, sink in zip(requests, sinks, strict=True)],
                     decoder=decoder)
        return [self.processor.tokenizer.decode(sink.tokens, skip_special_tokens=True) for sink in sinks]

    def _compiled_decoder(self) -> CompiledDecoder | None:
        """The compiled decoding step of this backend's LLM, made on first use (None: its layers do not
        suit a copied static cache, and ``model.generate`` compiles instead)."""
        if self._decoder is None and supports_static_copy(self.model.language_model.config):
            self._decoder = CompiledDecoder(self.model.language_model, cache_argument(self.model.language_model))
        return self._decoder

    def stream(self, request: GenerationRequest, settings: DecodingSettings) -> Iterator[str]:
        """Yield text pieces as they are generated (one request; the chat uses this).

        Generation runs in a thread feeding the streamer. An error there (a bad setting, running
        out of memory) is raised here instead of leaving the reader waiting for ever; closing the
        iterator early (Ctrl-C in the chat) stops generation at the next token and waits for it.
        """
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
        stop = Event()
        failures: list[BaseException] = []
        kwargs = {**self._batch([request]), **self._generate_kwargs([request], settings), "streamer": streamer,
                  "stopping_criteria": StoppingCriteriaList([_StopWhenSet(stop)])}

        def run() -> None:
            try:
                self.model.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 (handed to the reading thread, which raises it)
                failures.append(exc)
                streamer.end()

        thread = Thread(target=run, daemon=True, name="affect-llm-generate")
        thread.start()
        try:
            yield from streamer
        finally:
            stop.set()
            thread.join()
        if failures:
            raise failures[0]

    def close(self) -> None:
        """Nothing to stop: the model lives in this process."""


class _StopWhenSet(StoppingCriteria):
    """Ends generation once ``event`` is set (the reader of a stream went away)."""

    def __init__(self, event: Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
