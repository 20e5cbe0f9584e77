"""An OpenAI chat about a clip -> this model's prompt.

A conversation is about one clip: at most one audio and one picture (an image or a video) across
all its messages. Clients that resend the whole history each turn resend the clip too; the same
bytes again are the same clip (and are not decoded again, see :mod:`affect_llm.serving.media`),
different bytes in the same slot are refused. The model reads the clip where it was trained to:
placeholders, transcript and question in the first user turn, after the checkpoint's own task
prompt (``processor.build_messages``); later turns follow as plain text.

The first user turn's text is the question. Without one, the model follows a task instruction
(``task``, default ``reason``: labels, explanation and per-channel evidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from affect_llm.processing.processor import AffectProcessor
from affect_llm.serving.errors import bad_request
from affect_llm.serving.schema import ChatCompletionRequest, Message, TextPart
from affect_llm.serving.sniff import MediaKind

DEFAULT_TASK = "reason"


@dataclass(frozen=True)
class MediaRef:
    """One media part of a request, not yet read.

    Attributes:
        param: Where it is in the request (``messages[0].content[1].input_audio``).
        expected: The kind the part type announces (``audio``, ``image``, ``video``).
        url: A ``data:`` or ``file://`` URL; None for ``input_audio``.
        base64: The base64 payload of an ``input_audio`` part.
    """

    param: str
    expected: MediaKind
    url: str | None = None
    base64: str | None = None

    @property
    def slot(self) -> Literal["audio", "visual"]:
        """Which part of the clip it fills: its sound, or its picture (image or video)."""
        return "audio" if self.expected == "audio" else "visual"


@dataclass
class Conversation:
    """The turns of a chat, as text, and the media parts it carries.

    Attributes:
        turns: ``(role, text)`` per message, the first a user turn, the last a user turn.
        media: Every media part, in order of appearance (repeats included).
    """

    turns: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaRef] = field(default_factory=list)

    @property
    def question(self) -> str | None:
        """The first user turn's text, None when it only carries media."""
        return self.turns[0][1] or None


def _media_ref(part: object, param: str) -> MediaRef | None:
    kind = getattr(part, "type", None)
    if kind == "input_audio":
        return MediaRef(f"{param}.input_audio", "audio", base64=part.input_audio.data)  # type: ignore[attr-defined]
    for part_type, expected in (("image_url", "image"), ("video_url", "video"), ("audio_url", "audio")):
        if kind == part_type:
            return MediaRef(f"{param}.{part_type}", expected, url=getattr(part, part_type).url)
    return None


def _message_text(message: Message, index: int, media: list[MediaRef]) -> str:
    if message.content is None or isinstance(message.content, str):
        return (message.content or "").strip()
    texts = []
    for j, part in enumerate(message.content):
        param = f"messages[{index}].content[{j}]"
        if isinstance(part, TextPart):
            texts.append(part.text.strip())
            continue
        if message.role != "user":
            raise bad_request(f"a {message.role} message carries text only, not {part.type}", param)
        ref = _media_ref(part, param)
        if ref is not None:
            media.append(ref)
    return "\n".join(t for t in texts if t)


def parse_conversation(request: ChatCompletionRequest) -> Conversation:
    """The turns and media parts of a request.

    Raises:
        ApiError: 400 for a system, developer or tool message (the checkpoint's own task prompt is
            the system prompt), a conversation that does not start and end with a user turn, or
            media in an assistant turn.
    """
    conversation = Conversation()
    for index, message in enumerate(request.messages):
        if message.role in ("system", "developer", "tool"):
            raise bad_request(f"{message.role!r} messages are not supported: the checkpoint's own task prompt "
                              "is the system prompt; send user and assistant turns", f"messages[{index}].role")
        conversation.turns.append((message.role, _message_text(message, index, conversation.media)))
    if conversation.turns[0][0] != "user":
        raise bad_request("a conversation starts with a user message", "messages[0].role")
    if conversation.turns[-1][0] != "user":
        raise bad_request("the last message must be the user's turn to answer",
                          f"messages[{len(conversation.turns) - 1}].role")
    return conversation


def resolve_task(request: ChatCompletionRequest, conversation: Conversation, processor: AffectProcessor) -> str | None:
    """The task whose instruction the model follows, or None when the user asked a question.

    Raises:
        ApiError: 400 for an unknown task, or a task given beside a question.
    """
    tasks = sorted(processor.prompt["tasks"])
    if request.task is not None and request.task not in tasks:
        raise bad_request(f"unknown task {request.task!r}; this checkpoint's prompt has {tasks}", "task")
    if conversation.question is not None:
        if request.task is not None:
            raise bad_request("the first user message already asks a question; give a question or a task, "
                              "not both", "task")
        return None
    return request.task or DEFAULT_TASK


def build_prompt(
    conversation: Conversation, processor: AffectProcessor, task: str | None, modalities: tuple[str, ...],
    transcript: str | None,
) -> list[dict[str, str]]:
    """The model's chat: task prompt, placeholders, transcript and question, then the later turns."""
    messages = processor.build_messages(task or DEFAULT_TASK, modalities, transcript=transcript,
                                        question=conversation.question)
    return messages + [{"role": role, "content": text} for role, text in conversation.turns[1:]]


def check_model_reads(conversation: Conversation, model_modalities: tuple[str, ...]) -> None:
    """Refuse media the model has no encoder for: an answer must not pretend to have seen it.

    Raises:
        ApiError: 400 naming the part and the modalities the model reads.
    """
    reads = ", ".join(model_modalities) or "no media"
    for ref in conversation.media:
        if ref.slot == "audio" and "audio" not in model_modalities:
            raise bad_request(f"this model has no audio encoder (it reads: {reads})", ref.param)
        if ref.slot == "visual" and not {"video", "face"} & set(model_modalities):
            raise bad_request(f"this model has no image or video encoder (it reads: {reads})", ref.param)

