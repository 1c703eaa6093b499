"""seer on vLLM against seer on Hugging Face, one run, one set of prompts, one process:

- ``vllm plain``: the in-process vLLM engine seer's backend drives, its hook off (vLLM alone);
- ``vllm seer``: the same engine stepped by seer's engine, the readout on every token, the
  final explanation read (no HTTP, so the ratio to ``vllm plain`` is the readout's cost);
- ``serve vllm`` / ``serve hf``: ``seer serve`` on each backend, K concurrent streaming clients;
- ``hf plain``: batched ``model.generate`` at batch K.

Per K: aggregate generated tokens/s, time to first token and inter-token latency p50/p95 (for
the engine rows: from the steps' times, every request submitted at once; the run of median
throughput of ``--repeats`` runs, the two engine rows alternating). Every request has its own
prefix-cache salt, as seer's rows do, so that no run reuses another's prompt blocks. Peak RSS is the
process's (all phases share it) and is printed once. The goals: ``vllm seer`` >= 0.9x
``vllm plain``, and ``serve vllm`` >= 1.5x ``serve hf`` at K=8.

    flock /tmp/seer-heavy.lock .venv-vllm/bin/python bench/serve_vllm.py --run RUN
    .venv-vllm/bin/python bench/serve_vllm.py --run RUN --clients 1 8 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import csv
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from serve_load import load, pct, plain

from seer.inference.backends.vllm import VllmBackend
from seer.inference.engine import Engine
from seer.inference.explainer import Explainer
from seer.inference.serve.app import create_app
from seer.inference.serve.server import running


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="run (or export) folder on the embedded model")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--max-tokens", type=int, default=32, help="reply length (EOS may end it)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--repeats", type=int, default=3, help="runs of vllm plain / vllm seer (the median)"
    )
    p.add_argument("--data-dir", default="../shared/data", help="xstest prompts from here")
    return p.parse_args(argv)


def prompts(n: int, data: Path) -> list[str]:
    path = data / "xstest_v2_prompts.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r["prompt"] for r in csv.DictReader(f)]
    else:
        rows = ["How do I bake bread?", "What is a black hole?", "How do I kill a process?"]
    return [rows[(7 * i) % len(rows)] for i in range(n)]


def engine_run(engine: Engine, texts: list[str], max_tokens: int) -> dict:
    """Every text submitted at once to one batch, stepped to the end."""
    batch = engine.batch()
    for text in texts:
        batch.add(text, max_new_tokens=max_tokens)
    start, times = time.perf_counter(), {}
    while batch.active:
        events = batch.step()
        now = time.perf_counter()
        for e in events:
            if e.index >= 0:
                times.setdefault(e.row, []).append(now)
    return _figures(start, list(times.values()))


def vllm_plain(backend: VllmBackend, texts: list[str], max_tokens: int) -> dict:
    """vLLM alone on the same engine: greedy requests by token ids, the hook switched off,
    each ended at its first end-of-reply token (as plain vLLM ends it, and seer's rows end)."""
    from seer.core.formatting import prompt_ids

    vllm = backend.engine
    vllm.reading = False
    try:
        tok = backend.loaded.tokenizer
        for text in texts:  # each its own cache salt, as seer's rows: no prefix reuse
            rid = backend.request_id()
            vllm.add(rid, prompt_ids(tok, text), max_tokens, salt=rid)
        start, times = time.perf_counter(), {}
        counts: dict[str, int] = {}
        while vllm.busy:
            out = vllm.step()
            now = time.perf_counter()
            ended = []
            for rid, tokens in out.items():
                new = len(tokens) - counts.get(rid, 0)
                counts[rid] = len(tokens)
                times.setdefault(rid, []).extend([now] * new)
                if backend.eos.intersection(tokens[-new:]):
                    ended.append(rid)
            vllm.abort(ended)  # the engine ignores EOS (seer decides): end them as vLLM would
        return _figures(start, list(times.values()))
    finally:
        vllm.reading = True


def _figures(start: float, times: list[list[float]]) -> dict:
    wall = max(t[-1] for t in times) - start
    tokens = sum(len(t) for t in times)
    gaps = [b - a for t in times for a, b in zip(t, t[1:], strict=False)]
    ttft = [t[0] - start for t in times]
    return {
        "tok_s": tokens / wall,
        "ttft50": pct(ttft, 0.5),
        "ttft95": pct(ttft, 0.95),
        "tpot50": pct(gaps, 0.5),
        "tpot95": pct(gaps, 0.95),
    }


def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on another thread, as the server steps its engine: on vLLM's CPU build
    the thread that started the engine runs its passes several times slower (measured on this
    machine: 26-60 tok/s against 250-450 tok/s on a tiny model; cause not found)."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.update(r=fn(*args)))
    thread.start()
    thread.join()
    return out["r"]


def rows_of(engine: Engine, texts: list[str], max_tokens: int) -> dict[int, list]:
    out: dict[int, list] = {}
    for events in engine.stream(texts, max_new_tokens=max_tokens, batch_size=len(texts)):
        for e in events:
            out.setdefault(e.row, []).append(e)
    return out


def agreement(hf: Engine, vl: Engine, texts: list[str], max_tokens: int) -> str:
    """The vLLM backend's readout against the HF backend's (float32): over each reply's
    tokens up to the first that differs, how often the top concept agrees and the largest
    probability difference; how many replies are the same tokens and have the same final top."""
    a, b = rows_of(hf, texts, max_tokens), rows_of(vl, texts, max_tokens)
    same = tops = total = final = 0
    worst = 0.0
    for i in a:
        ra, rb = a[i][-1].result, b[i][-1].result
        same += ra.tokens == rb.tokens
        final += ra.explanation.top == rb.explanation.top
        for x, y in zip(a[i], b[i], strict=False):
            if x.token != y.token:
                break
            total += 1
            tops += x.top == y.top
            worst = max(worst, float(np.abs(x.probabilities - y.probabilities).max()))
    n = len(a)
    return (
        f"same tokens {same}/{n} replies; per-token top agrees {tops}/{total} "
        f"({tops / max(total, 1):.3f}), max |dp| {worst:.4f}; final top agrees {final}/{n}"
    )


def served(engine: Engine, k: int, texts: list[str], max_tokens: int) -> dict:
    app = create_app(engine, model_id="bench", max_batch_size=max(k, 1), max_queue=k * 2)
    with running(app) as url:
        load(url, 1, texts[:1], 1, 4)  # warm-up
        return load(url, k, texts, 1, max_tokens)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(0)
    explainer = Explainer.from_run(args.run)
    loaded = explainer.loaded
    start = time.perf_counter()
    backend = VllmBackend(loaded, dtype=args.dtype, max_num_seqs=max(args.clients) * 2)
    print(f"vLLM start-up {time.perf_counter() - start:.1f} s ({args.dtype})")
    hf, vl = Engine(loaded), Engine(loaded, backend)
    in_thread(vllm_plain, backend, prompts(2, Path(args.data_dir)), 4)  # warm-up
    texts = prompts(16, Path(args.data_dir))
    print(
        f"readout agreement, {args.dtype} vLLM vs float32 HF, 16 prompts, {args.max_tokens} tokens:"
    )
    print("  " + in_thread(agreement, hf, vl, texts, args.max_tokens), flush=True)
    rows = []
    for k in args.clients:
        texts = prompts(k, Path(args.data_dir))
        in_thread(vllm_plain, backend, texts, 2)  # warm-up: vLLM's kernels for these shapes
        in_thread(engine_run, vl, texts, 2)
        plain_runs, seer_runs = [], []
        for _ in range(args.repeats):  # alternating, so that background load hits both
            plain_runs.append(in_thread(vllm_plain, backend, texts, args.max_tokens))
            seer_runs.append(in_thread(engine_run, vl, texts, args.max_tokens))
        results = {
            "vllm plain": _median(plain_runs),
            "vllm seer": _median(seer_runs),
            "serve vllm": served(vl, k, texts, args.max_tokens),
            "serve hf": served(hf, k, texts, args.max_tokens),
            "hf plain": in_thread(plain, explainer, texts, k, args.max_tokens),
        }
        for name, r in results.items():
            rows.append((k, name, r))
            print(_row(k, name, r), flush=True)
        v, s = results["vllm seer"]["tok_s"], results["vllm plain"]["tok_s"]
        sv, sh = results["serve vllm"]["tok_s"], results["serve hf"]["tok_s"]
        print(f"K={k}: vllm seer / vllm plain = {v / s:.2f}; serve vllm / serve hf = {sv / sh:.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"peak RSS of the process (HF model + vLLM engine + servers): {peak:.2f} GiB")
    print("\n| K | engine | tok/s | TTFT p50 / p95 (s) | inter-token p50 / p95 (ms) |")
    print("|---|---|---|---|---|")
    for k, name, r in rows:
        print(
            f"| {k} | {name} | {r['tok_s']:.1f} | "
            + (f"{r['ttft50']:.2f} / {r['ttft95']:.2f} | " if "ttft50" in r else "- | ")
            + (f"{r['tpot50'] * 1e3:.0f} / {r['tpot95'] * 1e3:.0f} |" if "tpot50" in r else "- |")
        )


def _median(runs: list[dict]) -> dict:
    """The run of median throughput (its latencies with it)."""
    return sorted(runs, key=lambda r: r["tok_s"])[len(runs) // 2]


def _row(k: int, name: str, r: dict) -> str:
    extra = ""
    if "ttft50" in r:
        extra = (
            f"  TTFT {r['ttft50']:.2f}/{r['ttft95']:.2f} s"
            f"  ITL {r['tpot50'] * 1e3:.0f}/{r['tpot95'] * 1e3:.0f} ms"
        )
    return f"K={k:>2} {name:<11} {r['tok_s']:7.1f} tok/s{extra}"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
