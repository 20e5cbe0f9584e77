"""Judge run locally with a transformers causal LM from a folder (greedy decoding, no hub access)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from affect_llm.evaluation.judge.cache import JudgeCache
from affect_llm.evaluation.judge.chat import ChatJudge
from affect_llm.evaluation.judge.protocol import JudgeError


class HFLocalJudge(ChatJudge):
    """Greedy chat judge from a local HF model folder.

    Args:
        model_path: Folder with ``config.json``, weights and a tokenizer with a chat template.
        max_new_tokens: Generation budget for the JSON answer.
        cache: Optional disk cache.
        prompt_version: Judge prompt version.
        max_retries: Retries after a malformed answer (greedy decoding repeats itself, so 0 is typical).
    """

    backend = "hf"

    def __init__(
        self,
        model_path: str | Path,
        max_new_tokens: int = 32,
        cache: JudgeCache | None = None,
        prompt_version: str = "v1",
        max_retries: int = 0,
    ) -> None:
        super().__init__(prompt_version, cache, max_retries, backoff_s=0.0)
        self.model_path = Path(model_path)
        config = self.model_path / "config.json"
        if not config.is_file():
            raise FileNotFoundError(f"judge model folder {self.model_path} has no config.json")
        # Config plus each weight file's name, size and modification time stand in for the weights in
        # the identity: cheap for a 7B judge, and two fine-tunes of one architecture saved as
        # .../final differ in their times (a copy that changes them only costs a fresh judgement).
        stamps = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.model_path.iterdir()
                        if p.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
        self._digest = hashlib.sha256(config.read_bytes() + json.dumps(stamps).encode()).hexdigest()[:12]
        self.max_new_tokens = max_new_tokens
        self.score_max_tokens = max_new_tokens
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def model_name(self) -> str:
        return f"{self.model_path.name}#{self._digest}"

    def decoding_for(self, max_tokens: int, constrained: bool) -> dict[str, Any]:
        # No constrained decoding here: the schema only guides the check of the answer.
        return {"do_sample": False, "max_new_tokens": max_tokens}

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._model = AutoModelForCausalLM.from_pretrained(self.model_path).eval()
        if not getattr(self._tokenizer, "chat_template", None):
            raise JudgeError(f"judge tokenizer in {self.model_path} has no chat template")

    def _generate(self, system: str, user: str, schema: dict[str, Any] | None, max_tokens: int) -> str:
        import torch

        if self._model is None:
            self._load()
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        inputs = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = self._model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max_tokens,
                pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]  # (L_new,)
        return self._tokenizer.decode(new_tokens, skip_special_tokens=True)
