"""The ASGI application: routes, request limits, the API key, error bodies, and the web page.

Routes: ``GET /`` (the chat page, plain HTML/JS/CSS shipped in the package), ``GET /static/*``,
``GET /health``, ``GET /v1/models``, ``POST /v1/chat/completions``. Every refusal is an OpenAI
error body naming the problem and the field (``{"error": {"message", "type", "param", "code"}}``);
an unexpected failure is a 500 of the same shape, and the server goes on serving.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from affect_llm.serving.completions import ChatService
from affect_llm.serving.errors import ApiError
from affect_llm.serving.options import MB, ServeOptions
from affect_llm.serving.schema import parse_request

logger = logging.getLogger(__name__)
# Bytes of an oversized body read (and dropped) before answering 413, so the client sees the answer
# instead of a connection reset while it still sends.
DRAIN_LIMIT = 512 * MB


async def read_json_body(request: Request, limit: int) -> Any:
    """The request body as JSON.

    Raises:
        ApiError: 415 for another content type, 413 for a body over ``limit`` bytes, 400 for
            malformed JSON (with the line and column).
    """
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {content_type or 'none'!r}",
                       None, "unsupported_content_type")
    declared = int(request.headers.get("content-length") or 0)
    if declared > DRAIN_LIMIT:  # not worth reading at all
        raise ApiError(413, f"the request body is {declared / MB:.1f} MB, over the limit of {limit / MB:.1f} MB "
                            "(--max-request-mb)", None, "request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_LIMIT:
            break
    if max(size, declared) > limit:
        raise ApiError(413, f"the request body is {max(size, declared) / MB:.1f} MB, over the limit of "
                            f"{limit / MB:.1f} MB (--max-request-mb)", None, "request_too_large")
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"malformed JSON body: {error}", None, "invalid_json") from None


def _api_key_check(options: ServeOptions) -> Callable[[Request], Awaitable[None]]:
    async def check(request: Request) -> None:
        if not options.api_key:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), options.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", None,
                           "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    return check


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(ApiError(error.status_code, message).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        body = ApiError(500, f"internal error: {type(error).__name__}: {error}", None, "internal_error").body()
        return JSONResponse(body, status_code=500)


def create_app(service: ChatService, options: ServeOptions) -> FastAPI:
    """The application around a loaded :class:`ChatService`."""
    # No /docs: its page loads scripts from a CDN, and nothing this server shows is fetched from elsewhere.
    app = FastAPI(title="affect-llm", summary="OpenAI-compatible multimodal emotion reasoning",
                  docs_url=None, redoc_url=None)
    _install_error_handlers(app)
    authorised = [Depends(_api_key_check(options))]
    static = resources.files("affect_llm.serving") / "static"
    app.mount("/static", StaticFiles(packages=[("affect_llm.serving", "static")]), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": options.model_name, "backend": options.backend,
                "auth_required": bool(options.api_key), "scheduler": service.scheduler.stats.as_dict(),
                "media": service.store.stats.as_dict(), "prefix_cache": prefix_cache_stats(service.backend)}

    @app.get("/v1/models", dependencies=authorised)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(service, options)]}

    # ``path``: the default model id is the checkpoint's path, slashes included.
    @app.get("/v1/models/{model_id:path}", dependencies=authorised)
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != options.model_name:
            raise ApiError(404, f"the model {model_id!r} does not exist; this server serves {options.model_name!r}",
                           "model", "model_not_found")
        return model_card(service, options)

    @app.post("/v1/chat/completions", dependencies=authorised)
    async def chat_completions(request: Request) -> Response:  # JSON, or an event stream
        chat = parse_request(await read_json_body(request, options.max_request_bytes()))
        if chat.model != options.model_name:
            raise ApiError(404, f"model: the model {chat.model!r} does not exist; this server serves "
                                f"{options.model_name!r} (GET /v1/models)", "model", "model_not_found")
        return await service.respond(chat, request)

    return app


def model_card(service: ChatService, options: ServeOptions) -> dict[str, Any]:
    """The ``/v1/models`` entry: the OpenAI fields plus what this model reads and how it streams."""
    processor = service.processor
    return {
        "id": options.model_name, "object": "model", "created": 0, "owned_by": "affect-llm",
        "backend": options.backend, "streaming": options.streaming,
        "modalities": list(service.modalities), "prompt": processor.prompt.ref,
        "tasks": sorted(processor.prompt["tasks"]), "speech_recognition": service.store.recognizer is not None,
        "max_batch": options.max_batch, "max_tokens_limit": options.max_tokens_limit,
        "content_parts": ["text", "input_audio", "image_url", "video_url", "audio_url"],
    }


def prefix_cache_stats(backend: Any) -> dict[str, int] | None:
    """Prompt prefixes the backend keeps (the hf backend) and prompt tokens loaded from them; None
    where none are kept (``--no-prefix-caching``, the vllm backend)."""
    prefixes = getattr(backend, "prefixes", None)
    if prefixes is None:
        return None
    return {"kept": len(prefixes), "reused_tokens": prefixes.reused_tokens}
