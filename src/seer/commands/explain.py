"""``seer explain``: generate (or score) a reply and print the model's self-explanation."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seer.core.fields import option
from seer.core.tables import read_jsonl
from seer.errors import SeerError
from seer.inference.monitor_options import MonitorOptions

if TYPE_CHECKING:
    from seer.inference.explainer import Explanation

__all__ = ["HELP", "NAME", "ExplainConfig", "main", "requests"]

NAME = "explain"
HELP = "generate (or score) and read the model's self-explanation"


@dataclass
class ExplainConfig:
    run: str = option(help="run folder (or folder written by seer export)")
    prompt: str | None = option(None, "user prompt")
    response: str | None = option(None, "score this response instead of generating one")
    file: str | None = option(
        None, "JSONL with a 'prompt' (and optional 'response' and 'concept') per line"
    )
    max_new_tokens: int = option(64, "most tokens generated per reply")
    json: bool = option(False, "print JSON (one object per line for --file)")
    trace: bool = option(False, "print the per-token concept trace")
    html: str | None = option(
        None, "also write the explained generation as one self-contained HTML page (--prompt only)"
    )
    monitor: MonitorOptions = option(
        MonitorOptions, "monitor and intervene (generation only; one mode, one threshold)"
    )

    def __post_init__(self) -> None:
        from seer.inference.explainer import MAX_NEW_TOKENS  # deferred: torch

        if self.prompt is None and self.file is None:
            raise SeerError(
                'pass --prompt "TEXT", or --file PROMPTS.jsonl with one {"prompt": ...} a line'
            )
        if self.prompt is not None and self.file is not None:
            raise SeerError("pass either --prompt or --file, not both")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise SeerError(
                f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, "
                f"got {self.max_new_tokens}"
            )
        self.monitor.check_single("seer explain")
        if self.monitor.modes and self.response is not None:
            raise SeerError("--monitor acts while a reply is generated: drop --response to use it")
        if self.file is not None and self.response is not None:
            raise SeerError(
                "--response goes with --prompt; with --file, give each line a 'response'"
            )
        if self.html is not None and self.file is not None:
            raise SeerError("--html writes the page of one explanation: use it with --prompt")
        if self.html is not None and not Path(self.html).parent.is_dir():
            raise SeerError(f"--html {self.html}: its folder does not exist; create it first")
        if self.html is not None and not _replaceable_page(Path(self.html)):
            raise SeerError(
                f"--html {self.html} exists and is not a page seer wrote; seer replaces only "
                "its own pages: choose another file name (or move that file away)"
            )
        if self.prompt is not None and not self.prompt.strip():
            raise SeerError("the prompt is empty; pass some text with --prompt")


Config = ExplainConfig

#: How every page ``seer explain --html`` writes begins (``seer.inference.serve.page``).
_PAGE_START, _PAGE_TITLE = b"<!doctype html>", b"<title>seer: "


def _replaceable_page(path: Path) -> bool:
    """Whether ``--html`` may write ``path``: nothing is there, or a page seer wrote."""
    if not path.exists() and not path.is_symlink():
        return True
    if not path.is_file():
        return False
    with path.open("rb") as page:
        head = page.read(1024)
    return head.lower().startswith(_PAGE_START) and _PAGE_TITLE in head


def requests(config: ExplainConfig) -> list[dict]:
    """The prompts to explain (``--prompt`` or the lines of ``--file``), validated before any
    model is loaded."""
    if config.file is None:
        return [{"prompt": config.prompt, "response": config.response}]
    rows = read_jsonl(config.file)
    if not rows:
        raise SeerError(f"{config.file} holds no prompts; write one JSON object a line")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise SeerError(f"{config.file}, entry {number}: needs a non-empty 'prompt' string")
        if row.get("response") is not None and not isinstance(row["response"], str):
            raise SeerError(
                f"{config.file}, entry {number}: 'response' must be a string, got "
                f"{type(row['response']).__name__}; quote it or drop the key"
            )
    return rows


def _table(row: dict, result: Explanation, trace: bool, shadow: bool = False) -> str:
    w = max(len(str(r["concept"])) for r in result.ranking) + 2
    lines = [f"prompt: {row['prompt']}"]
    if row.get("concept") is not None:
        lines.append(f"given concept: {row['concept']}")
    lines += [f"top concept: {result.top}", f"  {'concept':<{w}}{'cosine':>8}{'probability':>13}"]
    lines += [
        f"  {str(r['concept']):<{w}}{r['cosine']:>8.3f}{r['probability']:>13.3f}"
        for r in result.ranking
    ]
    if result.intervened_at is not None:
        acted = "would have acted (watch mode)" if shadow else "acted"
        lines.append(f"monitor {acted} after {result.intervened_at} generated tokens")
    lines.append(f"reply: {result.reply}")
    if trace:
        lines.append("trace (token, top concept, its probability):")
        for t in result.trace:
            p = max(t["probabilities"].values())
            lines.append(f"  {t['token']!r:<20}{t['top']:<{w}}{p:.3f}")
    return "\n".join(lines) + "\n"


def _as_json(row: dict, result: Explanation, trace: bool) -> str:
    out: dict[str, Any] = {"prompt": row["prompt"], **result.to_dict()}
    if row.get("concept") is not None:
        out["concept"] = row["concept"]
    if not trace:
        del out["trace"]
    return json.dumps(out, ensure_ascii=False)


def main(config: ExplainConfig, *, progress: bool = True) -> int:
    """Generates a reply (or scores the given response, exactly as ``seer evaluate`` reads
    it) and prints the model's self-explanation; with ``--monitor``, the generation is
    watched (and stopped or steered) as :class:`~seer.inference.monitor.Monitor` describes.
    With ``--file``, lines that carry a ``concept`` are counted into a final accuracy of the
    top-ranked concept (ignoring the ``none`` threshold): on ``DIR/split/test.jsonl`` it
    reproduces ``prototype_accuracy``."""
    from tqdm.auto import tqdm

    from seer.inference.explainer import Explainer  # deferred: torch and transformers

    rows = requests(config)
    monitor = config.monitor.single()
    explainer = Explainer.from_run(config.run)
    if monitor is not None:
        explainer.check_monitor(monitor)
        if any(row.get("response") is not None for row in rows):
            raise SeerError("--monitor acts while a reply is generated; --file has 'response's")
    shadow = monitor is not None and monitor.mode == "watch"
    correct = labelled = 0
    bar = tqdm(
        rows,
        desc="explaining",
        unit="prompt",
        file=sys.stderr,
        disable=config.file is None or not progress,
    )
    for row in bar:
        if row.get("response") is not None:
            result = explainer.score(row["prompt"], row["response"])
        else:
            result = explainer.generate(row["prompt"], config.max_new_tokens, monitor)
        if row.get("concept") is not None:
            labelled += 1
            correct += result.ranking[0]["concept"] == str(row["concept"])
        if config.json:
            text = _as_json(row, result, config.trace)
        else:
            text = _table(row, result, config.trace, shadow)
        tqdm.write(text, file=sys.stdout)
        if config.html is not None:
            from seer.inference.serve.page import write_html  # no web stack needed

            page = write_html(
                config.html,
                result,
                prompt=row["prompt"],
                monitor=monitor,
                concepts=explainer.concepts,
            )
            print(f"page written to {page}", file=sys.stderr)
    if labelled:
        accuracy = correct / labelled
        if config.json:
            summary = {"accuracy": accuracy, "correct": correct, "labelled": labelled}
            print(json.dumps({"summary": summary}))
        else:
            print(f"accuracy of the top-ranked concept: {accuracy:.4f} ({correct}/{labelled})")
    return 0
