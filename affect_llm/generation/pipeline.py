"""``AffectPipeline``: ask a checkpoint about one clip from Python, or hold a conversation about it.

    from affect_llm.generation.pipeline import AffectPipeline
    pipe = AffectPipeline("runs/embedded/final")
    answer = pipe(video="clip.mp4", audio="clip.wav")          # structured answer (reason task)
    text = pipe.ask("Why do you think so?")                      # follow-up on the same clip
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from affect_llm.data.manifest import ManifestRow
from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
from affect_llm.generation.backend import (
    DecodingSettings,
    GenerationBackend,
    GenerationRequest,
    fits_context,
    llm_context_tokens,
)
from affect_llm.labels.parse import parse_answer
from affect_llm.modeling.media import MediaInputs
from affect_llm.precision import Precision
from affect_llm.processing.processor import absent_channels


class ContextLengthError(ValueError):
    """A conversation that, with its token budget, does not fit the LLM's context."""


class AffectPipeline:
    """A loaded checkpoint plus the state of one conversation (clip features and chat history).

    Args:
        checkpoint: A checkpoint folder written by training or ``affect-llm merge``.
        decoding: Decoding settings (greedy by default).
        models_dir: Where embedded models were prepared.
        precision: How to hold the weights: a :class:`affect_llm.precision.Precision`, or a weight
            dtype name (``"bfloat16"``, as ``--dtype`` takes) applied to what the checkpoint records;
            None follows the record.
    """

    def __init__(self, checkpoint: str | Path, decoding: DecodingSettings | None = None,
                 models_dir: Path | None = None, precision: Precision | str | None = None) -> None:
        from affect_llm.generation.load import load_backend
        from affect_llm.loading.checkpoint import read_metadata, recorded_precision

        if isinstance(precision, str):
            precision = recorded_precision(checkpoint).overridden(dtype=precision)
        self.decoding = decoding or DecodingSettings()
        self.backend: GenerationBackend = load_backend("hf", checkpoint, models_dir, precision=precision,
                                                       compiled=self.decoding.compile)
        self.processor = self.backend.processor
        meta = read_metadata(checkpoint)
        self.featurizer = MediaFeaturizer(self.backend.model, self.processor, None, MediaOptions.of_checkpoint(meta))
        self.context_tokens = llm_context_tokens(self.backend.model)
        self.reset()

    def compile_ahead(self) -> bool:
        """With ``decoding.compile``, compile the decoding step now for one row (and, where greedy answers
        verify drafts, its drafted graph too), so that no answer stops partway for a compile; the chat
        calls it before its first turn. Returns whether anything compiled."""
        from affect_llm.generation.batch_stream import drafts_apply
        from affect_llm.generation.hf_backend import HFBackend

        if not self.decoding.compile or not isinstance(self.backend, HFBackend):
            return False
        draft_tokens = self.decoding.draft_tokens if drafts_apply(self.decoding) else 0
        return self.backend.compile_ahead(draft_tokens=draft_tokens, several_rows=False)

    def reset(self) -> None:
        """Forget the clip, what the media checks noted about it, and the history."""
        self.media = MediaInputs()
        self.transcript: str | None = None
        self.messages: list[dict[str, str]] = []
        self.warnings: list[dict[str, Any]] = []

    def attach(self, video: str | None = None, audio: str | None = None, image: str | None = None,
               transcript: str | None = None) -> list[str]:
        """Decode and encode a clip for the next questions; returns the modalities the model sees.

        The clip goes through the media checks every command applies
        (:mod:`affect_llm.data.validation`): an error refuses it, warnings land in :attr:`warnings`
        (a video without sound, 8 kHz audio, no face found...) and the clip is used.

        Raises:
            ValueError: If the checks refuse the media (the message names the file, field and reason);
                the clip and history attached before stay as they were.
        """
        # An empty path names no file (not the current folder) and blank words are no words, as in a
        # manifest: the prompt must not say the clip has a channel it lacks.
        video, audio, image = video or None, audio or None, image or None
        transcript = transcript if transcript and transcript.strip() else None
        if not (video or audio or image):
            self.reset()
            self.transcript = transcript
            return []
        row = ManifestRow(id="chat", video=video, audio=audio, image=image, transcript=transcript)
        features = self.featurizer([row])
        if "chat" not in features:
            self.featurizer.warnings.pop("chat", None)
            raise ValueError(self.featurizer.failures.pop("chat", "the clip could not be decoded"))
        self.reset()
        self.media = features["chat"]
        self.transcript = transcript
        self.warnings = self.featurizer.warnings.pop("chat", [])
        return list(self.media.modalities)

    def _first_turn(self, question: str | None, task: str) -> list[dict[str, str]]:
        return self.processor.build_messages(task, self.media.modalities, transcript=self.transcript, question=question)

    def _request(self, question: str | None, task: str) -> GenerationRequest:
        if not self.messages:
            messages = self._first_turn(question, task)
        else:
            messages = [*self.messages, {"role": "user", "content": question or ""}]
        return GenerationRequest(messages, self.media, absent_channels(self.media.modalities, bool(self.transcript)))

    def ask(self, question: str | None = None, task: str = "reason") -> str:
        """One turn: the model's text reply (kept in the history)."""
        return "".join(self.stream(question, task))

    def stream(self, question: str | None = None, task: str = "reason") -> Iterator[str]:
        """One turn, yielding text pieces as they are generated; the reply joins the history once
        it is complete (an interrupted one does not).

        Raises:
            ContextLengthError: At once, if the conversation and the token budget do not fit the
                LLM's context (``reset`` or a shorter transcript); nothing is generated.
        """
        request = self._request(question, task)
        self._check_context(request)
        return self._streamed(request)

    def _streamed(self, request: GenerationRequest) -> Iterator[str]:
        pieces = []
        for piece in self.backend.stream(request, self.decoding):
            pieces.append(piece)
            yield piece
        self.messages = [*request.messages, {"role": "assistant", "content": "".join(pieces)}]

    def _check_context(self, request: GenerationRequest) -> None:
        if self.context_tokens is None:
            return
        prompt_tokens = len(self.processor.encode_text(request.messages)["input_ids"])
        if not fits_context(self.context_tokens, prompt_tokens, self.decoding.max_new_tokens):
            raise ContextLengthError(
                f"this model's context is {self.context_tokens} tokens; the conversation and media take "
                f"{prompt_tokens} and the answer may take {self.decoding.max_new_tokens} more")

    def __call__(self, video: str | None = None, audio: str | None = None, image: str | None = None,
                 transcript: str | None = None, question: str | None = None, task: str = "reason") -> dict[str, Any]:
        """Attach a clip and answer one question.

        Returns:
            The parsed answer, the raw text, the parse status, and the media checks' ``warnings``.

        Raises:
            ValueError: If nothing is given (no medium, no words), or the checks refuse the media.
        """
        if not (video or audio or image) and not (transcript and transcript.strip()):
            # Without a clip the prompt would say "Has: nothing" and the model would answer anyway.
            raise ValueError("nothing to reason about: give a video, audio, image or transcript")
        self.attach(video, audio, image, transcript)
        raw = self.ask(question, task)
        parsed = parse_answer(raw, require_labels="labels" in self.processor.prompt.task_keys(task))
        answer = parsed.answer.to_dict() if parsed.ok else {"labels": None, "explanation": None, "evidence": None}
        return {**answer, "raw": raw, "parse_status": "ok" if parsed.ok else "unparseable", "error": parsed.error,
                "warnings": self.warnings}
