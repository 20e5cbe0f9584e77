"""Command-line options shared by the commands that load a checkpoint (explain, chat, serve)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affect_llm.generation.absent_explanation import backend_holds_explanation_rule
from affect_llm.precision import DTYPE_NAMES

if TYPE_CHECKING:
    from affect_llm.precision import Precision


def _number(text: str, convert: type[int] | type[float], expected: str) -> Any:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a token budget, a batch size)."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (a count where 0 turns something off)."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0 (a sampling temperature)."""
    value = _number(text, float, "a number")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def probability_mass(text: str) -> float:
    """argparse type: a share of probability in (0, 1] (nucleus sampling's ``top_p``)."""
    value = _number(text, float, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 1, got {text}")
    return value


def add_sampling_arguments(parser: argparse.ArgumentParser, seed_default: int | None,
                           seed_help: str) -> None:
    """``--sample`` with ``--temperature``, ``--top-p`` and ``--seed``; without ``--sample`` decoding is
    greedy and the other three change nothing."""
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=positive_float, default=0.7,
                        help="with --sample: divides the logits (below 1 sharper, above 1 flatter; default 0.7)")
    parser.add_argument("--top-p", type=probability_mass, default=0.9,
                        help="with --sample: draw from the most likely tokens whose probabilities sum to this "
                             "(default 0.9; 1 keeps every token)")
    parser.add_argument("--seed", type=int, default=seed_default, help=seed_help)


def sampling_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The ``DecodingSettings`` fields ``add_sampling_arguments`` set (seed 0 where none was given)."""
    return {"do_sample": args.sample, "temperature": args.temperature, "top_p": args.top_p,
            "seed": args.seed if args.seed is not None else 0}


def add_evidence_argument(parser: argparse.ArgumentParser) -> None:
    """``--null-absent-evidence`` and ``--guard-absent-explanation`` (both the default) and their ``--no-...``."""
    parser.add_argument("--null-absent-evidence", action=argparse.BooleanOptionalAction, default=True,
                        help="decode the evidence of a channel the clip lacks as null (default); --no-... "
                             "keeps the model's own words, to measure how faithful the model is unaided")
    parser.add_argument("--guard-absent-explanation", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the explanation from describing a channel the clip lacks: its describing "
                             "words are forbidden there except right after a negation (default; hf backend "
                             "only); --no-... keeps the model's own words")


def explanation_guard_for(args: argparse.Namespace) -> bool:
    """Whether decoding holds the explanation rule: asked for, and an engine with a per-step hook (hf).

    vLLM's engine takes no per-step hook, so with ``--backend vllm`` the rule is off (and the answers
    record it off); a note on stderr says so when it was asked for.
    """
    import sys

    if not args.guard_absent_explanation:
        return False
    backend = getattr(args, "backend", "hf")
    if not backend_holds_explanation_rule(backend):
        print(f"note: --backend {backend} holds the evidence rule only; the explanation rule "
              "(--guard-absent-explanation) needs the hf backend's per-step hook", file=sys.stderr)
        return False
    return True


def add_compile_argument(parser: argparse.ArgumentParser, ahead: str = "") -> None:
    """``--compile``: static KV cache and a compiled decoding step (hf backend); ``ahead``: ``server`` or
    ``chat``, whose step is compiled before the first answer. ``--draft-tokens``: drafted tokens verified a
    step where one greedy answer decodes alone."""
    when = {"server": "compiled for every batch size before the server answers (minutes on a CPU)",
            "chat": "compiled before the first turn (minutes on a CPU)",
            "": "after a compile of one to a few minutes on a CPU (once more at the first other batch size "
                "or context length, and at the first step that verifies drafts)"}[ahead]
    parser.add_argument("--compile", action="store_true",
                        help=f"static KV cache and a compiled decoding step (torch.compile): same greedy "
                             f"answers, faster per token, {when}")
    parser.add_argument("--draft-tokens", type=non_negative_int, default=8, metavar="N",
                        help="where one greedy answer decodes alone (a chat, batch size 1), verify up "
                             "to N tokens drafted from earlier answers' n-grams in each step: the same answer in "
                             "fewer steps; 0: one token a step (default: 8; hf backend)")


def check_compile_argument(args: argparse.Namespace, checkpoint: str | Path) -> None:
    """Refuse ``--compile`` where transformers would skip the compile (a 4-bit LLM) or another engine decodes.

    Raises:
        UsageError: Naming the flag and what to do instead.
    """
    if not args.compile:
        return
    from affect_llm.cli.errors import UsageError
    from affect_llm.loading.checkpoint import recorded_precision

    backend = getattr(args, "backend", "hf")
    if backend != "hf":
        raise UsageError(f"--compile is for --backend hf (--backend {backend} compiles in its engine)")
    precision = precision_from_arguments(args, checkpoint) or recorded_precision(checkpoint)
    if precision.is_4bit and getattr(args, "load_in_4bit", None):
        raise UsageError("--compile with --load-in-4bit: transformers does not compile a 4-bit LLM "
                         "(bitsandbytes); drop one of the two")
    if precision.is_4bit:
        raise UsageError(f"--compile: {checkpoint} holds its LLM in 4-bit, which transformers does not compile "
                         "(bitsandbytes); drop --compile, or add --no-load-in-4bit to decode unquantized")


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--dtype`` and ``--load-in-4bit``; both default to what the checkpoint records."""
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                        help="weight dtype of the LLM (default: as the checkpoint was trained)")
    parser.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None,
                        help="hold the LLM in NF4 4-bit (bitsandbytes); default: as the checkpoint was trained")


