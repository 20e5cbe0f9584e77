"""Emotion-wheel grouping (AffectGPT ``my_affectgpt/evaluation/wheel.py``, ``func_backward_case3``).

The expected clusters below were traced by hand through the three committed tables
(``affect_llm/labels/data/emotion_wheel.json``), step by step as each docstring shows.
"""

from __future__ import annotations

import json

import pytest

from affect_llm.labels.emotion_wheel import WHEEL_DATA_PATH, load_emotion_wheel


@pytest.fixture(scope="module")
def wheel():
    return load_emotion_wheel()


def test_data_records_source_commit_and_licence_beside_it():
    source = json.loads(WHEEL_DATA_PATH.read_text())["source"]
    assert source["repository"] == "https://github.com/Smile232323/AffectGPT-RAPO"
    assert len(source["commit"]) == 40 and source["licence"] == "Apache-2.0"
    licence = (WHEEL_DATA_PATH.parent / source["licence_file"]).read_text()
    assert source["commit"] in licence and "Apache License" in licence
    assert sorted(source["sha256"]) == sorted(
        ["format.csv", "synonym.xlsx", *(f"wheel{i}.xlsx" for i in range(1, 6))]
    )


def test_table_sizes_match_the_published_counts(wheel):
    """AffectGPT's wheel.py states the sizes its tables give: 253 emotion-wheel labels, 1255
    labels once synonyms are added, 7386 once word forms are added."""
    on_wheels = {
        word
        for tree in wheel.wheels.values()
        for level1, branches in tree.items()
        for word in [level1, *branches, *(w for words in branches.values() for w in words)]
    }
    assert (len(on_wheels), len(wheel.synonyms), len(wheel.forms)) == (253, 1255, 7386)


def test_tired_differs_between_wheels(wheel):
    """``tired``: forms -> {tired}; synonyms(tired) -> bored, exhausted, sleepy, tired.

    wheel1 lists ``tired`` under sad (sad -> tired -> numb, don't care) and none of bored,
    exhausted, sleepy: cluster ``sad`` (level1), ``tired`` (level2). wheel2 has ``bored`` (under
    bad), which sorts first: ``bad`` / ``bored``. This project's taxonomy puts tired in sadness
    whatever the wheel, which is why its scores are not MER-UniBench scores.
    """
    assert (wheel.cluster("tired", "wheel1", "level1"), wheel.cluster("tired", "wheel1", "level2")) == (
        "sad",
        "tired",
    )
    assert (wheel.cluster("tired", "wheel2", "level1"), wheel.cluster("tired", "wheel2", "level2")) == (
        "bad",
        "bored",
    )


def test_word_forms_and_synonyms_reach_the_wheel(wheel):
    """``Angrily`` (any case): forms -> anger, angry; synonyms reach anger, angry, bitter, furious,
    heated, indignant, infuriated, mad, rage, resentful. On wheel1 the first of those on the wheel
    is ``anger`` (mad -> anger -> furious, rage): level1 ``mad``, level2 ``anger``."""
    assert wheel.cluster(" Angrily ", "wheel1", "level1") == "mad"
    assert wheel.cluster("angrily", "wheel1", "level2") == "anger"


def test_level1_word_at_level2_takes_its_first_branch(wheel):
    """wheel1's level1 ``sad`` has branches depressed, guilty, hurt, in my feelings, lonely, tired:
    at level2 the word ``sad`` itself maps to the alphabetically first, ``depressed``."""
    assert wheel.wheel_map("wheel1", "level2")["sad"] == "depressed"
    assert wheel.wheel_map("wheel1", "level1")["numb"] == "sad"


def test_unknown_words_are_dropped(wheel):
    """``neutral`` is not a form of any wheel word (the published hit rate skips neutral references)."""
    assert wheel.cluster("neutral", "wheel1", "level1") is None
    assert wheel.clusters(["neutral", "blorp", "happy"], "wheel1", "level1") == {"happy"}


def test_bad_wheel_or_level_is_named(wheel):
    with pytest.raises(ValueError, match="wheel9"):
        wheel.cluster("happy", "wheel9", "level1")
    with pytest.raises(ValueError, match="level3"):
        wheel.cluster("happy", "wheel1", "level3")


def test_bad_file_names_file_and_field(tmp_path):
    bad = tmp_path / "wheel.json"
    bad.write_text(json.dumps({"format": "affect-llm-emotion-wheel", "wheels": {}, "forms": []}))
    with pytest.raises(ValueError, match=r"wheel.json.*synonym_runs"):
        load_emotion_wheel(bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_emotion_wheel(tmp_path / "missing.json")
