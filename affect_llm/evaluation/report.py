"""Evaluate a results JSONL against a reference manifest and write a reproducible report.

``report.json`` has sorted keys, rounded floats and no timestamps or absolute paths, so the same
inputs give the same bytes. Only result rows whose id is in the references are scored; missing
references and stray results are counted. Unparseable answers score zero and are counted as parse
failures: they are never turned into a label.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from affect_llm.data.issues import RefusedInputError
from affect_llm.evaluation import metrics
from affect_llm.evaluation.absent_channels import score_absent_channels
from affect_llm.evaluation.judge.protocol import JUDGE_KINDS, Judge, score_all
from affect_llm.evaluation.markdown import render_markdown
from affect_llm.evaluation.plots import plot_confusion, plot_judge_histogram, plot_per_class
from affect_llm.evaluation.scoring import ScoringOptions, published_sections
from affect_llm.evaluation.unibench import Sample
from affect_llm.hashing import file_sha256
from affect_llm.labels.taxonomy import DATA_PATH, Taxonomy, load_taxonomy

CI_METRICS = ("accuracy", "hit_rate", "family_f1", "fine_f1", "family_precision", "family_recall")
FLOAT_DIGITS = 6


class EvaluationError(ValueError):
    """An input file is malformed (the message names the file and line)."""



def read_jsonl(
    path: Path, required: Iterable[str] = ("id",), refused: list[dict[str, Any]] | None = None,
    line_numbers: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Rows of a JSONL file, read line by line.

    Args:
        path: The file.
        required: Fields every row must have.
        refused: When given, a bad line (not UTF-8, not JSON, not an object, a required field missing)
            is appended here as ``{"line", "reason"}`` and skipped; when None it raises.
        line_numbers: When given, each returned row's line in the file is appended here (blank and
            refused lines are not rows, so a row's position is not its line).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        EvaluationError: A bad line, when ``refused`` is None (``file:line``).
    """
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    rows = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                rows.append(_json_row(raw, required))
                if line_numbers is not None:
                    line_numbers.append(number)
            except ValueError as exc:
                if refused is None:
                    raise EvaluationError(f"{path}:{number}: {exc}") from exc
                refused.append({"line": number, "reason": str(exc)})
    return rows


def _json_row(raw: bytes, required: Iterable[str]) -> dict[str, Any]:
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from exc
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    for field in required:
        if field not in row:
            raise ValueError(f"field {field!r} missing")
    return row


def _index_refs(
    rows: list[dict[str, Any]], path: Path, refused: list[dict[str, Any]] | None = None,
    line_numbers: list[int] | None = None,
) -> dict[str, dict[str, Any]]:
    """References by id; a repeated id or bad labels are refused (recorded, or raised when ``refused`` is None).

    ``line_numbers``: each row's line in ``path`` (:func:`read_jsonl`); else rows are numbered in order.
    """
    index: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for position, row in enumerate(rows):
        number = line_numbers[position] if line_numbers is not None else position + 1
        key = str(row["id"])
        labels = row.get("labels")
        if key in index:
            reason = f"duplicate reference id {key!r} (line {number}; the first, line {first_line[key]}, is used)"
        elif labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
            reason = f"line {number}: row id {key!r} field 'labels' must be a list of strings"
        else:
            index[key] = row
            first_line[key] = number
            continue
        if refused is None:
            raise EvaluationError(f"{path}: {reason}")
        refused.append({"id": key, "line": number, "reason": reason})
    return index


