"""``affect-llm serve --model CKPT``: an OpenAI-compatible chat server with a web page, on loopback by default.

    affect-llm serve --model runs/embedded/final                  # http://127.0.0.1:8000, page at /
    affect-llm serve --model CKPT --host 0.0.0.0 --api-key KEY    # beyond this machine: a key is required
    affect-llm serve --model CKPT --allowed-media-dir /data/clips # clients may name file:// media there
    affect-llm serve --model CKPT --compile                       # compiled decoding, compiled before serving

``POST /v1/chat/completions`` takes text, ``input_audio``, ``image_url``, ``video_url`` and
``audio_url`` parts; ``GET /v1/models``; ``GET /health``.
"""

from __future__ import annotations

import argparse
import os

from affect_llm.cli.errors import UsageError
from affect_llm.cli.options import (
    add_compile_argument,
    add_engine_arguments,
    add_evidence_argument,
    add_precision_arguments,
    check_compile_argument,
    engine_options_from_arguments,
    explanation_guard_for,
    positive_int,
    precision_from_arguments,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="OpenAI-compatible chat server and web page", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder")
    parser.add_argument("--served-model-name", default=None, help="name clients send as 'model' (default: --model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (0: a free one, printed at start)")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf",
                        help="hf streams tokens as generated; vllm streams each answer in one piece")
    parser.add_argument("--api-key", default=os.environ.get("AFFECT_LLM_API_KEY"),
                        help="Bearer key required on /v1 (default $AFFECT_LLM_API_KEY); needed off loopback")
    parser.add_argument("--allowed-media-dir", default=None, help="folder file:// media may come from")
    parser.add_argument("--max-request-mb", type=float, default=64.0)
    parser.add_argument("--max-media-mb", type=float, default=32.0)
    parser.add_argument("--max-batch", type=int, default=32, help="most requests generated together")
    parser.add_argument("--batch-window-ms", type=float, default=30.0, help="how long a batch waits to fill")
    parser.add_argument("--max-queue", type=int, default=128, help="waiting requests before 503")
    parser.add_argument("--max-new-tokens", type=positive_int, default=160, help="budget of a request that names none")
    parser.add_argument("--max-tokens-limit", type=int, default=2048, help="largest budget a request may ask")
    parser.add_argument("--asr", action=argparse.BooleanOptionalAction, default=True,
                        help="recognise the words of clips sent without a transcript (embedded Whisper)")
    parser.add_argument("--prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                        help="hf backend: keep recent prompt prefixes' keys and values for later requests (a request "
                             "reuses only those of requests with its own cache_salt); --no-prefix-caching computes "
                             "every prompt whole")
    parser.add_argument("--models-dir", default=None)
    add_engine_arguments(parser)
    add_evidence_argument(parser)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_precision_arguments(parser)
    add_compile_argument(parser, ahead="server")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from affect_llm.references import ModelNotPreparedError
    from affect_llm.serving.options import ServeOptions
    from affect_llm.serving.server import serve

    # Errors are raised, not printed: the command line's one error line and its log file say them.
    if not Path(args.model).is_dir():
        raise UsageError(f"{args.model}: no such checkpoint folder; give a folder written by `affect-llm train`")
    check_compile_argument(args, args.model)
    options = ServeOptions(
        checkpoint=args.model, model_name=args.served_model_name, backend=args.backend, host=args.host,
        port=args.port, api_key=args.api_key, max_request_mb=args.max_request_mb, max_media_mb=args.max_media_mb,
        allowed_media_dir=Path(args.allowed_media_dir) if args.allowed_media_dir else None,
        max_batch=args.max_batch, batch_window_ms=args.batch_window_ms, max_queue=args.max_queue,
        default_max_tokens=args.max_new_tokens, max_tokens_limit=args.max_tokens_limit, asr=args.asr,
        null_absent_evidence=args.null_absent_evidence,
        guard_absent_explanation=explanation_guard_for(args), models_dir=Path(args.models_dir) if args.models_dir else None,
        compile=args.compile, draft_tokens=args.draft_tokens, prefix_caching=args.prefix_caching,
    )
    engine = engine_options_from_arguments(args)
    try:
        serve(options, precision_from_arguments(args, args.model), args.log_level, **engine)
    except ModelNotPreparedError as error:
        raise UsageError(f"{error} (speech recognition needs it; or pass --no-asr)") from error
    return 0
