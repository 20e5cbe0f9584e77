"""Generation backends behind one interface: HF ``generate`` (default) and vLLM.

A request is a chat (with media placeholders) plus the encoder features of its clip; a backend
returns the generated text of each request, in order. Decoding is greedy unless ``do_sample``,
and sampling is seeded, so a rerun gives the same text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers import TextIteratorStreamer

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
    """

    max_new_tokens: int = 160
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class GenerationRequest:
    messages: list[dict[str, str]]
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class GenerationBackend(Protocol):
    """What ``explain``, ``chat`` and the pipeline need from a backend."""

    name: str

    def generate(self, requests: list[GenerationRequest], settings: DecodingSettings) -> list[str]: ...


class HFBackend:
    """Batched ``generate`` of the composite model with left padding.

    Args:
        model: The loaded model (LoRA attached or merged).
        processor: Its processor.
    """

    name = "hf"

    def __init__(self, model: AffectForConditionalGeneration, processor: AffectProcessor) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = next(model.parameters()).device

    def _batch(self, requests: list[GenerationRequest]) -> dict[str, torch.Tensor]:
        items = [{**self.processor.encode_text(r.messages), **r.features} for r in requests]
        batch = self.processor.collate(items, padding_side="left")
        return {k: v.to(self.device) for k, v in batch.items()}

    def _generate_kwargs(self, settings: DecodingSettings) -> dict:
        tokenizer = self.processor.tokenizer
        kwargs = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample,
                  "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
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
        output = self.model.generate(**self._batch(requests), **self._generate_kwargs(settings))
        return self.processor.tokenizer.batch_decode(output, skip_special_tokens=True)

    def stream(self, request: GenerationRequest, settings: DecodingSettings) -> Iterator[str]:
        """Yield text pieces as they are generated (one request; the chat uses this)."""
        from threading import Thread

        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
        kwargs = {**self._batch([request]), **self._generate_kwargs(settings), "streamer": streamer}
        thread = Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        thread.start()
        yield from streamer
        thread.join()


def load_backend(name: str, checkpoint: str, models_dir=None, precision=None, **options) -> GenerationBackend:
    """Build a backend by name from a checkpoint folder.

    Args:
        precision: How to hold the weights (:class:`affect_llm.precision.Precision`); None follows
            what the checkpoint records.
    """
    if name == "hf":
        from affect_llm.modeling.checkpoint import load_checkpoint

        model, processor = load_checkpoint(checkpoint, models_dir, precision=precision)
        if torch.cuda.is_available():
            model.to("cuda")
        return HFBackend(model, processor)
    if name == "vllm":
        from affect_llm.generation.vllm_backend import VLLMBackend

        return VLLMBackend(checkpoint, models_dir=models_dir, precision=precision, **options)
    raise ValueError(f"unknown backend {name!r}: expected 'hf' or 'vllm'")
