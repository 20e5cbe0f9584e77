"""``AffectProcessor``: chat prompts with media placeholders, token expansion and label masking.

The processor owns text; the model owns tensors. A prompt names each media item with ``<audio>``,
``<video>`` or ``<face>``; the processor expands each into exactly ``N`` special tokens (``N`` from
the model config, the one source of the budgets) so the model's placeholder count always matches its
projected tokens. For training it appends the answer and masks every label but the answer's tokens.

A ``ProcessorMixin``: ``save_pretrained`` writes the tokenizer, the feature extractor, the chat
template and the task prompt's text; ``AutoProcessor.from_pretrained(checkpoint)`` reads them back
(with ``import affect_llm``), so a checkpoint answers with the prompt it was trained on.

Shape letters: B batch, L tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoProcessor, PreTrainedTokenizerBase, ProcessorMixin

from affect_llm.configuration import MODALITIES, AffectConfig
from affect_llm.modeling.answer_loss import IGNORE_INDEX
from affect_llm.modeling.media import MediaInputs
from affect_llm.processing.feature_extraction import AffectFeatureExtractor
from affect_llm.prompts import PromptFile, load_prompt, prompt_from_text

PLACEHOLDERS = {m: f"<{m}>" for m in MODALITIES}
MEDIA_TOKENS = {m: f"<|{m}|>" for m in MODALITIES}

# A plain ChatML template for tokenizers that ship none (tiny test tokenizers).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def prompt_record(prompt: PromptFile) -> dict[str, str]:
    """What a processor saves of its task prompt: identity and the exact text."""
    return {"name": prompt.name, "version": prompt.version, "sha256": prompt.sha256, "text": prompt.text}


def channels_present(modalities: Sequence[str], has_words: bool) -> dict[str, bool]:
    """Whether the clip has each evidence channel (``audio``: a voice, ``video``: a face, ``text``: words)."""
    return {"audio": "audio" in modalities, "video": bool({"video", "face"} & set(modalities)), "text": has_words}


def absent_channels(modalities: Sequence[str], has_words: bool) -> tuple[str, ...]:
    """The evidence channels the clip does not have."""
    return tuple(channel for channel, on in channels_present(modalities, has_words).items() if not on)


class AffectProcessor(ProcessorMixin):
    """Turns (messages, media, answer) into model inputs; one instance for every entry point.

    Args:
        feature_extractor: Raw media -> encoder inputs.
        tokenizer: The LLM's tokenizer; media tokens are added to it if missing.
        chat_template: Jinja chat template (default: the tokenizer's, else plain ChatML).
        task_prompt: The task prompt as saved (``name``, ``version``, ``sha256``, ``text``);
            None takes the newest ``tasks`` prompt shipped with the package.
        num_tokens: Tokens per media item by modality: the model config's budgets (not saved here;
            ``from_pretrained`` reads them from the checkpoint's ``config.json``).
    """

    def __init__(
        self,
        feature_extractor: AffectFeatureExtractor,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: str | None = None,
        task_prompt: dict[str, str] | None = None,
        num_tokens: dict[str, int] | None = None,
    ) -> None:
        missing = [tok for tok in MEDIA_TOKENS.values() if tok not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if not tokenizer.chat_template:
            tokenizer.chat_template = chat_template or CHATML_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        super().__init__(feature_extractor, tokenizer, chat_template=chat_template or tokenizer.chat_template)
        self.task_prompt = task_prompt or prompt_record(load_prompt("tasks"))
        self.token_budgets = dict(num_tokens or {})
        self._prompt: PromptFile | None = None

    @property
    def prompt(self) -> PromptFile:
        """The task prompt this processor was saved with (its text travels with the checkpoint)."""
        if self._prompt is None:
            record = self.task_prompt
            self._prompt = prompt_from_text(record["name"], record["version"], record["text"], record["sha256"],
                                            where="processor task_prompt")
        return self._prompt

    @property
    def num_tokens(self) -> dict[str, int]:
        return self.token_budgets

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> AffectProcessor:
        """Read a saved processor; the token budgets come from the model config beside it.

        Raises:
            FileNotFoundError: If the folder has no ``config.json`` (the budgets' source).
        """
        path = Path(pretrained_model_name_or_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}/config.json: the processor takes its token budgets from the model config")
        config = AffectConfig.from_pretrained(path)
        processor = super().from_pretrained(path, **kwargs)
        processor.token_budgets = config.token_budgets()
        processor.check_token_ids(config, where=str(path))
        return processor

    def check_token_ids(self, config: AffectConfig, where: str) -> None:
        """The placeholder ids of the tokenizer must be the model's.

        Raises:
            ValueError: Naming the modality and both ids.
        """
        for modality, token_id in self.token_ids().items():
            expected = getattr(config, f"{modality}_token_id")
            if modality in config.modalities and expected != token_id:
                raise ValueError(f"{where}: the tokenizer's {MEDIA_TOKENS[modality]} is id {token_id} "
                                 f"but the model config says {expected}")

    # -- token ids ------------------------------------------------------------------------------------
    def token_ids(self) -> dict[str, int]:
        """Placeholder token id per modality, to be written into the model config."""
        return {m: self.tokenizer.convert_tokens_to_ids(tok) for m, tok in MEDIA_TOKENS.items()}

    # -- prompts --------------------------------------------------------------------------------------
    def build_messages(
        self,
        task: str,
        modalities: Sequence[str] = (),
        transcript: str | None = None,
        question: str | None = None,
        transcript_recognised: bool = False,
    ) -> list[dict[str, str]]:
        """A chat for one sample: system prompt, then the media placeholders, the channels the clip has
        (prompts that state them), the transcript and the instruction.

        Args:
            modalities: Media the clip has (``audio``, ``video``, ``face``).
            transcript_recognised: The words come from speech recognition, not from an annotation.
        """
        tasks = self.prompt["tasks"]
        if task not in tasks and question is None:
            raise ValueError(f"unknown task {task!r} in prompt {self.prompt.ref}; tasks: {sorted(tasks)}")
        parts = [PLACEHOLDERS[m] for m in MODALITIES if m in modalities]
        if "channels" in self.prompt.data:
            parts.append(self.channels_line(modalities, bool(transcript)))
        if transcript:
            key = "recognised_transcript_template" if transcript_recognised else "transcript_template"
            template = self.prompt.data.get(key) or self.prompt["transcript_template"]
            parts.append(template.format(transcript=transcript))
        parts.append(question if question is not None else tasks[task]["instruction"].strip())
        return [
            {"role": "system", "content": self.prompt["system"].strip()},
            {"role": "user", "content": "\n".join(parts)},
        ]

    def channels_line(self, modalities: Sequence[str], has_words: bool) -> str:
        """The prompt's statement of which channels (voice, face, words) the clip has and lacks."""
        spec = self.prompt["channels"]
        present = channels_present(modalities, has_words)
        names = spec["names"]
        have = ", ".join(names[c] for c, on in present.items() if on)
        missing = ", ".join(names[c] for c, on in present.items() if not on)
        if not missing:
            return spec["all_present_template"].format(present=have)
        return spec["template"].format(present=have or "nothing", missing=missing)

    def expand_placeholders(self, text: str) -> str:
        for modality, placeholder in PLACEHOLDERS.items():
            text = text.replace(placeholder, MEDIA_TOKENS[modality] * self.num_tokens.get(modality, 0))
        return text

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode_text(self, messages: list[dict[str, str]], answer: str | None = None) -> dict[str, list[int]]:
        """Token ids of the prompt (+ answer). Labels cover the answer and its end-of-turn only."""
        prompt_text = self.render(messages, add_generation_prompt=True)
        prompt_ids = self._tokenize(self.expand_placeholders(prompt_text))
        if answer is None:
            return {"input_ids": prompt_ids}
        full_text = self.render([*messages, {"role": "assistant", "content": answer}], add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template renders the prompt differently with an answer; cannot mask labels")
        answer_ids = self._tokenize(full_text[len(prompt_text):])
        return {"input_ids": prompt_ids + answer_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + answer_ids}

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- media ----------------------------------------------------------------------------------------
    def prepare_media(
        self, audio: np.ndarray | None = None, video: np.ndarray | None = None, face: np.ndarray | None = None
    ) -> MediaInputs:
        """Raw media of one clip -> encoder inputs, for the modalities this model has budgets for."""
        return self.feature_extractor(audio=audio, video=video, face=face, modalities=tuple(self.token_budgets))

    # -- batching -------------------------------------------------------------------------------------
    def collate(self, items: Sequence[dict[str, Any]], padding_side: str = "right") -> dict[str, Any]:
        """Pad token ids (and labels) and concatenate the items' media in batch order.

        Items carry ``input_ids`` (+ ``labels``) and ``media`` (:class:`MediaInputs` of one clip:
        encoder inputs or cached features). Batch order is the order ``masked_scatter`` fills
        placeholders.
        """
        pad_id = self.tokenizer.pad_token_id
        length = max(len(item["input_ids"]) for item in items)
        batch: dict[str, Any] = {
            "input_ids": torch.full((len(items), length), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(items), length), dtype=torch.long),
        }
        with_labels = all("labels" in item for item in items)
        if with_labels:
            batch["labels"] = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            span = slice(length - n, length) if padding_side == "left" else slice(0, n)
            batch["input_ids"][row, span] = torch.tensor(item["input_ids"])
            batch["attention_mask"][row, span] = 1
            if with_labels:
                batch["labels"][row, span] = torch.tensor(item["labels"])
        batch["media"] = MediaInputs.concat([item.get("media") or MediaInputs() for item in items])
        return batch

    def __call__(
        self,
        messages_batch: Sequence[list[dict[str, str]]],
        media_batch: Sequence[MediaInputs | None] | None = None,
        answers: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """Encode and collate a batch: left padding for generation, right padding with answers."""
        media_batch = media_batch or [None for _ in messages_batch]
        items = []
        for i, messages in enumerate(messages_batch):
            item = self.encode_text(messages, answers[i] if answers is not None else None)
            items.append({**item, "media": media_batch[i]})
        return self.collate(items, padding_side="right" if answers is not None else "left")


def batch_to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A collated batch with its tensors and media on ``device``."""
    return {key: value.to(device) for key, value in batch.items()}


AutoProcessor.register(AffectConfig, AffectProcessor, exist_ok=True)
