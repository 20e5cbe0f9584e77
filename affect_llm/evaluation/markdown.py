"""Render the evaluation report mapping as Markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

GROUP_COLUMNS = ("count", "accuracy", "family_f1", "fine_f1", "hit_rate")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _group_table(title: str, groups: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if not groups:
        return []
    rows = [[name, *(groups[name].get(c) for c in GROUP_COLUMNS)] for name in groups]
    return ["", f"## {title}", "", *_table(["group", *GROUP_COLUMNS], rows)]


def render_markdown(report: Mapping[str, Any]) -> str:
    """Markdown summary: coverage, headline metrics with CIs, closed-set, groups, judge, provenance."""
    inputs, overall = report["inputs"], report["overall"]
    lines = [
        "# Evaluation report",
        "",
        f"Results `{inputs['results']['name']}` (sha256 `{inputs['results']['sha256'][:16]}`), "
        f"references `{inputs['refs']['name']}` (sha256 `{inputs['refs']['sha256'][:16]}`).",
        "",
        f"{report['coverage']['references']} reference samples, {report['coverage']['scored']} with a result; "
        f"the {report['coverage']['missing']} without one are scored as not answered; results without a "
        f"reference {report['coverage']['extra']}.",
        "",
        "## Labels",
        "",
    ]
    rows = []
    for key in ("accuracy", "hit_rate", "family_f1", "fine_f1", "family_precision", "family_recall"):
        ci = report["confidence_intervals"].get(key)
        rows.append([key, overall.get(key), "-" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]"])
    rows += [
        ["parse_failure_rate", report["parse"]["failure_rate"], "-"],
        ["unknown_word_rate", overall.get("unknown_word_rate"), "-"],
    ]
    lines += _table(["metric", "value", "95% CI"], rows)
    closed, sentiment = report["closed_set"], report["sentiment"]
    lines += [
        "",
        "## Closed set (first label's family) and sentiment",
        "",
        *_table(
            ["metric", "value"],
            [
                ["WAF", closed["waf"]],
                ["UAR", closed["uar"]],
                ["WAR", closed["war"]],
                ["sentiment WAF", sentiment["waf"]],
            ],
        ),
    ]
    lines += _group_table("By source", report["by_source"])
    lines += _group_table("By cue", report["by_cue"])
    lines += absent_channel_lines(report.get("absent_channels"))
    judge = report["judge"]
    lines += ["", "## Judge", ""]
    if judge is None:
        lines.append("No judge was used.")
    else:
        lines.append(f"Judge `{judge['identity']}`.")
        lines += ["", *_table(["kind", "mean", "scored", "failed", "cached"], _judge_rows(judge))]
    lines += _mer_ov_lines(report.get("mer_ov"))
    lines += _unibench_lines(report.get("mer_unibench"))
    lines += ["", "## Scoring modes", ""]
    lines += [
        f"- `{mode}`: {info['title']}; sections {', '.join(info['sections'])}"
        for mode, info in report["scoring"].items()
    ]
    lines += ["", "## Provenance", "", f"Prompts: {', '.join(report['prompts']) or '-'}."]
    lines += [f"Models: {', '.join(report['models']) or '-'}.", f"Taxonomy: `{report['taxonomy']}`."]
    lines += ["", "Figures: " + ", ".join(f"`{name}`" for name in report["figures"]), ""]
    return "\n".join(lines)


ABSENT_COLUMNS = ("clips", "describing_absent", "rate", "in_evidence", "in_explanation", "unparseable")


def absent_channel_lines(section: Mapping[str, Any] | None) -> list[str]:
    """Per subset: answers that describe a channel the clip does not have (read from raw text)."""
    if not section or not section["overall"]["clips"]:
        return []
    rows = [[name, *(t[c] for c in ABSENT_COLUMNS)] for name, t in section["by_subset"].items() if t["clips"]]
    rows.append(["all", *(section["overall"][c] for c in ABSENT_COLUMNS)])
    lines = [
        "",
        "## Answers describing an absent channel",
        "",
        "Clips without a voice, a face or words, and how many answers describe the missing channel anyway "
        "(evidence or explanation, read from the raw output).",
        "",
        *_table(["subset", *ABSENT_COLUMNS], rows),
    ]
    examples = section["overall"]["examples"]
    if examples:
        lines += ["", "Examples: " + "; ".join(_absent_example(e) for e in examples) + "."]
    return lines


def _absent_example(example: Mapping[str, Any]) -> str:
    """``id`` (channel: the words that described it, or "evidence" when only the evidence did)."""
    parts = [f"{ch}: {', '.join(example['words'].get(ch) or ['evidence'])}" for ch in example["channels"]]
    return f"`{example['id']}` ({'; '.join(parts)})"


def _ci(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"


def _mer_ov_lines(section: Mapping[str, Any] | None) -> list[str]:
    if section is None:
        return []
    rows = [[key, section[key], _ci(section["ci"].get(key))] for key in ("accuracy", "recall", "avg")]
    return [
        "",
        "## MER2024-OV (mode `mer-ov`)",
        "",
        f"Grouping `{section['grouping']}`; {section['count']} samples scored, {section['failed']} "
        f"groupings failed, {section['skipped']} references without labels skipped.",
        "",
        *_table(["metric", "value", "95% CI"], rows),
    ]


def _unibench_lines(section: Mapping[str, Any] | None) -> list[str]:
    if section is None:
        return []
    rows = []
    for name, figures in section["sets"].items():
        note = ""
        if "sentiment" in figures:
            note = f"sentiment `{figures['sentiment']['grouping']}`, unresolved {figures['sentiment']['unresolved']}"
        rows.append(
            [name, figures["task"], figures["headline"]["metric"], figures["headline"]["value"], note]
        )
    rows.append(["mean", "-", "headline", section["mean_headline"], ""])
    return [
        "",
        "## MER-UniBench (mode `mer-unibench`)",
        "",
        f"Emotion wheels `{section['wheel']}` (AffectGPT, Apache-2.0).",
        "",
        *_table(["set", "task", "metric", "value", "notes"], rows),
    ]


def _judge_rows(judge: Mapping[str, Any]) -> list[list[Any]]:
    return [
        [kind, stats.get("mean"), stats.get("scored"), stats.get("failed"), stats.get("cached")]
        for kind, stats in judge["kinds"].items()
    ]