def _read_inputs(
    results_path: Path, refs_path: Path, strict: bool
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """References by id, result rows, and the lines of each that were refused (raised under ``strict``)."""
    refused: dict[str, list[dict[str, Any]]] = {"refs": [], "results": []}
    ref_lines: list[int] = []
    ref_rows = read_jsonl(refs_path, refused=refused["refs"], line_numbers=ref_lines)
    refs = _index_refs(ref_rows, refs_path, refused["refs"], ref_lines)
    result_rows = read_jsonl(results_path, refused=refused["results"])
    for name, path in (("refs", refs_path), ("results", results_path)):
        if strict and refused[name]:
            first = refused[name][0]
            where = f"{path}:{first['line']}" if "line" in first else f"{path} (id {first['id']})"
            raise RefusedInputError(f"{where}: {first['reason']}")
    return refs, result_rows, refused


def predicted_labels(row: dict[str, Any]) -> list[str] | None:
    """Labels of a result row, or None when its answer did not parse."""
    status = row.get("parse_status", "ok" if isinstance(row.get("labels"), list) else "unparseable")
    labels = row.get("labels")
    if status != "ok" or not isinstance(labels, list):
        return None
    return [str(x) for x in labels]


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, FLOAT_DIGITS)
    if isinstance(value, dict):
        return {str(k): _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


def _grouped(pairs: list[tuple[dict, dict]], scores: list[metrics.SampleScores], key: Callable) -> dict:
    groups: dict[str, list[metrics.SampleScores]] = {}
    for (ref, _), score in zip(pairs, scores, strict=True):
        name = key(ref)
        if name is not None:
            groups.setdefault(str(name), []).append(score)
    return {name: metrics.aggregate(groups[name]) for name in sorted(groups)}


def _cue(ref: dict[str, Any]) -> str | None:
    extra = ref.get("extra")
    return extra.get("cue") if isinstance(extra, dict) else None


def _closed_set(pairs: list[tuple[dict, dict]], taxonomy: Taxonomy) -> tuple[dict, dict]:
    labelled = [(ref, res) for ref, res in pairs if ref.get("labels")]
    y_true = [metrics.top_family(ref["labels"], taxonomy) for ref, _ in labelled]
    y_pred = [metrics.top_family(predicted_labels(res), taxonomy) for _, res in labelled]
    order = list(taxonomy.families)
    classes = [c for c in order if c in y_true] + sorted(set(y_true) - set(order))
    scores = metrics.classification_scores(y_true, y_pred)
    return scores, metrics.confusion_matrix(y_true, y_pred, classes)


def _sentiment(pairs: list[tuple[dict, dict]], taxonomy: Taxonomy) -> dict:
    y_true, y_pred = [], []
    for ref, res in pairs:
        valence = ref.get("valence")
        if isinstance(valence, int | float) and not isinstance(valence, bool):
            truth = metrics.sentiment_of_value(float(valence))
        else:
            truth = metrics.sentiment_of_labels(ref.get("labels"), taxonomy)
        if truth != metrics.NO_PREDICTION:
            y_true.append(truth)
            y_pred.append(metrics.sentiment_of_labels(predicted_labels(res), taxonomy))
    scores = metrics.classification_scores(y_true, y_pred)
    return {"waf": scores["waf"], "war": scores["war"], "count": len(y_true)}


def _judge_texts(ref: dict, res: dict, kind: str) -> tuple[str, str] | None:
    """(reference, prediction) texts for one judge kind; None when the reference lacks them.

    An unparseable answer is judged as an empty prediction (the judges score that 1).
    """
    parsed = predicted_labels(res) is not None
    if kind == "clue":
        if not ref.get("explanation"):
            return None
        prediction = str(res.get("explanation") or "") if parsed else ""
        return str(ref["explanation"]), prediction
    if not ref.get("labels"):
        return None
    return ", ".join(ref["labels"]), ", ".join(predicted_labels(res) or [])


def _run_judge(judge: Judge, pairs: list[tuple[dict, dict]]) -> tuple[dict, dict[str, list[float]]]:
    kinds: dict[str, Any] = {}
    values: dict[str, list[float]] = {}
    for kind in JUDGE_KINDS:
        items = [(*texts, kind) for ref, res in pairs if (texts := _judge_texts(ref, res, kind)) is not None]
        results = score_all(judge, items)
        scored = [float(r.score) for r in results if r.score is not None]
        failed = sum(r.score is None for r in results)
        cached = sum(r.cached for r in results)
        mean = sum(scored) / len(scored) if scored else None
        kinds[kind] = {"mean": mean, "scored": len(scored), "failed": failed, "cached": cached}
        values[kind] = scored
    histogram = {k: dict(sorted(Counter(str(round(v)) for v in vs).items())) for k, vs in values.items()}
    return {"identity": judge.identity, "kinds": kinds, "histogram": histogram}, values


def _samples(pairs: list[tuple[dict, dict]]) -> list[Sample]:
    samples = []
    for ref, res in pairs:
        valence = ref.get("valence")
        numeric = isinstance(valence, int | float) and not isinstance(valence, bool)
        samples.append(
            Sample(
                source=str(ref.get("source") or "unnamed"),
                labels=list(ref.get("labels") or []),
                valence=float(valence) if numeric else None,
                predicted=predicted_labels(res),
            )
        )
    return samples


def _write_figures(out_dir: Path, per_class: dict, confusion: dict, judge_values: dict | None) -> list[str]:
    names = ["confusion_matrix.png", "per_class.png"]
    plot_confusion(confusion, out_dir / names[0])
    plot_per_class(per_class, out_dir / names[1])
    if judge_values is not None:
        names.append("judge_histogram.png")
        plot_judge_histogram(judge_values, out_dir / names[2])
    return names


def evaluate(
    results_path: str | Path,
    refs_path: str | Path,
    out_dir: str | Path,
    judge: Judge | None = None,
    seed: int = 0,
    scoring: ScoringOptions | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Score results against references; write ``report.json``, ``report.md`` and PNG figures.

    A bad line of either file (not JSON, no id, a repeated reference id, labels that are not strings)
    is left out and listed in the report's ``refused`` section; ``strict`` stops at the first one.

    Args:
        results_path: JSONL written by ``affect-llm explain``.
        refs_path: Reference manifest JSONL.
        out_dir: Output folder (created).
        judge: Optional judge: EMER clue/label overlap, and the published LLM groupings of the
            MER scoring modes.
        seed: Bootstrap seed.
        scoring: Scoring modes and groupings (this project's taxonomy scores only when None).
        strict: Raise at the first refused line instead of recording it.

    Returns:
        The report mapping (as written to ``report.json``).

    Raises:
        RefusedInputError: Under ``strict``, naming the first refused line.
    """
    results_path, refs_path, out_dir = Path(results_path), Path(refs_path), Path(out_dir)
    scoring = scoring or ScoringOptions()
    taxonomy = load_taxonomy()
    refs, result_rows, refused = _read_inputs(results_path, refs_path, strict)
    # A resumed run appends: the last row of an id wins.
    results = {str(row["id"]): row for row in result_rows}
    pairs = [(refs[key], results[key]) for key in refs if key in results]  # the answered clips
    if not pairs:
        # Nothing to score (an explain that wrote nothing, or results of another set): no report
        # could say which split was expected, and an empty one would read as a score.
        found = f"{len(results)} result rows, none with" if results else "no result rows with"
        raise EvaluationError(f"{results_path}: {found} an id of {refs_path}; run explain on these references first")
    # Every reference of the splits the results cover is scored, as the published scoring scripts
    # score their test sets: a clip without a result row counts as not answered (wrong), so a partial
    # results file cannot raise the scores. A manifest's other splits (explain --split test against
    # the whole manifest) are not expected.
    splits = {ref.get("split") for ref, _ in pairs}
    expected = {key: ref for key, ref in refs.items() if ref.get("split") in splits}
    every = [(ref, results.get(key) or _no_result(key)) for key, ref in expected.items()]
    # Label scores need reference labels: a sentiment-only row (MOSI, SIMS) is scored by the
    # sentiment figures, not counted as a wrong label answer.
    labelled = [(ref, res) for ref, res in every if ref.get("labels")]
    scores = [
        metrics.score_sample(ref["labels"], predicted_labels(res), taxonomy) for ref, res in labelled
    ]
    closed, confusion = _closed_set(every, taxonomy)
    judge_report, judge_values = _run_judge(judge, pairs) if judge is not None else (None, None)
    published = published_sections(_samples(every), scoring, taxonomy, judge, seed)
    try:
        absent = score_absent_channels([res for _, res in pairs], refs)
    except ValueError as exc:
        raise EvaluationError(f"{refs_path}: {exc}") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "inputs": {
            "results": {
                "name": results_path.name,
                "sha256": file_sha256(results_path),
                "rows": len(result_rows),
            },
            "refs": {"name": refs_path.name, "sha256": file_sha256(refs_path), "rows": len(refs)},
        },
        "coverage": {**_coverage(expected, results, len(result_rows)),
                     "splits": sorted(str(split) for split in splits)},
        "overall": metrics.aggregate(scores),
        "confidence_intervals": _confidence_intervals(scores, seed),
        "parse": _parse_summary(pairs),
        "closed_set": {**closed, "confusion": confusion},
        "sentiment": _sentiment(every, taxonomy),
        "by_source": _grouped(labelled, scores, lambda ref: ref.get("source")),
        "by_cue": _grouped(labelled, scores, _cue),
        "absent_channels": absent,
        "judge": judge_report,
        **published,
        "scoring": scoring.describe(),
        "prompts": sorted({str(res["prompt"]) for _, res in pairs if res.get("prompt")}),
        "models": sorted({str(res["model"]) for _, res in pairs if res.get("model")}),
        "taxonomy": f"{DATA_PATH.name}#{file_sha256(DATA_PATH)[:12]}",
        "seed": seed,
        "refused": refused,
    }
    report["figures"] = _write_figures(out_dir, closed["per_class"], confusion, judge_values)
    report = _round(report)
    text = json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    (out_dir / "report.json").write_text(text, encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    return report


def _no_result(row_id: str) -> dict[str, Any]:
    """The stand-in result of a reference clip the results file does not hold: not answered."""
    return {"id": row_id, "parse_status": "failed", "error": "no result row for this clip"}


def _coverage(refs: dict[str, dict], results: dict[str, dict], num_rows: int) -> dict[str, Any]:
    scored = sum(key in results for key in refs)
    return {
        "references": len(refs),
        "scored": scored,
        "missing": len(refs) - scored,
        "missing_ids": sorted(key for key in refs if key not in results)[:50],
        "extra": sum(key not in refs for key in results),
        "duplicate_result_rows": num_rows - len(results),
    }


def _parse_summary(pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
    """How many answers did not parse, among the rows the model answered.

    A row refused for its media or lost to a failed generation (``parse_status: failed``) has no
    answer to parse: it is counted as not answered (and scored as a wrong answer), not as a parse failure.
    """
    statuses = Counter(str(res.get("parse_status", "ok")) for _, res in pairs)
    answered = [res for _, res in pairs if res.get("parse_status") != "failed"]
    failures = sum(predicted_labels(res) is None for res in answered)
    return {
        "failure_rate": failures / len(answered) if answered else 0.0,
        "not_answered": len(pairs) - len(answered),
        "statuses": dict(sorted(statuses.items())),
    }


def _confidence_intervals(scores: list[metrics.SampleScores], seed: int) -> dict[str, list[float]]:
    # One seed per metric keeps each interval stable when metrics are added or removed.
    return {
        key: list(metrics.bootstrap_ci([_sample_value(s, key) for s in scores], seed=seed + offset))
        for offset, key in enumerate(CI_METRICS)
    }


def _sample_value(score: metrics.SampleScores, key: str) -> float:
    if key in ("accuracy", "hit_rate"):
        return float(score.correct if key == "accuracy" else score.hit)
    level, _, name = key.partition("_")
    return float(getattr(getattr(score, level), name))
