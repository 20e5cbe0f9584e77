"""Convert AffectGPT's emotion-wheel tables into ``affect_llm/labels/data/emotion_wheel.json``.

The MER-UniBench scores map every emotion word through three published tables: five emotion
wheels (``wheel1.xlsx`` .. ``wheel5.xlsx``: level1 -> level2 -> level3 words), eight runs of
synonyms for the wheel words (``synonym.xlsx``) and the word forms of every synonym
(``format.csv``). The JSON file is committed, so the library never needs openpyxl. Rebuild only
when the source tables change, from a folder holding the eight files:

    git --git-dir=/path/to/AffectGPT-RAPO/.git archive c781e1cd AffectGPT/emotion_wheel | tar -x -C /tmp
    .venv/bin/python scripts/build_emotion_wheel.py /tmp/AffectGPT/emotion_wheel \\
        --repository https://github.com/Smile232323/AffectGPT-RAPO --commit c781e1cd037b3963e8894ebe344ff67be6ee0e9e

The cells are read the way the published evaluation reads them (a pandas data frame):
- wheels: a blank level cell repeats the value above it; words are lower-cased and stripped;
  the tree keeps the order of the sheet, because later rows win when a word appears twice;
- synonyms and forms: a cell is a list written as text, split on commas and quote characters;
- a cell pandas would read as missing (``NA``, ``None``, ``null``, ...) is refused, so the JSON
  never silently differs from what the published code sees.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "affect_llm" / "labels" / "data" / "emotion_wheel.json"
WHEELS = ("wheel1", "wheel2", "wheel3", "wheel4", "wheel5")
RUNS = tuple(f"run{i}" for i in range(1, 9))
LICENCE_FILE = "emotion_wheel_LICENSE.txt"
# Strings pandas reads as a missing value by default; such a cell would change meaning.
PANDAS_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}  # fmt: skip


def _text(value: Any, where: str) -> str | None:
    """A cell as text, None when blank; refuses numbers and strings pandas would read as missing."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected text, got {type(value).__name__} {value!r}")
    if value in PANDAS_NA:
        raise ValueError(f"{where}: cell {value!r} would be read as missing by the published code")
    return value


def split_list_cell(text: str | None) -> list[str]:
    """A list written as text (``"a, b"`` or ``"['a', 'b']"``): split on commas and quotes."""
    if not text:
        return []
    if text[0] == "[":
        text = text[1:]
    if text and text[-1] == "]":
        text = text[:-1]
    return [item.strip() for item in re.split(r"['\",]", text) if item.strip()]


