"""``AffectProcessor``: chat prompts with media placeholders, token expansion and label masking.

The processor owns text; the model owns tensors. A prompt names each media item with ``<audio>``,
``<video>`` or ``<face>``; the processor expands each into exactly ``N`` special tokens (``N`` from
the model config) so the model's placeholder count always matches its projected tokens. For
training it appends the answer and masks every label but the answer's tokens.

Shape letters: B batch, L tokens, K frames, T steps, D width.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from affect_llm.configuration import MODALITIES
from affect_llm.processing.media_inputs import (
    AudioInputBuilder,
    MediaInputSettings,
    prepare_faces,
    prepare_frames,
)
from affect_llm.prompts import PromptFile, load_prompt

PLACEHOLDERS = {m: f"<{m}>" for m in MODALITIES}
MEDIA_TOKENS = {m: f"<|{m}|>" for m in MODALITIES}
IGNORE_INDEX = -100
PROCESSOR_CONFIG = "processor_config.json"

# A plain ChatML template for tokenizers that ship none (tiny test tokenizers).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class AffectProcessor:
    """Turns (messages, media, answer) into model inputs; one instance for every entry point.

    Args:
        tokenizer: The LLM's tokenizer; media tokens are added to it if missing.
        num_tokens: Tokens per media item by modality (must equal the model config's budgets).
        settings: How raw media become encoder inputs.
        prompt: The versioned task prompt file (defaults to ``prompts/tasks`` latest).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        num_tokens: dict[str, int],
        settings: MediaInputSettings | None = None,
        prompt: PromptFile | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.num_tokens = dict(num_tokens)
        self.settings = settings or MediaInputSettings()
        self.prompt = prompt or load_prompt("tasks")
        missing = [tok for tok in MEDIA_TOKENS.values() if tok not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if not tokenizer.chat_template:
            tokenizer.chat_template = CHATML_TEMPLATE
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._audio_builder: AudioInputBuilder | None = None

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
    ) -> list[dict[str, str]]:
        """A chat for one sample: system prompt, then the media placeholders, transcript and instruction."""
        tasks = self.prompt["tasks"]
        if task not in tasks and question is None:
            raise ValueError(f"unknown task {task!r} in prompt {self.prompt.ref}; tasks: {sorted(tasks)}")
        parts = [PLACEHOLDERS[m] for m in MODALITIES if m in modalities]
        if transcript:
            parts.append(self.prompt["transcript_template"].format(transcript=transcript))
        parts.append(question if question is not None else tasks[task]["instruction"].strip())
        return [
            {"role": "system", "content": self.prompt["system"].strip()},
            {"role": "user", "content": "\n".join(parts)},
        ]

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
    ) -> dict[str, torch.Tensor]:
        """Raw media of one item -> encoder inputs (``audio_values``, ``video_values``, ``face_values``)."""
        out: dict[str, torch.Tensor] = {}
        if audio is not None and self.num_tokens.get("audio"):
            if self._audio_builder is None:
                self._audio_builder = AudioInputBuilder(self.settings)
            out["audio_values"], out["audio_attention_mask"] = self._audio_builder(audio)
        if video is not None and self.num_tokens.get("video"):
            out["video_values"] = prepare_frames(
                video, self.settings.video_image_size, self.settings.video_mean, self.settings.video_std
            )
        if face is not None and self.num_tokens.get("face"):
            out["face_values"] = prepare_faces(face, self.settings.face_image_size, self.settings.face_channels)
        return out

    # -- batching -------------------------------------------------------------------------------------
    def collate(self, items: Sequence[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad token ids (and labels) and stack per-modality media of the items that have them.

        Items carry ``input_ids`` (+ ``labels``) and, per modality, either encoder inputs
        (``m_values``, ``m_attention_mask``) or cached features (``m_features``, ``m_feature_mask``).
        Media are stacked in batch order, which is the order ``masked_scatter`` fills placeholders.
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
        for key in sorted({k for item in items for k in item if k.startswith(MODALITIES)}):
            tensors = [item[key] for item in items if key in item]
            batch[key] = pad_and_stack(tensors, fill=False if tensors[0].dtype == torch.bool else 0.0)
        return batch

    def __call__(
        self,
        messages_batch: Sequence[list[dict[str, str]]],
        media_batch: Sequence[dict[str, torch.Tensor]] | None = None,
        answers: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode and collate a batch: left padding for generation, right padding with answers."""
        media_batch = media_batch or [{} for _ in messages_batch]
        items = []
        for i, messages in enumerate(messages_batch):
            item = self.encode_text(messages, answers[i] if answers is not None else None)
            items.append({**item, **media_batch[i]})
        return self.collate(items, padding_side="right" if answers is not None else "left")

    # -- persistence ----------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out_dir)
        config = {
            "num_tokens": self.num_tokens,
            "settings": self.settings.to_dict(),
            "prompt": {"name": self.prompt.name, "version": self.prompt.version, "ref": self.prompt.ref},
        }
        (out_dir / PROCESSOR_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> AffectProcessor:
        path = Path(path)
        config_path = path / PROCESSOR_CONFIG
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no processor config (is {path} an affect-llm checkpoint?)")
        config = json.loads(config_path.read_text())
        prompt = load_prompt(config["prompt"]["name"], config["prompt"]["version"])
        if prompt.ref != config["prompt"]["ref"]:
            raise ValueError(
                f"{config_path}: saved with prompt {config['prompt']['ref']} but the prompt file now is {prompt.ref}"
            )
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(tokenizer, config["num_tokens"], MediaInputSettings(**config["settings"]), prompt)


def pad_and_stack(tensors: Sequence[torch.Tensor], fill: float | bool = 0.0) -> torch.Tensor:
    """Stack tensors whose first dimension (time) may differ, padding at the end with ``fill``."""
    length = max(t.shape[0] for t in tensors)
    out = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), fill)
    for i, tensor in enumerate(tensors):
        out[i, : tensor.shape[0]] = tensor
    return out
