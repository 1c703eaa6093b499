"""``seer explain``: print a model's self-explanation of prompts (and replies), optionally
watched by a monitor."""

from __future__ import annotations

import json
import sys
from typing import Any

from seer.errors import SeerError
from seer.inference.explainer import MAX_NEW_TOKENS, Explainer, Explanation, check_request
from seer.inference.monitor import Monitor

__all__ = ["main"]


def _requests(args: Any) -> list[dict]:
    """The prompts to explain, validated before any model is loaded."""
    if args.prompt is None and args.file is None:
        raise SeerError(
            'pass --prompt "TEXT", or --file PROMPTS.jsonl with one {"prompt": ...} a line'
        )
    if args.prompt is not None and args.file is not None:
        raise SeerError("pass either --prompt or --file, not both")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise SeerError(
            f"--max-new-tokens must be between 1 and {MAX_NEW_TOKENS}, got {args.max_new_tokens}"
        )
    if getattr(args, "monitor", None) is not None and args.response is not None:
        raise SeerError("--monitor acts while a reply is generated: drop --response to use it")
    if args.file is None:
        check_request(args.prompt)
        return [{"prompt": args.prompt, "response": args.response}]
    if args.response is not None:
        raise SeerError("--response goes with --prompt; with --file, give each line a 'response'")
    from seer.core.data import read_jsonl

    rows = read_jsonl(args.file)
    if not rows:
        raise SeerError(f"{args.file} holds no prompts; write one JSON object a line")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise SeerError(f"{args.file}, entry {number}: needs a non-empty 'prompt' string")
    return rows


def _monitor(args: Any) -> Monitor | None:
    """The ``--monitor`` options as a :class:`Monitor` (``None`` without ``--monitor``)."""
    if getattr(args, "monitor", None) is None:
        return None
    if not args.concept:
        raise SeerError("--monitor needs --concept, the concept to watch (e.g. --concept unsafe)")
    extra = {"refusal": args.refusal} if args.refusal else {}
    return Monitor(
        args.concept,
        threshold=args.threshold,
        mode=args.monitor,
        towards=args.towards,
        scale=args.steer_scale,
        watch_tokens=args.watch_tokens,
        reply_end=args.reply_end,
        **extra,
    )


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


def main(args: Any) -> int:
    """``seer explain DIR --prompt TEXT [--response TEXT] | --file PROMPTS.jsonl``.

    Generates a reply (or scores the given response, exactly as ``seer evaluate`` reads it)
    and prints the model's self-explanation; with ``--monitor``, the generation is watched
    (and stopped or steered) as :class:`Monitor` describes. With ``--file``, lines that
    carry a ``concept`` are counted into a final accuracy of the top-ranked concept (ignoring
    the ``none`` threshold): on ``DIR/split/test.jsonl`` it reproduces ``prototype_accuracy``.
    """
    from tqdm.auto import tqdm

    rows = _requests(args)
    monitor = _monitor(args)
    explainer = Explainer.from_run(args.run)
    if monitor is not None:
        explainer.check_monitor(monitor)
        if any(row.get("response") is not None for row in rows):
            raise SeerError("--monitor acts while a reply is generated; --file has 'response's")
    batch = args.file is not None
    correct = labelled = 0
    bar = tqdm(
        rows,
        desc="explaining",
        unit="prompt",
        file=sys.stderr,
        disable=not batch or getattr(args, "quiet", False),
    )
    for row in bar:
        if row.get("response") is not None:
            result = explainer.score(row["prompt"], row["response"])
        else:
            result = explainer.generate(row["prompt"], args.max_new_tokens, monitor)
        if row.get("concept") is not None:
            labelled += 1
            correct += result.ranking[0]["concept"] == str(row["concept"])
        if args.json:
            out = {"prompt": row["prompt"], **result.to_dict()}
            if row.get("concept") is not None:
                out["concept"] = row["concept"]
            if not args.trace:
                del out["trace"]
            text = json.dumps(out, ensure_ascii=False)
        else:
            text = _table(row, result, args.trace, monitor is not None and monitor.mode == "watch")
        tqdm.write(text, file=sys.stdout)
    if labelled:
        accuracy = correct / labelled
        if args.json:
            summary = {"accuracy": accuracy, "correct": correct, "labelled": labelled}
            print(json.dumps({"summary": summary}))
        else:
            print(f"accuracy of the top-ranked concept: {accuracy:.4f} ({correct}/{labelled})")
    return 0
