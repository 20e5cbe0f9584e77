"""The quickstart's overview page: per-cue held-out accuracy, EMER-style scores, examples beside cues.

It reads what ``affect-llm eval`` wrote (``report.json`` and its plots) for the synthetic held-out
set and the real clips, plus the results and manifests, and writes one Markdown page linking the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from affect_llm.evaluation.absent_channels import CHANNEL_KEYS, score_absent_channels
from affect_llm.evaluation.report import EvaluationError, read_jsonl
from affect_llm.evaluation.synth_evidence import EVIDENCE_CHANNELS, score_evidence
from affect_llm.hashing import file_sha256

CUE_ORDER = (
    "audio", "face", "text", "conflict", "all",
    "no_audio", "no_face", "no_text", "audio_only", "image_only", "text_only",
)  # fmt: skip


@dataclass
class EvaluatedSet:
    """One evaluated set: its name, results JSONL, reference manifest and eval report folder."""

    name: str
    results: Path
    refs: Path
    report_dir: Path


def read_report(evaluated: EvaluatedSet) -> dict[str, Any]:
    """The set's ``report.json``, refused when it was made from other files than the set's results and
    references as they are now: the page re-reads those, and must not mix two runs.

    Raises:
        EvaluationError: When a file is missing or its sha256 differs from the one the report recorded.
    """
    path = evaluated.report_dir / "report.json"
    for needed in (evaluated.results, evaluated.refs, path):
        if not needed.is_file():
            raise EvaluationError(f"{evaluated.name}: {needed} is missing; run explain and affect-llm eval for it")
    report = json.loads(path.read_text())
    inputs = report.get("inputs", {})
    for key, file in (("results", evaluated.results), ("refs", evaluated.refs)):
        if inputs.get(key, {}).get("sha256") != file_sha256(file):
            raise EvaluationError(f"{path}: made from another {file} than the one there now; run affect-llm eval "
                                  "on it again")
    return report


def coverage_line(report: dict[str, Any]) -> list[str]:
    """How many expected clips have an answer; the others count as wrong in every score."""
    coverage = report.get("coverage", {})
    expected, missing = coverage.get("references", 0), coverage.get("missing", 0)
    if not missing:
        return [f"Every one of the {expected} clips has an answer.", ""]
    return [f"**{missing} of the {expected} clips have no result row**: they count as wrong answers in every "
            "score below, and the tables read from the answers leave them out.", ""]


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _in_cue_order(cues: Any) -> list[str]:
    """Cue subsets in reading order: the single-channel ones first, unknown ones last by name."""
    return sorted(cues, key=lambda c: (CUE_ORDER.index(c) if c in CUE_ORDER else 99, c))


def _link(target: Path, page_dir: Path) -> str:
    return os.path.relpath(target, page_dir).replace(os.sep, "/")


def cue_table(report: dict[str, Any]) -> list[str]:
    """Accuracy, hit rate and family-level F per cue subset."""
    by_cue = report.get("by_cue", {})
    lines = ["| cue subset | clips | accuracy | hit rate | family F1 | unknown-word rate |", "|---|---|---|---|---|---|"]
    for cue in _in_cue_order(by_cue):
        s = by_cue[cue]
        lines.append(f"| {cue} | {s.get('count', 0)} | {_fmt(s.get('accuracy', 0.0))} | {_fmt(s.get('hit_rate', 0.0))} "
                     f"| {_fmt(s.get('family_f1', 0.0))} | {_fmt(s.get('unknown_word_rate', 0.0))} |")
    return lines


def evidence_table(evidence: dict[str, Any]) -> list[str]:
    """Per cue subset: does the answer describe each channel's true level, and the cue-carrying one?"""
    keys = list(EVIDENCE_CHANNELS)
    lines = [f"| cue subset | clips | cue channel described | explanation names it | {' | '.join(f'{k} evidence' for k in keys)} |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for cue in _in_cue_order(evidence["count"]):
        per_key = " | ".join(_fmt(evidence["channel"][cue].get(k, 0.0)) for k in keys)
        lines.append(f"| {cue} | {evidence['count'][cue]} | {_fmt(evidence['cue_channel'][cue])} "
                     f"| {_fmt(evidence['explanation'][cue])} | {per_key} |")
    return lines


def absent_table(section: dict[str, Any]) -> list[str]:
    """Per subset: clips without a channel and the answers that describe the missing one anyway."""
    lines = ["| subset | clips without a channel | answers describing one | rate | in evidence | in explanation "
             "| unparseable |", "|---|---|---|---|---|---|---|"]
    for name in _in_cue_order(section["by_subset"]):
        t = section["by_subset"][name]
        if t["clips"]:
            lines.append(f"| {name} | {t['clips']} | {t['describing_absent']} | {_fmt(t['rate'])} "
                         f"| {t['in_evidence']} | {t['in_explanation']} | {t['unparseable']} |")
    return lines


def channel_table(section: dict[str, Any]) -> list[str]:
    """Per channel: how often the answers describe it when the clip has it, and when it does not."""
    lines = ["| channel | clips with it | answers describing it | clips without it | answers describing it anyway |",
             "|---|---|---|---|---|"]
    for channel in CHANNEL_KEYS:
        c = section["overall"]["by_channel"][channel]
        lines.append(f"| {channel} | {c['present']} | {c['described_present']} | {c['absent']} "
                     f"| {c['described_absent']} |")
    return lines


def guard_note(results: list[dict[str, Any]]) -> list[str]:
    """Say whether decoding wrote the evidence of missing channels (then only the explanation is the model's)."""
    decodings = [row.get("decoding") or {} for row in results]
    nulled = sum(bool(d.get("null_absent_evidence")) for d in decodings)
    guarded = sum(bool(d.get("guard_absent_explanation")) for d in decodings)
    if not nulled and not guarded:
        return ["The answers were decoded unaided: evidence and explanation are the model's own.", ""]
    lines = []
    if nulled:
        lines.append(f"{nulled} of {len(results)} answers were decoded with `--null-absent-evidence` (the default): "
                     "the evidence of a missing channel is written null by decoding, so the evidence column counts "
                     "only what that rule lets through.")
    if guarded:
        lines.append(f"{guarded} of {len(results)} answers were decoded with `--guard-absent-explanation` (the "
                     "default): words describing a missing channel were forbidden in the explanation except after a "
                     "negation, so the explanation column counts what that rule lets through (words spelled in "
                     "several tokens, other words).")
    else:
        lines.append("The explanations are the model's own.")
    return [" ".join(lines), ""]


def absent_section(evaluated: EvaluatedSet) -> list[str]:
    """The absent-channel tables of one set, or a line saying no answered clip lacks a channel."""
    refs = {str(row["id"]): row for row in read_jsonl(evaluated.refs)}
    section = score_absent_channels(read_jsonl(evaluated.results), refs)
    if not section["overall"]["clips"]:
        return ["No answered clip lacks a channel: not measured on this set.", ""]
    examples = section["overall"]["examples"]
    lines = [*absent_table(section), "", *channel_table(section), ""]
    if examples:
        lines += ["Answers describing a missing channel: " + "; ".join(
            f"`{e['id']}` ({', '.join(e['channels'])})" for e in examples) + ".", ""]
    return lines


def scores_section(report: dict[str, Any]) -> list[str]:
    overall = report.get("overall", {})
    intervals = report.get("confidence_intervals", {})
    lines = ["| metric | value | 95% interval |", "|---|---|---|"]
    for key in ("accuracy", "hit_rate", "family_precision", "family_recall", "family_f1", "fine_f1"):
        if key in overall:
            ci = intervals.get(key)
            lines.append(f"| {key} | {_fmt(overall[key])} | {'-' if not ci else f'{ci[0]:.3f} to {ci[1]:.3f}'} |")
    judge = report.get("judge") or {}
    for kind, stats in sorted((judge.get("kinds") or {}).items()):
        lines.append(f"| judge {kind} overlap (1-10) | {_fmt(stats.get('mean'))} | scored {stats.get('scored')} |")
    parse = report.get("parse", {})
    lines.append(f"| parse-failure rate | {_fmt(parse.get('failure_rate', 0.0))} | |")
    if judge.get("identity"):
        lines.append(f"\nJudge: `{judge['identity']}`.")
    return lines


def examples_section(evaluated: EvaluatedSet, page_dir: Path, per_cue: int = 2) -> list[str]:
    """A few clips per cue subset: their cues and reference next to the model's answer."""
    refs = {row["id"]: row for row in read_jsonl(evaluated.refs)}
    results = sorted(read_jsonl(evaluated.results), key=lambda r: r["id"])
    shown: dict[str, int] = {}
    lines = []
    for result in results:
        ref = refs.get(result["id"])
        if ref is None:
            continue
        extra = ref.get("extra") or {}
        cue = extra.get("cue", ref.get("source", "clip"))
        if shown.get(cue, 0) >= per_cue:
            continue
        shown[cue] = shown.get(cue, 0) + 1
        media = [f"[{field}]({_link(evaluated.refs.parent / ref[field], page_dir)})"
                 for field in ("video", "audio", "image") if ref.get(field)]
        cues = ", ".join(f"{k}: {v}" for k, v in (extra.get("cues") or {}).items()) or "-"
        lines += [
            f"**{result['id']}** ({cue} cue; {' '.join(media)})",
            f"- cues: {cues}; reference labels: {', '.join(ref.get('labels') or []) or '-'}",
            f"- reference: {ref.get('explanation') or '-'}",
            f"- model ({result.get('parse_status')}): labels {', '.join(result.get('labels') or []) or '-'}; "
            f"{result.get('explanation') or (result.get('error') or '')}",
            "",
        ]
    return lines


def real_section(evaluated: EvaluatedSet, page_dir: Path) -> list[str]:
    """One real set: accuracy, what the answers say about each channel, the report and examples; or
    why it is not on the page."""
    try:
        report = read_report(evaluated)
    except EvaluationError as missing:
        return [f"### {evaluated.name}", "", f"Not evaluated: {missing}.", ""]
    overall = report.get("overall", {})
    lines = [
        f"### {evaluated.name}", "",
        f"Accuracy {_fmt(overall.get('accuracy', 0.0))} on {overall.get('count', '?')} labelled clips.", "",
        *coverage_line(report),
        *scores_section(report), "",
    ]  # fmt: skip
    results = read_jsonl(evaluated.results)
    standardised = sum(bool(r.get("audio_standardised_per_speaker")) for r in results)
    if standardised:
        lines += [f"Audio read against each speaker's own statistics (`model.audio_speaker_normalisation`) in "
                  f"{standardised} of {len(results)} clips.", ""]
    lines += ["What the answers say about each channel:", "", *absent_section(evaluated)]
    lines += [f"Full report: [{evaluated.name}]({_link(evaluated.report_dir / 'report.md', page_dir)}).", ""]
    return lines + examples_section(evaluated, page_dir, per_cue=8)


def write_overview(
    out_path: Path, held_out: EvaluatedSet, real: EvaluatedSet | Sequence[EvaluatedSet] | None = None
) -> Path:
    """Write the overview page and return its path.

    Args:
        out_path: The Markdown page to write.
        held_out: The synthetic held-out set.
        real: Real recordings (one set or several), each with its own section.
    """
    page_dir = out_path.parent
    page_dir.mkdir(parents=True, exist_ok=True)
    report = read_report(held_out)
    lines = [
        "# affect-llm quickstart report",
        "",
        f"Model: `{', '.join(report.get('models', []))}`; prompts: `{', '.join(report.get('prompts', []))}`.",
        "",
        f"## Held-out accuracy per cue subset ({held_out.name})",
        "",
        "In the audio, face and text subsets only that channel carries the emotion; the others are neutral.",
        "",
        *coverage_line(report),
        *cue_table(report),
        "",
    ]
    refs = {row["id"]: row for row in read_jsonl(held_out.refs)}
    results = read_jsonl(held_out.results)
    evidence = score_evidence(results, refs)
    (page_dir / "evidence.json").write_text(json.dumps(evidence, indent=2, sort_keys=True) + "\n")
    if evidence["count"]:
        lines += [
            "## Do the answers describe the cues that are there?",
            "",
            "Each evidence string is read back into a level through the reference phrases and compared with the",
            "clip's true cue per channel. A right label with a wrong description is a guess, not an explanation.",
            "",
            *evidence_table(evidence),
            "",
        ]
    lines += [
        "## Do the answers describe channels the clip does not have?",
        "",
        "Read from the raw output (evidence and explanation): an answer that describes a missing voice, face",
        "or words invents it. The target is 0 in every subset.",
        "",
        *guard_note(results),
        *absent_section(held_out),
    ]
    lines += [
        "## EMER-style scores (all held-out clips)",
        "",
        *scores_section(report),
        "",
        f"Full report: [{held_out.name}]({_link(held_out.report_dir / 'report.md', page_dir)}).",
        "",
    ]
    figures = sorted(held_out.report_dir.glob("*.png"))
    lines += [f"![{f.stem}]({_link(f, page_dir)})" for f in figures]
    lines += ["", "## Example explanations", "", *examples_section(held_out, page_dir)]
    real_sets = [real] if isinstance(real, EvaluatedSet) else list(real or [])
    if real_sets:
        lines += ["## Real recordings", ""]
        for evaluated in real_sets:
            lines += real_section(evaluated, page_dir)
    out_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_path
