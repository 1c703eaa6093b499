"""Property: for any small table written as CSV or JSONL, ``load_concepts`` returns exactly
the examples the table implies, or raises SeerError; never any other exception."""

import csv
import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from seer.core.data import load_concepts
from seer.errors import SeerError

COLUMNS = ("concept", "prompt", "response", "other")
OMIT = object()  # a JSONL row without this key

tricky = st.sampled_from(
    [
        "",
        " ",
        "\t\n",
        "NaN",
        "None",
        "a",
        "A",
        "b",
        " a ",
        "é",
        "x\u2028y",
        "p\rq",
        "\x85",
        '"',
        ",",
        "\x00",
        "1",
    ]
)
cell = st.one_of(tricky, st.text(max_size=6))
json_cell = st.one_of(cell, st.none(), st.integers(-2, 2), st.just(OMIT))


@st.composite
def tables(draw):
    columns = draw(st.permutations(COLUMNS))[: draw(st.integers(0, 4))]
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    value = cell if fmt == "csv" else json_cell
    n_rows = draw(st.integers(0, 7))
    rows = [{c: draw(value) for c in columns} for _ in range(n_rows)]
    return fmt, list(columns), rows


def write(folder: Path, fmt: str, columns: list[str], rows: list[dict]) -> Path:
    path = folder / f"data.{fmt}"
    with open(path, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([[row[c] for c in columns] for row in rows])
        else:
            for row in rows:
                kept = {k: v for k, v in row.items() if v is not OMIT}
                f.write(json.dumps(kept, ensure_ascii=False) + "\n")  # as seer writes it
    return path


def text(value) -> str | None:
    if value is None or value is OMIT:
        return None
    stripped = str(value).strip()
    return None if stripped.lower() in ("", "nan", "none", "null") else stripped  # missing


def expected(fmt: str, columns: list[str], rows: list[dict]) -> list[dict] | None:
    """The examples the table implies, in order; None: it must be refused."""
    if fmt == "jsonl":  # a key absent from every row is no column
        columns = [c for c in columns if any(row[c] is not OMIT for row in rows)]
    if not rows or "concept" not in columns or "prompt" not in columns:
        return None
    examples = [
        {
            "prompt": text(row["prompt"]),
            "response": text(row["response"]) if "response" in columns else None,
            "concept": text(row["concept"]),
        }
        for row in rows
    ]
    examples = [e for e in examples if e["concept"] and (e["prompt"] or e["response"])]
    unique = {tuple(e.values()): e for e in reversed(examples)}  # a repeat is kept once, first
    examples = [e for e in examples if unique.get(tuple(e.values())) is e]
    return examples if len({e["concept"] for e in examples}) >= 2 else None


@settings(max_examples=60, deadline=None)
@given(tables())
def test_load_concepts_is_exact_or_refuses(table):
    fmt, columns, rows = table
    want = expected(fmt, columns, rows)
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), fmt, columns, rows)
        try:
            examples = load_concepts(str(path))
        except SeerError as exc:
            assert want is None, f"refused a valid table: {exc}"
            assert "\n" not in str(exc)
            return
    assert want is not None, "accepted a table it should refuse"
    assert examples == want
