"""Rows from files: JSONL, a JSON array, CSV/TSV, all read as UTF-8 with errors that name
the file and line; and JSONL written back."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path

from seer.errors import SeerError

__all__ = ["read_csv", "read_json", "read_jsonl", "read_text", "write_jsonl"]


def read_text(path: Path) -> str:
    try:  # bytes.decode: no newline translation, so "\r" inside a quoted CSV cell survives
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        bad = exc.object[exc.start : exc.start + 1]
        raise SeerError(
            f"{path}, line {line}: not UTF-8 text (byte {bad!r}); re-save it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`"
        ) from exc


def _lines(text: str) -> list[str]:
    # Only "\n" ends a line: str.splitlines() would also split at U+2028, U+0085 and other
    # characters that json.dumps(ensure_ascii=False) writes inside strings.
    return text.split("\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (one JSON object per line; blank lines are skipped)."""
    path = Path(path)
    rows = []
    for number, line in enumerate(_lines(read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SeerError(
                f"{path}, line {number}: not valid JSON ({exc.msg}); fix or remove that line"
            ) from exc
        except RecursionError:
            raise SeerError(_too_deep(f"{path}, line {number}")) from None
        if not isinstance(row, dict):
            raise SeerError(
                f'{path}, line {number}: expected a JSON object like {{"prompt": ..., '
                f'"concept": ...}}, got a {type(row).__name__}'
            )
        _check_encodable(row, f"{path}, line {number}")
        rows.append(row)
    return rows


def _check_encodable(row: dict, where: str) -> None:
    """JSON's ``"\\ud800"`` escapes decode to lone surrogates, which no UTF-8 file can hold."""
    for key, value in row.items():
        for text in (key, value):
            if isinstance(text, str):
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise SeerError(
                        f"{where}: {key!r} holds a lone surrogate ({text[exc.start]!r}), "
                        "which is not text; fix the \\u escape in that line or remove the line"
                    ) from None


def read_json(path: Path) -> list[dict]:
    """A ``.json`` file: a JSON array of objects, or JSONL under a .json name."""
    text = read_text(path)
    if not text.lstrip().startswith("["):
        return read_jsonl(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeerError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    except RecursionError:
        raise SeerError(_too_deep(str(path))) from None
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise SeerError(f"{path}: item {bad} of the array is not a JSON object")
    for i, row in enumerate(rows):
        _check_encodable(row, f"{path}, item {i}")
    return rows


def _too_deep(where: str) -> str:
    return (
        f"{where}: JSON nested too deeply to read (arrays or objects inside each other "
        "thousands of levels deep); a row holds texts: flatten or remove it"
    )


def read_csv(path: Path) -> list[dict]:
    text = read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    old_limit = csv.field_size_limit(2**31 - 1)  # long texts are truncated later, with a warning
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        header = reader.fieldnames or []
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:  # DictReader keeps the last column of a name: the others would be lost
            raise SeerError(
                f"{path}, line 1: the header names column(s) {twice} more than once; rename "
                "them so that every column has its own name"
            )
        # Cells beyond the header land under the key None; they belong to no column.
        return [{k: v for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:
        raise SeerError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from exc
    finally:
        csv.field_size_limit(old_limit)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
