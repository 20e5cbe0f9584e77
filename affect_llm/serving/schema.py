"""The chat-completion request as typed data (the OpenAI schema, plus a few named extensions).

Content parts follow the OpenAI and vLLM servers: ``text``, ``input_audio`` (base64 data and a
format), ``image_url``, ``video_url`` and ``audio_url`` (``data:`` URLs, or ``file://`` paths under
the server's allowed media folder). Extensions (``extra_body`` in the official client): ``task``
(which task instruction the model follows), ``transcript`` (the words of the clip, when the client
has them) and ``ignore_eos`` (decode the whole budget, for load tests).

Unknown fields are refused, not ignored: a client that sends ``stop`` or ``tools`` learns that this
server does not honour them instead of getting an answer that silently did not.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from affect_llm.serving.errors import ApiError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class InputAudio(_Strict):
    data: str = Field(description="base64 audio bytes")
    format: str | None = Field(default=None, description="claimed format (wav, mp3, flac); the bytes decide")


class InputAudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class MediaUrl(_Strict):
    url: str = Field(description="data: URL, or file:// path under --allowed-media-dir")
    detail: str | None = None


class ImageUrlPart(_Strict):
    type: Literal["image_url"]
    image_url: MediaUrl


class VideoUrlPart(_Strict):
    type: Literal["video_url"]
    video_url: MediaUrl


class AudioUrlPart(_Strict):
    type: Literal["audio_url"]
    audio_url: MediaUrl


ContentPart = Annotated[
    TextPart | InputAudioPart | ImageUrlPart | VideoUrlPart | AudioUrlPart, Field(discriminator="type")
]


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ResponseFormat(_Strict):
    # ``json_schema`` is refused: answers follow the task's own JSON (labels, explanation, evidence),
    # not a schema the client brings.
    type: Literal["text", "json_object"]


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions`` body."""

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    # OpenAI's seed is a 64-bit integer; torch's generators take no more.
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    n: Literal[1] = 1
    response_format: ResponseFormat | None = None
    user: str | None = None
    # Extensions.
    task: str | None = Field(default=None, description="task instruction to follow (reason, perceive, evidence)")
    transcript: str | None = Field(default=None, description="the words spoken in the clip, when known")
    ignore_eos: bool = False
    # As vLLM's: kept prompt prefixes and drafts are shared only between requests with the same salt.
    cache_salt: str | None = Field(default=None, min_length=1,
                                   description="reuse computed prompt prefixes only between requests with this salt")

    @property
    def wants_json(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"


def field_path(location: tuple[Any, ...]) -> str:
    """Pydantic's ``('messages', 0, 'content', 1, 'image_url')`` -> ``messages[0].content[1].image_url``.

    Union branch names that pydantic inserts (``str``, ``list[...]``) and the repeated tag of a
    tagged union (``image_url``, ``image_url``) are dropped.
    """
    path, previous = "", None
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != previous and not ("[" in part or part in ("str", "int", "float", "bool", "none")):
            path += f".{part}" if path else part
        previous = part
    return path


def parse_request(data: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body.

    Raises:
        ApiError: 400 naming the first offending field and what is wrong with it.
    """
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}", None, "invalid_body")
    # null is the default in OpenAI's schema ("stop": null, "n": null, "stream": null): generic clients
    # send it for every field they leave unset.
    data = {key: value for key, value in data.items() if value is not None}
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as error:
        # Of a union's failed branches, the deepest error is the one that names the real problem.
        first = max(error.errors(), key=lambda item: len(item["loc"]))
        param = field_path(first["loc"])
        value = first.get("input")
        message = "this server does not support this field" if first["type"] == "extra_forbidden" else first["msg"]
        shown = "" if first["type"] == "missing" or isinstance(value, dict | list) else f" (got {value!r:.60})"
        raise ApiError(400, f"{param or 'body'}: {message}{shown}", param or None, "invalid_field") from None
