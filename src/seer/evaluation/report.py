"""Figures (t-SNE, layer sweep, confusion) and a markdown report comparing base vs SEER.

Matplotlib runs on the non-interactive Agg backend, so these functions work headless.
"""

# report.md's sections, one function each: about 300 lines, kept whole.
from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seer.evaluation.detection_report import monitoring_sections
from seer.evaluation.figures import pyplot, save_figure

logger = logging.getLogger(__name__)

__all__ = ["tsne_figure", "layer_sweep_figure", "confusion_figure", "write_report"]

REPORT_METRICS = (
    "prototype_accuracy",
    "macro_f1",
    "probe_accuracy",
    "silhouette",
    "davies_bouldin",
    "intra_cos",
    "inter_cos",
    "ot.mean_ratio",
)
LOWER_IS_BETTER = {"davies_bouldin", "inter_cos"}


def _embed(X: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points; got {n}. Plot more examples.")
    perplexity = min(30.0, (n - 1) / 3)
    tsne = TSNE(
        n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed
    )
    # Barnes-Hut's OpenMP threads spin-wait; on a busy machine one thread is 10-100x faster.
    with threadpool_limits(limits=1):
        return tsne.fit_transform(X)


def tsne_figure(
    before: np.ndarray,
    after: np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    seed: int = 0,
    titles: tuple[str, str] = ("base model", "after SEER"),
) -> Path:
    """Two t-SNE panels (before / after) coloured by concept with one shared legend."""
    plt = pyplot()
    y = np.asarray([str(v) for v in labels], dtype=object)
    for name, X in (("before", before), ("after", after)):
        if np.asarray(X).ndim != 2 or len(X) != len(y):
            raise ValueError(f"{name} must be [n, d] with one row per label ({len(y)} labels).")
    names = sorted(set(y.tolist()))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    colors = {name: cmap(k % cmap.N) for k, name in enumerate(names)}

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
    for ax, X, title in zip(axes, (before, after), titles, strict=True):
        emb = _embed(X, seed)
        for name in names:
            mask = y == name
            ax.scatter(emb[mask, 0], emb[mask, 1], s=14, alpha=0.8, color=colors[name], label=name)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        legend_labels,
        loc="lower center",
        ncol=min(len(names), 6),
        frameon=False,
        markerscale=2,
    )
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(names) / 6), 1, 1))
    return save_figure(fig, path)


def layer_sweep_figure(
    sweep: Mapping[str, Mapping[int, Mapping[str, float]]],
    path: str | Path,
    metrics: Sequence[str] = ("prototype_accuracy", "silhouette", "ot_mean_ratio"),
    target_layer: int | None = None,
) -> Path:
    """One subplot per metric, x = layer, one line per model; dashed line at ``target_layer``.

    ``sweep`` maps a model name to the output of
    :func:`seer.evaluation.metrics.layer_sweep` (layer keys may be ints or, after a JSON round
    trip, strings).
    """
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    if not sweep:
        raise ValueError("sweep is empty; pass {'base': layer_sweep(...), 'seer': ...}.")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for model, per_layer in sweep.items():
            layers = sorted(per_layer, key=int)
            values = [float(per_layer[k].get(metric, float("nan"))) for k in layers]
            ax.plot([int(k) for k in layers], values, marker="o", markersize=3, label=model)
        if target_layer is not None:
            ax.axvline(target_layer, color="gray", linestyle="--", linewidth=1, label="target")
        ax.set_title(metric)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, path)


