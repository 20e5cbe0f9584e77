from __future__ import annotations

import json

import pytest

from affect_llm.labels.taxonomy import (
    DATA_PATH,
    TaxonomyError,
    load_taxonomy,
    normalize_labels,
    taxonomy_from_dict,
)


@pytest.fixture(scope="module")
def tax():
    return load_taxonomy()


@pytest.mark.parametrize(
    ("word", "family"),
    [
        ("happier", "joy"),
        ("angrily", "anger"),
        ("saddened", "sadness"),
        ("Terrified", "fear"),
        ("astonished", "surprise"),
        ("grossed-out", "disgust"),
        ("calm", "neutral"),
        ("neutral", "neutral"),
    ],
)
def test_inflections_and_case_map_to_family(tax, word, family):
    assert tax.family(word) == family


def test_inflection_shares_base_with_its_word(tax):
    assert tax.normalize("happier") == tax.normalize("happy") == tax.normalize("happily")


def test_fine_level_separates_annoyance_from_rage(tax):
    assert tax.fine("annoyed") == "irritability"
    assert tax.fine("furious") == "anger"
    assert tax.family("annoyed") == tax.family("furious") == "anger"


def test_unknown_and_negated_words_are_none(tax):
    assert tax.normalize("xyzzy") is None
    assert tax.normalize("not happy") is None
    assert tax.family("") is None


def test_degree_modifiers_are_ignored(tax):
    assert tax.normalize("very happy") == tax.normalize("happy")
    assert tax.normalize("a bit annoyed") == tax.normalize("annoyed")


def test_thousands_of_forms_with_provenance(tax):
    assert len(tax.forms) > 5000
    assert len(tax.families) in range(6, 9)
    assert {s["name"] for s in tax.sources} >= {"core", "emotion-data", "nrc"}
    assert all(s.get("licence") for s in tax.sources)


def test_normalize_labels_splits_known_and_unknown():
    known, unknown = normalize_labels(["Happy", "joyful", "blorp", "happy"])
    assert known == ["happiness", "joy"]
    assert unknown == ["blorp"]


def test_valence_signs(tax):
    assert tax.valence("happy") == 1
    assert tax.valence("sad") == -1
    assert tax.valence("neutral") == 0


def test_inconsistent_data_is_rejected():
    data = json.loads(DATA_PATH.read_text(encoding="utf-8"))
    data["bases"]["happiness"] = {"fine": "nope"}
    with pytest.raises(TaxonomyError, match="happiness"):
        taxonomy_from_dict(data, "x.json")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_taxonomy(tmp_path / "missing.json")
