"""``affect-llm chat --model CKPT [--video V] [--audio A] [--image I]``: talk about a clip.

Inside the chat: type a question; ``/attach video=clip.mp4 audio=clip.wav`` loads another clip,
``/reset`` clears the history, ``/quit`` leaves. Replies stream as they are generated.
"""

from __future__ import annotations

import argparse

from affect_llm.cli.options import (
    add_compile_argument,
    add_evidence_argument,
    add_precision_arguments,
    check_compile_argument,
    precision_from_arguments,
    require_checkpoint,
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
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--models-dir", default=None)
    add_evidence_argument(parser)
    add_compile_argument(parser)
    add_precision_arguments(parser)
    parser.set_defaults(func=run)


def parse_attach(text: str) -> dict[str, str]:
    """``video=a.mp4 audio=b.wav`` -> ``{"video": "a.mp4", "audio": "b.wav"}``."""
    fields = {}
    for part in text.split():
        key, sep, value = part.partition("=")
        if not sep or key not in ("video", "audio", "image", "transcript"):
            raise ValueError(f"cannot read {part!r}; expected video=, audio=, image= or transcript=")
        fields[key] = value
    return fields


def _attach(pipe, fields: dict[str, str]) -> None:
    try:
        modalities = pipe.attach(**fields)
    except ValueError as error:
        print(f"[error] {error}", flush=True)
        return
    print(f"[clip attached: {', '.join(modalities) or 'no media'}]", flush=True)
    for warning in pipe.warnings:
        print(f"[note] {warning['field'] or 'clip'}: {warning['reason']}", flush=True)


def run(args: argparse.Namespace) -> int:
    import readline  # noqa: F401  (line editing, and input() then writes its prompt to stdout)
    from pathlib import Path

    from affect_llm.generation.backend import DecodingSettings
    from affect_llm.generation.pipeline import AffectPipeline

    require_checkpoint(args.model)
    check_compile_argument(args, args.model)
    pipe = AffectPipeline(args.model, DecodingSettings(max_new_tokens=args.max_new_tokens,
                                                            null_absent_evidence=args.null_absent_evidence,
                                                            guard_absent_explanation=args.guard_absent_explanation,
                                                            compile=args.compile),
                          Path(args.models_dir) if args.models_dir else None,
                          precision=precision_from_arguments(args, args.model))
    clip = {k: getattr(args, k) for k in ("video", "audio", "image", "transcript") if getattr(args, k)}
    if clip:
        _attach(pipe, clip)
    print(f"affect-llm chat ({args.model}). {HELP}", flush=True)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            return 0
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
        else:
            print("model> ", end="", flush=True)
            for piece in pipe.stream(line):
                print(piece, end="", flush=True)
            print(flush=True)
