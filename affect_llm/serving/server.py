"""Load a checkpoint into a :class:`~affect_llm.serving.completions.ChatService` and serve it with uvicorn.

The listening socket is bound before the model loads, and its URL is printed on the first line of
stdout (``affect-llm serve: http://127.0.0.1:8000``), so a caller that asked for port 0 learns the
port; ``GET /health`` answers once the model is loaded.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import TYPE_CHECKING

from affect_llm.serving.options import ServeOptions

if TYPE_CHECKING:
    from affect_llm.precision import Precision
    from affect_llm.serving.completions import ChatService


def build_service(options: ServeOptions, precision: Precision | None = None,
                  **engine_options: object) -> ChatService:
    """Load the backend, the media store (with speech recognition) and start the batching thread.

    Args:
        options: Server options.
        precision: How to hold the weights; None follows the checkpoint's record.
        **engine_options: vLLM engine options (``vllm_python``, ...).

    Raises:
        ModelNotPreparedError: If speech recognition is on and the embedded Whisper is not prepared.
    """
    from affect_llm.features.asr import ASR_MODEL, SpeechRecognizer
    from affect_llm.features.featurize import MediaFeaturizer, MediaOptions
    from affect_llm.generation.load import load_backend
    from affect_llm.loading.checkpoint import read_metadata
    from affect_llm.references import resolve_model_path
    from affect_llm.serving.completions import ChatService
    from affect_llm.serving.media import MediaLimits, MediaStore
    from affect_llm.serving.scheduler import Scheduler, hf_runner, whole_answer_runner

    # Checked before the model loads: a missing recogniser is a set-up error, not a request error.
    recognizer = SpeechRecognizer(resolve_model_path(ASR_MODEL, options.models_dir)) if options.asr else None
    backend = load_backend(options.backend, options.checkpoint, options.models_dir, precision,
                           compiled=options.compile, **engine_options)
    if not options.prefix_caching:  # the hf backend's (ServeOptions refuses it for another)
        backend.prefixes = None
    featurizer = MediaFeaturizer(backend.model, backend.processor, None,
                                 MediaOptions.of_checkpoint(read_metadata(options.checkpoint)))
    limits = MediaLimits(options.max_media_bytes(), options.allowed_media_dir)
    store = MediaStore(featurizer, recognizer, limits, max_clips=options.media_cache_clips)
    if options.compile:
        # Before /health answers: the first requests would otherwise wait for the compile.
        print("affect-llm serve: compiling the decoding step for every batch size (minutes on a CPU)",
              file=sys.stderr, flush=True)
        backend.compile_ahead(draft_tokens=options.draft_tokens)
    runner = hf_runner(backend, options.compile) if options.backend == "hf" else whole_answer_runner(backend)
    scheduler = Scheduler(runner, options.max_batch, options.batch_window_ms / 1000, options.max_queue)
    return ChatService(backend, store, scheduler, options)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(options: ServeOptions, precision: Precision | None = None, log_level: str = "info",
          **engine_options: object) -> None:
    """Bind, print the URL, load the model, and serve until SIGINT / SIGTERM."""
    import uvicorn

    from affect_llm.serving.app import create_app

    sock = bind(options.host, options.port)
    print(f"affect-llm serve: {url_of(sock)}", flush=True)
    service = build_service(options, precision, **engine_options)
    app = create_app(service, options)
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    try:
        asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))
    finally:
        service.scheduler.close()
        service.store.close()
        service.backend.close()
        sock.close()
    print("affect-llm serve: stopped", file=sys.stderr, flush=True)