def confusion_figure(
    confusion: Sequence[Sequence[int]], names: Sequence[str], path: str | Path, title: str
) -> Path:
    """Heat-map of a confusion matrix (rows true, columns predicted) with counts in cells."""
    plt = pyplot()
    C = np.asarray(confusion, dtype=int)
    k = len(names)
    if C.shape != (k, k):
        raise ValueError(
            f"confusion has shape {C.shape} but {k} names were given; expected {k}x{k}."
        )
    size = max(3.5, 0.55 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(C, cmap="Blues")
    threshold = C.max() / 2 if C.size else 0
    for i in range(k):
        for j in range(k):
            color = "white" if C[i, j] > threshold else "black"
            ax.text(j, i, str(C[i, j]), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return save_figure(fig, path)


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        text = f"{float(value):.3f}"
        return "0.000" if text == "-0.000" else text
    return _cell(str(value))


def _cell(text: str) -> str:
    """Make ``text`` safe inside a markdown table cell."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("|", "\\|").replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "<br>")


def lookup(d: Mapping, dotted: str) -> Any:
    """``d["a"]["b"]`` for ``"a.b"``; None where a part is missing."""
    for part in dotted.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d


def _is_scalar(v: object) -> bool:
    return isinstance(v, (numbers.Number, str, bool))


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _metric_section(metrics: Mapping) -> list[str]:
    base, seer = metrics.get("base") or {}, metrics.get("seer") or {}
    rows = []
    for name in REPORT_METRICS:
        b, s = lookup(base, name), lookup(seer, name)
        if b is None and s is None:
            continue
        delta = float(s) - float(b) if _is_num(b) and _is_num(s) else None
        label = f"{name} (lower is better)" if name in LOWER_IS_BETTER else name
        rows.append([label, _fmt(b), _fmt(s), _fmt(delta)])
    if not rows:
        return []
    return ["## Concept disentanglement", ""] + _table(["metric", "base", "SEER", "Δ"], rows)


def _is_num(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _retention_section(metrics: Mapping) -> list[str]:
    retention = metrics.get("retention")
    if not isinstance(retention, Mapping):
        return []
    rows = [[_cell(str(k)), _fmt(v)] for k, v in retention.items() if _is_scalar(v)]
    if not rows:
        return []
    return ["## Retention of the base model", ""] + _table(["metric", "value"], rows)


def _ot_section(metrics: Mapping) -> list[str]:
    found = {m: lookup(metrics, f"{m}.ot.pairs") for m in ("base", "seer")}
    models: dict[str, list] = {m: p for m, p in found.items() if isinstance(p, list) and p}
    if not models:
        return []
    merged: dict[tuple[str, str], dict[str, Mapping]] = {}
    for model, pairs in models.items():
        for pair in pairs:
            merged.setdefault((str(pair["a"]), str(pair["b"])), {})[model] = pair
    header = ["pair"]
    for model in models:
        shown = "SEER" if model == "seer" else model
        header += [f"{shown} W₂", f"{shown} ratio"]
    rows = []
    for (a, b), by_model in sorted(merged.items()):
        row = [_cell(f"{a} / {b}")]
        for model in models:
            pair = by_model.get(model, {})
            row += [_fmt(pair.get("wasserstein")), _fmt(pair.get("ratio"))]
        rows.append(row)
    intro = "ratio = W₂ / mean spread; higher means concepts lie farther apart than they spread."
    return ["## Optimal-transport separation per concept pair", "", intro, ""] + _table(
        header, rows
    )


def _figure_section(figures: Mapping[str, str]) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", ""]
    for caption, file in figures.items():
        link = Path(file).as_posix().replace(" ", "%20")
        lines += [f"### {caption}", "", f"![{caption}]({link})", ""]
    return lines


def _generation_section(generations: Sequence[Mapping[str, str]] | None) -> list[str]:
    if not generations:
        return []
    rows = [[_cell(str(g.get(k, ""))) for k in ("prompt", "base", "seer")] for g in generations]
    return ["## Generations", ""] + _table(["prompt", "base", "SEER"], rows)


def write_report(
    out_dir: str | Path,
    metrics: Mapping,
    figures: Mapping[str, str],
    generations: list[dict] | None = None,
) -> Path:
    """Write ``out_dir/report.md`` combining metrics, figures and generations.

    ``metrics`` may hold ``"base"`` and ``"seer"`` (outputs of ``disentanglement`` plus
    optional ``probe_accuracy`` and ``ot`` = ``ot_separation``), ``"retention"`` (scalar
    keys) and other top-level scalars (shown under *Run*). ``figures`` maps a caption to a
    file name relative to ``out_dir``. Missing sections are skipped.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# SEER report", ""]
    run = [f"- **{_cell(str(k))}**: {_fmt(v)}" for k, v in metrics.items() if _is_scalar(v)]
    if run:
        lines += ["## Run", "", *run, ""]
    for section in (
        _metric_section(metrics),
        monitoring_sections(metrics),
        _retention_section(metrics),
        _ot_section(metrics),
        _figure_section(figures),
        _generation_section(generations),
    ):
        lines += section
    for caption, file in figures.items():
        if not (out_dir / file).exists():
            logger.warning("figure %r (%s) not found in %s", caption, file, out_dir)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    logger.info("wrote %s", path)
    return path
