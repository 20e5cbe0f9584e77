"""The absent-channel rules as the commands parse them, and as the report states them."""

from __future__ import annotations

import argparse

from affect_llm.cli.options import add_evidence_argument, explanation_guard_for
from affect_llm.evaluation.overview import guard_note


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="hf")
    add_evidence_argument(parser)
    return parser.parse_args(list(argv))


def test_both_rules_are_on_by_default_and_each_turns_off_alone() -> None:
    args = parse()
    assert args.null_absent_evidence and explanation_guard_for(args)
    args = parse("--no-guard-absent-explanation")
    assert args.null_absent_evidence and not explanation_guard_for(args)
    args = parse("--no-null-absent-evidence")
    assert not args.null_absent_evidence and explanation_guard_for(args)


def test_the_vllm_backend_holds_the_evidence_rule_only_and_says_so(capsys) -> None:
    args = parse("--backend", "vllm")
    assert args.null_absent_evidence and not explanation_guard_for(args)
    assert "--guard-absent-explanation" in capsys.readouterr().err
    assert not explanation_guard_for(parse("--backend", "vllm", "--no-guard-absent-explanation"))
    assert capsys.readouterr().err == ""  # not asked for: nothing to say


def test_the_report_says_which_rules_held_the_answers() -> None:
    both = [{"decoding": {"null_absent_evidence": True, "guard_absent_explanation": True}}] * 3
    evidence_only = [{"decoding": {"null_absent_evidence": True, "guard_absent_explanation": False}}] * 2
    unaided = [{"decoding": {"null_absent_evidence": False, "guard_absent_explanation": False}}]
    note = guard_note(both)[0]
    assert "3 of 3 answers were decoded with `--null-absent-evidence`" in note
    assert "3 of 3 answers were decoded with `--guard-absent-explanation`" in note
    note = guard_note(evidence_only)[0]
    assert "--guard-absent-explanation" not in note and "explanations are the model's own" in note
    assert "unaided" in guard_note(unaided)[0]
