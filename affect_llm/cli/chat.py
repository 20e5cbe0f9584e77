"""``affect-llm chat --model CKPT [--video V] [--audio A] [--image I]``: talk about a clip.

Inside the chat: type a question; ``/attach video=clip.mp4 audio=clip.wav`` loads another clip,
``/reset`` clears the history, ``/quit`` leaves. Replies stream as they are generated.
"""

from __future__ import annotations

import argparse
import re

from affect_llm.cli.errors import UsageError
from affect_llm.cli.options import (
    add_compile_argument,
    add_evidence_argument,
    add_precision_arguments,
    add_sampling_arguments,
    check_compile_argument,
    positive_int,
    precision_from_arguments,
    require_checkpoint,
    sampling_from_arguments,
)

HELP = "commands: /attach video=PATH audio=PATH image=PATH transcript=TEXT | /reset | /help | /quit"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("chat", help="interactive conversation about a clip", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="runs/embedded/final", help="checkpoint folder")
    parser.add_argument("--video")
    parser.add_argument("--audio")
    parser.add_argument("--image")
    parser.add_argument("--transcript")
    parser.add_argument("--max-new-tokens", type=positive_int, default=160)
    add_sampling_arguments(parser, seed_default=None,
                           seed_help="with --sample: seed of every answer's draws, so that the same conversation "
                                     "gets the same answers (default: each answer samples anew)")
    parser.add_argument("--models-dir", default=None)
    add_evidence_argument(parser)
    add_compile_argument(parser, ahead="chat")
    add_precision_arguments(parser)
    parser.set_defaults(func=run)


ATTACH_FIELDS = ("video", "audio", "image", "transcript")
_FIELD_START = re.compile(r"(?:^|\s)(" + "|".join(ATTACH_FIELDS) + r")=")


def parse_attach(text: str) -> dict[str, str]:
    """``video=a.mp4 transcript=I am fine`` -> ``{"video": "a.mp4", "transcript": "I am fine"}``.

    A value runs up to the next ``field=``, so a transcript (or a path) may hold spaces; quotes
    around a value are dropped. A path followed by a word of the form ``name=`` with an unknown name
    is refused, since that is a mistyped field far more often than a file name.
    """
    starts = list(_FIELD_START.finditer(text))
    head = text[: starts[0].start()] if starts else text
    if head.strip() or not starts:
        raise ValueError(f"cannot read {head.strip() or text.strip()!r}; expected "
                         "video=, audio=, image= or transcript=")
    fields = {}
    for start, following in zip(starts, [*starts[1:], None], strict=True):
        value = text[start.end(): following.start() if following else len(text)].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        stray = next((word for word in value.split()[1:] if re.fullmatch(r"\w+=.*", word)), None)
        if start.group(1) != "transcript" and stray:
            raise ValueError(f"cannot read {stray!r}; expected video=, audio=, image= or transcript=")
        if start.group(1) != "transcript" and not value:
            raise ValueError(f"{start.group(1)}= names no file")
        fields[start.group(1)] = value
    return fields


def _announce(pipe, modalities: list[str]) -> None:
    # The words are a channel too: say that the model has them, or that it has none.
    words = "words" if (getattr(pipe, "transcript", None) or "").strip() else "no words"
    print(f"[clip attached: {', '.join(modalities) or 'no media'}; {words}]", flush=True)
    for warning in pipe.warnings:
        print(f"[note] {warning['field'] or 'clip'}: {warning['reason']}", flush=True)


def _attach(pipe, fields: dict[str, str]) -> None:
    """Attach another clip; a refused one is reported and the chat keeps the clip it had."""
    try:
        modalities = pipe.attach(**fields)
    except ValueError as error:
        print(f"[error] {error}; the previous clip stays attached", flush=True)
        return
    _announce(pipe, modalities)


def _reply(pipe, question: str, fresh_seed: bool = False) -> None:
    """Stream one answer. Ctrl-C stops the answer, not the chat; a conversation past the model's
    context is refused and the chat goes on. ``fresh_seed``: sampling draws a new seed for this answer."""
    import dataclasses

    from affect_llm.generation.backend import seed_or_fresh
    from affect_llm.generation.pipeline import ContextLengthError

    if fresh_seed:
        pipe.decoding = dataclasses.replace(pipe.decoding, seed=seed_or_fresh(None))
    try:
        pieces = pipe.stream(question)
        print("model> ", end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print(flush=True)
    except ContextLengthError as error:
        print(f"[error] {error}: /reset, or attach a shorter transcript", flush=True)
    except KeyboardInterrupt:
        print("\n[stopped; the answer is not kept in the history]", flush=True)


def run(args: argparse.Namespace) -> int:
    import readline  # noqa: F401  (line editing, and input() then writes its prompt to stdout)
    from pathlib import Path

    from affect_llm.generation.backend import DecodingSettings
    from affect_llm.generation.pipeline import AffectPipeline

    require_checkpoint(args.model)
    check_compile_argument(args, args.model)
    decoding = DecodingSettings(max_new_tokens=args.max_new_tokens, **sampling_from_arguments(args),
                                null_absent_evidence=args.null_absent_evidence,
                                guard_absent_explanation=args.guard_absent_explanation, compile=args.compile,
                                draft_tokens=args.draft_tokens)
    pipe = AffectPipeline(args.model, decoding,
                          Path(args.models_dir) if args.models_dir else None,
                          precision=precision_from_arguments(args, args.model))
    clip = {k: getattr(args, k) for k in ATTACH_FIELDS if getattr(args, k)}
    if clip:
        try:
            modalities = pipe.attach(**clip)
        except ValueError as error:
            # The clip named on the command line is the chat's subject: without it there is nothing to ask.
            raise UsageError(str(error)) from error
        _announce(pipe, modalities)
    if args.compile:
        # Before the first turn: otherwise its answer would stop for the compile, and again at its first drafts.
        print("[compiling the decoding step before the first turn: minutes on a CPU]", flush=True)
        pipe.compile_ahead()
    print(f"affect-llm chat ({args.model}). {HELP}", flush=True)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
        except KeyboardInterrupt:
            # As in a shell: Ctrl-C drops the line being typed; /quit or Ctrl-D ends the chat.
            print("\n[/quit or Ctrl-D ends the chat]", flush=True)
            continue
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return 0
        if line == "/help":
            print(HELP, flush=True)
        elif line == "/reset":
            pipe.messages = []
            print("[history cleared]", flush=True)
        elif line.startswith("/attach"):
            try:
                _attach(pipe, parse_attach(line[len("/attach"):]))
            except ValueError as error:
                print(f"[error] {error}", flush=True)
        elif re.fullmatch(r"/[A-Za-z]\w*", line.split()[0]):
            # A mistyped command (/atach, /clear) would otherwise reach the model as a question.
            print(f"[error] unknown command {line.split()[0]}; {HELP}", flush=True)
        else:
            _reply(pipe, line, fresh_seed=args.sample and args.seed is None)