def _sheet_rows(path: Path, header: tuple[str, ...]) -> list[tuple[Any, ...]]:
    import openpyxl

    sheet = openpyxl.load_workbook(path, read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    if not rows or tuple(rows[0][: len(header)]) != header:
        raise ValueError(f"{path}: first row must be {header}, got {rows[0] if rows else None}")
    body = [tuple(row[: len(header)]) for row in rows[1:]]
    while body and all(cell is None for cell in body[-1]):
        body.pop()  # pandas drops trailing blank rows
    return body


def read_wheel(path: Path) -> dict[str, dict[str, list[str]]]:
    """``{level1: {level2: [level3, ...]}}`` with blank cells repeating the value above."""
    tree: dict[str, dict[str, list[str]]] = {}
    current = ["", "", ""]
    for number, row in enumerate(_sheet_rows(path, ("level1", "level2", "level3")), start=2):
        for column, cell in enumerate(row):
            text = _text(cell, f"{path.name} row {number} column level{column + 1}")
            if text is not None:
                current[column] = text.lower().strip()
        if not all(current):
            raise ValueError(f"{path.name} row {number}: a level is still empty ({current})")
        level1, level2, level3 = current
        words = tree.setdefault(level1, {}).setdefault(level2, [])
        if level3 not in words:
            words.append(level3)
    return tree


def read_synonym_runs(path: Path, wheel_words: set[str]) -> dict[str, list[list[Any]]]:
    """Per run, ``[wheel word, [synonyms]]`` rows; every word must be a wheel word."""
    header = tuple(f"{kind}_{run}" for run in RUNS for kind in ("word", "synonym"))
    rows = _sheet_rows(path, header)
    runs: dict[str, list[list[Any]]] = {run: [] for run in RUNS}
    for number, row in enumerate(rows, start=2):
        for index, run in enumerate(RUNS):
            word = _text(row[2 * index], f"{path.name} row {number} column word_{run}")
            if word is None:
                raise ValueError(f"{path.name} row {number}: word_{run} is blank")
            word = word.strip().lower()
            if word not in wheel_words:
                raise ValueError(f"{path.name} row {number}: word_{run} {word!r} is not on any wheel")
            cell = _text(row[2 * index + 1], f"{path.name} row {number} column synonym_{run}")
            synonyms = [s.strip().lower() for s in split_list_cell(cell)]
            runs[run].append([word, synonyms])
    return runs


def read_forms(path: Path) -> list[list[Any]]:
    """``[name, [forms]]`` rows of ``format.csv`` (kept as written: the lookup is case-sensitive)."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or {"name", "format"} - set(reader.fieldnames):
            raise ValueError(f"{path}: header must have 'name' and 'format', got {reader.fieldnames}")
        rows = []
        for number, row in enumerate(reader, start=2):
            name = _text(row["name"], f"{path.name} line {number} field name")
            if name is None:
                raise ValueError(f"{path.name} line {number}: field name is blank")
            forms = row["format"] or None
            if forms is not None:
                _text(forms, f"{path.name} line {number} field format")
            rows.append([name, split_list_cell(forms)])
    return rows


def build(source: Path, repository: str, commit: str) -> dict[str, Any]:
    """The JSON document for the tables in ``source``."""
    files = [*(f"{w}.xlsx" for w in WHEELS), "synonym.xlsx", "format.csv"]
    missing = [name for name in files if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: missing {missing}")
    wheels = {wheel: read_wheel(source / f"{wheel}.xlsx") for wheel in WHEELS}
    wheel_words = {
        word
        for tree in wheels.values()
        for level1, branches in tree.items()
        for word in [level1, *branches, *(w for words in branches.values() for w in words)]
    }
    synonym_runs = read_synonym_runs(source / "synonym.xlsx", wheel_words)
    forms = read_forms(source / "format.csv")
    return {
        "format": "affect-llm-emotion-wheel",
        "version": 1,
        "source": {
            "repository": repository,
            "commit": commit,
            "folder": "AffectGPT/emotion_wheel",
            "origin": "AffectGPT (zeroQiaoba/AffectGPT), emotion-wheel tables of the MER-UniBench metrics",
            "licence": "Apache-2.0",
            "licence_file": LICENCE_FILE,
            "changes": "converted from xlsx/csv to JSON by scripts/build_emotion_wheel.py; content unchanged",
            "sha256": {name: hashlib.sha256((source / name).read_bytes()).hexdigest() for name in files},
        },
        "wheels": wheels,
        "synonym_runs": synonym_runs,
        "forms": forms,
    }


def dump(value: Any, indent: int = 0) -> str:
    """JSON with one list of words per line, so a change to a table shows as a short diff."""
    if isinstance(value, list) and all(isinstance(v, str) or _is_words(v) for v in value):
        return json.dumps(value, ensure_ascii=False)
    pad = " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {dump(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}" if items else "{}"
    if isinstance(value, list):
        return "[\n" + ",\n".join(pad + dump(v, indent + 1) for v in value) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False)


def _is_words(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with wheel1..5.xlsx, synonym.xlsx, format.csv")
    parser.add_argument("--repository", required=True, help="public repository the tables come from")
    parser.add_argument("--commit", required=True, help="commit of that repository")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    document = build(args.source, args.repository, args.commit)
    args.out.write_text(dump(document) + "\n", encoding="utf-8")
    counts = {w: sum(len(b) for b in t.values()) for w, t in document["wheels"].items()}
    print(f"wrote {args.out}: level2 branches per wheel {counts}, {len(document['forms'])} form rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
