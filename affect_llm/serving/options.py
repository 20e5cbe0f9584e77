"""``ServeOptions``: everything ``affect-llm serve`` can be told, checked once, with safe defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


@dataclass
class ServeOptions:
    """How the server runs.

    Attributes:
        checkpoint: The checkpoint folder served.
        model_name: The name clients send as ``model`` (default: ``checkpoint`` as given, as vLLM does).
        backend: ``hf`` (tokens stream as generated) or ``vllm`` (whole answers).
        host / port: Where to listen; loopback unless told otherwise.
        api_key: Bearer key every ``/v1`` request must carry; required to bind a non-loopback host.
        max_request_mb: Largest request body (413 beyond it).
        max_media_mb: Largest single medium, decoded from base64 or read from a file (413 beyond it).
        allowed_media_dir: Folder ``file://`` media may come from; None refuses every local path.
        max_batch: Most requests generated together.
        batch_window_ms: How long the first request of a batch waits for others.
        max_queue: Most requests waiting for a batch (503 with ``Retry-After`` beyond it).
        default_max_tokens: Token budget of a request that names none.
        max_tokens_limit: Largest budget a request may ask for.
        asr: Recognise the words of clips sent without a transcript.
        null_absent_evidence: Decode the evidence of a channel the clip lacks as ``null``.
        guard_absent_explanation: Keep the explanation from describing a channel the clip lacks
            (the hf backend; vLLM takes no per-step hook).
        media_cache_clips: Decoded clips kept in memory (by content hash).
        models_dir: Where embedded models were prepared.
        compile: Decode through a compiled step over a static cache (the hf backend), compiled for
            every batch size before the server answers (:meth:`HFBackend.compile_ahead
            <affect_llm.generation.hf_backend.HFBackend.compile_ahead>`).
        draft_tokens: Drafted tokens verified a step where one greedy answer decodes alone
            (``DecodingSettings.draft_tokens``), compiled or not; 0: one token a step.
        prefix_caching: Keep recent prompt prefixes for later requests (the hf backend's
            :class:`~affect_llm.generation.prefix_cache.PrefixCache`; a request reuses those of requests
            with its own ``cache_salt``); False computes every prompt whole.
    """

    checkpoint: str
    model_name: str | None = None
    backend: str = "hf"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_request_mb: float = 64.0
    max_media_mb: float = 32.0
    allowed_media_dir: Path | None = None
    null_absent_evidence: bool = True
    guard_absent_explanation: bool = True
    max_batch: int = 32
    batch_window_ms: float = 30.0
    max_queue: int = 128
    default_max_tokens: int = 160
    max_tokens_limit: int = 2048
    asr: bool = True
    media_cache_clips: int = 128
    models_dir: Path | None = None
    compile: bool = False
    draft_tokens: int = 8
    prefix_caching: bool = True

    def __post_init__(self) -> None:
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend={self.backend!r}: expected 'hf' or 'vllm'")
        if not is_loopback(self.host) and not self.api_key:
            raise ValueError(f"host={self.host}: binding beyond this machine needs --api-key (or AFFECT_LLM_API_KEY), "
                             "so that nobody else can use the server without it")
        if self.compile and self.backend != "hf":
            raise ValueError(f"compile is for the hf backend (the {self.backend} backend compiles in its engine)")
        if not self.prefix_caching and self.backend != "hf":
            raise ValueError(f"prefix_caching=False (--no-prefix-caching) is for the hf backend (the {self.backend} "
                             "backend caches in its engine: --engine-arg enable_prefix_caching=false)")
        if self.allowed_media_dir is not None and not Path(self.allowed_media_dir).is_dir():
            raise ValueError(f"allowed_media_dir={self.allowed_media_dir}: no such folder")
        for name in ("max_batch", "max_queue", "default_max_tokens", "max_tokens_limit", "media_cache_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.draft_tokens < 0:
            raise ValueError(f"draft_tokens must be >= 0, got {self.draft_tokens}")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(f"default_max_tokens={self.default_max_tokens} is over max_tokens_limit={self.max_tokens_limit}")
        for name in ("max_request_mb", "max_media_mb", "batch_window_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self.model_name = self.model_name or self.checkpoint

    @property
    def streaming(self) -> str:
        """How answers stream: ``per token`` (hf) or ``per answer`` (vLLM's offline engine)."""
        return "per token" if self.backend == "hf" else "per answer"

    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * MB)

    def max_media_bytes(self) -> int:
        return int(self.max_media_mb * MB)
