"""Load on ``seer serve``: K concurrent streaming clients (loopback only, a bounded number of
requests each) against the embedded model, next to plain batched ``model.generate`` on the
same prompts in the same process.

Per K it prints the aggregate generated tokens/s, the p50/p95 time to first token (request
sent -> first generated token's chunk), p50/p95 per-token latency (gaps between a
stream's token chunks), and how many batches the server started, how many prefill passes
it ran and how many rows joined a batch already generating (from ``/health``); and plain
``generate_batches`` at batch K over the same prompts and reply length. The closing lines
are the issue's two goals: explained serving at K=8 over plain batched generation at batch
8 (goal >= 0.9), and K=8 over K=1 (goal >= 3).

    python bench/serve_load.py --run runs/serve-bench   # trains that small run first if absent
    python bench/serve_load.py --run runs/bt6 --clients 1 8 --repeats 3   # median of 3 rounds
    python bench/serve_load.py --run runs/bt6 --clients 1 8 --batch-wait-ms 0 20  # both waits
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
import torch

from seer.cli import main as seer_main
from seer.inference.explainer import Explainer
from seer.inference.generation import generate_batches
from seer.inference.serve.app import create_app
from seer.inference.serve.server import running


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/serve-bench", help="run folder on the embedded model")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--max-tokens", type=int, default=48, help="reply length (EOS may end it early)")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        nargs="+",
        default=[150.0],
        help="the server's --batch-wait-ms (0: a waiting request enters at the next step); "
        "with several, each K's serve phase runs once per value, side by side in each round",
    )
    p.add_argument("--data-dir", default="../shared/data", help="the shared data folder")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="rounds over every K; the goals are then the median of the rounds' ratios (each "
        "round's ratios are side by side, the median damps a round the machine slowed)",
    )
    return p.parse_args(argv)


def train_small_run(out: Path, data: Path) -> None:
    """A few steps of SEER on the embedded model: enough for a real readout to serve."""
    retain = out.parent / f"{out.name}-retain.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs = [("Name a fruit.", "An apple."), ("What is 2+2?", "4."), ("Say hello.", "Hello!")]
    retain.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs))
    code = seer_main(
        [
            "--quiet",
            "train",
            "--model",
            "embedded",
            "--data",
            str(data / "beavertails_multiclass.csv"),
            "--concept-column",
            "value",
            "--max-per-concept",
            "6",
            "--test-fraction",
            "0.34",
            "--epochs",
            "0.5",
            "--batch-size",
            "4",
            "--max-length",
            "128",
            "--retain-data",
            str(retain),
            "--output",
            str(out),
        ]
    )
    if code != 0:
        raise SystemExit(f"training {out} failed")


def prompts(n: int, data: Path) -> list[str]:
    with open(data / "xstest_v2_prompts.csv", newline="", encoding="utf-8") as f:
        rows = [r["prompt"] for r in csv.DictReader(f)]
    return [rows[(7 * i) % len(rows)] for i in range(n)]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def stream_one(url: str, prompt: str, max_tokens: int, out: dict) -> None:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    sent = time.perf_counter()
    times = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            readout = chunk.get("seer", {}).get("readout")
            if readout is not None and readout["index"] >= 0:
                times.append(time.perf_counter())
    out["ttft"] = times[0] - sent if times else float("nan")
    out["gaps"] = [b - a for a, b in zip(times, times[1:], strict=False)]
    out["tokens"] = len(times)


def load(url: str, k: int, texts: list[str], requests: int, max_tokens: int) -> dict:
    results: list[dict] = []

    def client(i: int) -> None:
        for r in range(requests):
            out: dict = {}
            stream_one(url, texts[i * requests + r], max_tokens, out)
            results.append(out)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(k)]
    before = httpx.get(f"{url}/health").json()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/health").json()
    tokens = sum(r["tokens"] for r in results)
    gaps = [g for r in results for g in r["gaps"]]
    ttft = [r["ttft"] for r in results]
    return {
        "tok_s": tokens / wall,
        "tokens": tokens,
        "wall": wall,
        "ttft50": pct(ttft, 0.5),
        "ttft95": pct(ttft, 0.95),
        "tpot50": pct(gaps, 0.5),
        "tpot95": pct(gaps, 0.95),
        "batches": after["batches"] - before["batches"],
        "prefills": after["prefills"] - before["prefills"],
        "joined": after["joined"] - before["joined"],
    }


@torch.no_grad()
def plain(explainer: Explainer, texts: list[str], k: int, max_tokens: int) -> dict:
    start = time.perf_counter()
    tokens = 0
    for _idx, rows in generate_batches(
        explainer.model, explainer.tokenizer, texts, max_new_tokens=max_tokens, batch_size=k
    ):
        tokens += sum(len(r) for r in rows)
    wall = time.perf_counter() - start
    return {"tok_s": tokens / wall, "tokens": tokens, "wall": wall}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run = Path(args.run)
    if not (run / "seer.json").is_file():
        print(f"{run} not found: training a small run on the embedded model first")
        train_small_run(run, Path(args.data_dir))
    torch.manual_seed(0)
    explainer = Explainer.from_run(run)
    app = create_app(
        explainer.engine,
        model_id=run.name,
        max_batch_size=max(args.clients),
        max_queue=max(args.clients) * 2,
    )
    worker = app.state.service.worker
    waits = args.batch_wait_ms
    rounds: list[dict[tuple[int, float], tuple[dict, dict]]] = []
    with running(app) as url:
        warm: dict = {}
        stream_one(url, "Say hello.", 4, warm)
        for repeat in range(args.repeats):
            rows: dict[tuple[int, float], tuple[dict, dict]] = {}
            for k in args.clients:
                texts = prompts(k * args.requests, Path(args.data_dir))
                served = {}
                for wait in waits:  # the worker is idle between phases: safe to change
                    worker.batch_wait = wait / 1e3
                    served[wait] = load(url, k, texts, args.requests, args.max_tokens)
                base = plain(explainer, texts, k, args.max_tokens)  # same prompts, worker idle
                tag = f"[round {repeat + 1}] " if args.repeats > 1 else ""
                for wait, got in served.items():
                    rows[k, wait] = (got, base)
                    print(
                        f"{tag}K={k:<3} wait {wait:g} ms serve {got['tok_s']:7.1f} tok/s "
                        f"({got['tokens']} tokens, {got['wall']:.1f}s)  TTFT p50 "
                        f"{got['ttft50'] * 1e3:6.0f} ms p95 {got['ttft95'] * 1e3:6.0f} ms  "
                        f"per-token p50 {got['tpot50'] * 1e3:5.0f} ms p95 "
                        f"{got['tpot95'] * 1e3:5.0f} ms  batches {got['batches']} prefills "
                        f"{got['prefills']} joined {got['joined']} | plain generate batch "
                        f"{k}: {base['tok_s']:7.1f} tok/s ({base['tokens']} tokens) | ratio "
                        f"{got['tok_s'] / base['tok_s']:.2f}",
                        flush=True,
                    )
            rounds.append(rows)
    if 8 not in args.clients:
        return
    for wait in waits:
        tag = f" (wait {wait:g} ms)" if len(waits) > 1 else ""
        over_plain = [r[8, wait][0]["tok_s"] / r[8, wait][1]["tok_s"] for r in rounds]
        print(f"goal serve(K=8) / plain(batch 8) >= 0.9{tag}: {_summary(over_plain)}")
        if 1 in args.clients:
            over_one = [r[8, wait][0]["tok_s"] / r[1, wait][0]["tok_s"] for r in rounds]
            print(f"goal serve(K=8) / serve(K=1) >= 3{tag}: {_summary(over_one)}")


def _summary(ratios: list[float]) -> str:
    """One round's ratio, or the median of several with each round's."""
    if len(ratios) == 1:
        return f"{ratios[0]:.2f}"
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return f"{statistics.median(ratios):.2f} (median of {len(ratios)} rounds: {each})"


if __name__ == "__main__":
    main()