def precision_from_arguments(args: argparse.Namespace, checkpoint: str | Path) -> Precision | None:
    """The checkpoint's recorded precision with the command-line overrides, or None when none is given."""
    if args.dtype is None and args.load_in_4bit is None:
        return None
    from affect_llm.loading.checkpoint import recorded_precision

    return recorded_precision(checkpoint).overridden(args.dtype, args.load_in_4bit)


def add_strict_argument(parser: argparse.ArgumentParser) -> None:
    """``--strict``: stop at the first refused manifest line or medium (exit code 3)."""
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first refused manifest line or media file (default: record it and go on)")


def require_checkpoint(path: str | Path, flag: str = "--model") -> Path:
    """The checkpoint folder, or a :class:`UsageError` saying what is wrong with it and what to do."""
    import json

    from affect_llm.cli.errors import UsageError

    folder = Path(path)
    hint = "give a folder written by `affect-llm train` (its final/ or a stage's best/) or `affect-llm merge`"
    if not folder.exists():
        raise UsageError(f"{flag} {folder}: no such checkpoint folder; {hint}")
    if not folder.is_dir():
        raise UsageError(f"{flag} {folder}: a file, not a checkpoint folder; {hint}")
    meta = folder / "affect_checkpoint.json"
    if not meta.is_file():
        raise UsageError(f"{flag} {folder}: not an affect-llm checkpoint (no affect_checkpoint.json); {hint}")
    try:
        json.loads(meta.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"{meta}: unreadable ({error}); the checkpoint is damaged: copy it again or "
                         "retrain") from error
    return folder


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--vllm-python`` and ``--engine-arg KEY=VALUE`` (repeatable): options of the vLLM engine."""
    parser.add_argument("--vllm-python", default=None,
                        help="interpreter of a separate vLLM environment (e.g. .venv-vllm/bin/python)")
    parser.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="a vllm.LLM argument for --backend vllm, e.g. gpu_memory_utilization=0.9, "
                             "max_model_len=4096, tensor_parallel_size=2, enforce_eager=true, dtype=bfloat16 "
                             "(repeatable; values are read as JSON when they parse, else as text)")


def engine_options_from_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options ``--vllm-python`` and ``--engine-arg`` name; empty for the hf backend.

    Raises:
        UsageError: For an argument without ``=``, a key given twice, or engine options with ``--backend hf``.
    """
    import json

    from affect_llm.cli.errors import UsageError

    options: dict[str, Any] = {}
    for text in args.engine_arg:
        key, sep, value = text.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UsageError(f"--engine-arg {text!r}: expected KEY=VALUE, e.g. gpu_memory_utilization=0.9")
        if key in options:
            raise UsageError(f"--engine-arg {key} is given twice")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value  # plain text: dtype=bfloat16, quantization=awq
    if args.vllm_python:
        options["vllm_python"] = args.vllm_python
    if options and args.backend != "vllm":
        raise UsageError(f"--engine-arg and --vllm-python need --backend vllm (got --backend {args.backend})")
    if args.backend == "vllm":
        _engine_precision(args, options)
    return options


def _engine_precision(args: argparse.Namespace, options: dict[str, Any]) -> None:
    """vLLM decodes in its engine's dtype, not the one the checkpoint loads in: ``--dtype`` goes to the
    engine too, and 4-bit NF4 (a bitsandbytes hold of the HF backend) is vLLM's own option."""
    from affect_llm.cli.errors import UsageError

    if getattr(args, "load_in_4bit", None):
        raise UsageError("--load-in-4bit holds the hf backend's LLM in NF4; with --backend vllm the engine "
                         "quantizes: --engine-arg quantization=bitsandbytes (or a checkpoint quantized for vLLM)")
    dtype = getattr(args, "dtype", None)
    if dtype is None:
        return
    if options.get("dtype", dtype) != dtype:
        raise UsageError(f"--dtype {dtype} and --engine-arg dtype={options['dtype']} disagree; give one")
    options["dtype"] = dtype
