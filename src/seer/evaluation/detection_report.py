"""The detection part of the report (how well the readout and the probes would monitor):
tables for ``metrics["monitoring"]`` and ``metrics["faithfulness"]``, a reliability diagram
and a selective-prediction figure."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from seer.evaluation.figures import pyplot, save_figure

__all__ = ["monitoring_figures", "monitoring_sections", "reliability_figure", "selective_figure"]

_FIGURES = {
    "Reliability diagram (test; 15 equal-width bins)": "reliability.png",
    "Selective prediction: accuracy against coverage (test)": "selective.png",
}


def _f(value: object, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = f"{float(value):.{digits}f}"
        return "0.000" if text == "-0.000" else text
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _readouts(monitoring: Mapping) -> dict[str, Mapping]:
    shown = {"base_readout": "base readout", "seer_readout": "SEER readout"}
    out = {label: monitoring[key] for key, label in shown.items() if key in monitoring}
    for key, probe in (monitoring.get("probes") or {}).items():
        kind, tag = key.split("@")
        out[f"{kind} probe (base, layer {probe['layer']}, {tag})"] = probe
    return out


def _summary(monitoring: Mapping) -> list[str]:
    rows = []
    for label, m in _readouts(monitoring).items():
        rows.append(
            [label]
            + [
                _f(m.get(k))
                for k in (
                    "accuracy",
                    "macro_f1",
                    "ece",
                    "nll",
                    "mean_auroc",
                    "mean_recall_at_0.01_fpr",
                    "mean_recall_at_0.05_fpr",
                )
            ]
        )
    header = ["monitor", "acc", "macro-F1", "ECE", "NLL", "mean AUROC", "rec@1%FPR", "rec@5%FPR"]
    return _table(header, rows)


def _per_concept(monitoring: Mapping) -> list[str]:
    comparison = monitoring.get("comparison") or {}
    rows = []
    for name, r in (comparison.get("per_concept") or {}).items():
        seer = monitoring["seer_readout"]["per_concept"][name]["at_fpr"]
        rows.append(
            [
                name,
                _f(r["seer_auroc"]),
                r["best_probe"],
                _f(r["probe_auroc"]),
                _f(r["seer_recall_at_1pct_fpr"]),
                _f(seer["0.01"]["realised_fpr"]),
                _f(r["probe_recall_at_1pct_fpr"]),
                _f(seer["0.05"]["recall"]),
                _f(seer["0.05"]["realised_fpr"]),
                r["verdict"],
            ]
        )
    if not rows:
        return []
    counts = comparison.get("counts", {})
    header = [
        "concept",
        "SEER AUROC",
        "best probe",
        "probe AUROC",
        "SEER rec@1%",
        "SEER FPR@1%",
        "probe rec@1%",
        "SEER rec@5%",
        "SEER FPR@5%",
        "verdict",
    ]
    fitted = monitoring.get("fitted_on", "calibration")  # a run without one: "test (...)"
    intro = (
        f"SEER's readout against the external probe with the best AUROC on {fitted} for "
        f"each concept; verdict by test AUROC difference beyond ±{comparison.get('tolerance')}. "
        "Summary: "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + f". FPR thresholds set on {fitted}, recall and realised FPR on test."
    )
    return ["### SEER's readout vs the best external probe, per concept", "", intro, ""] + _table(
        header, rows
    )


def _none(monitoring: Mapping) -> list[str]:
    rows = []
    for key, label in (("base_readout", "base"), ("seer_readout", "SEER")):
        none = (monitoring.get(key) or {}).get("none")
        if none:
            rows.append(
                [
                    label,
                    _f(none["threshold"]),
                    _f(none["share"]),
                    _f(none["accuracy_answered"]),
                    _f(none["selective"]["aurc"]),
                ]
            )
    if not rows:
        return []
    header = ["model", "threshold (cos)", "share `none`", "accuracy on the rest", "AURC"]
    return ["### The `none` answer (test)", ""] + _table(header, rows)


#: Keys an ``eval/metrics.json`` written before seer settled on one spelling may hold instead.
OLD_SPELLING = {"centered": "centred"}


def _faithfulness(faith: Mapping) -> list[str]:
    rows = []
    for model, label in (("base", "base"), ("seer", "SEER")):
        for variant in ("span", "centered"):
            found = faith.get(model) or {}
            v = found.get(variant) or found.get(OLD_SPELLING.get(variant, variant))
            if v:
                rows.append(
                    [
                        label,
                        variant,
                        str(v["dimension"]),
                        _f(v["kl_prototypes"], 4)
                        + (f" ± {_f(v['kl_prototypes_se'], 4)}" if "kl_prototypes_se" in v else ""),
                        f"{_f(v['kl_random_mean'], 4)} ± {_f(v['kl_random_std'], 4)}",
                        _f(v["ratio"], 2),
                    ]
                )
    if not rows:
        return []
    some: Mapping = faith.get("seer") or faith.get("base") or {}
    intro = (
        f"Block {some['layer']} output projected off a subspace at every position, on "
        f"{some['n_texts']} test texts; KL(clean || projected) in nats/token"
        + (
            f" at {some['tokens_per_text']} seeded tokens of each text (± its standard error "
            "over the texts)"
            if some.get("tokens_per_text")
            else ""
        )
        + f"; random: {some['n_draws']} seeded draws of the same dimension (mean ± std). "
        "span: the prototypes; centered: the prototypes minus their mean."
    )
    header = ["model", "subspace", "dim", "KL prototypes", "KL random", "ratio"]
    return ["## Causal faithfulness", "", intro, ""] + _table(header, rows)


def monitoring_sections(metrics: Mapping) -> list[str]:
    """Markdown lines for the monitoring and faithfulness parts (empty when absent)."""
    lines: list[str] = []
    run = metrics.get("run") or {}
    monitoring = metrics.get("monitoring")
    if monitoring:
        lines += ["## Monitoring (test split)", ""]
        if run.get("calibration_split") is False:
            lines += [
                "> **This run has no calibration split** (trained before seer had one): "
                "temperatures, thresholds and the best layer were fitted on the test rows these "
                "figures are measured on, so they are optimistic.",
                "",
            ]
        else:
            lines += [
                "Prototypes and probes fitted on train; temperatures, `none` thresholds, FPR "
                "thresholds and the base model's best layer on calibration; every figure on test.",
                "",
            ]
        lines += _summary(monitoring) + _per_concept(monitoring) + _none(monitoring)
    if metrics.get("faithfulness"):
        lines += _faithfulness(metrics["faithfulness"])
    return lines


def reliability_figure(monitoring: Mapping, path: str | Path) -> Path:
    """Per-bin accuracy against mean confidence for the base and SEER readouts."""
    plt = pyplot()
    models = [("base_readout", "base"), ("seer_readout", "SEER")]
    fig, axes = plt.subplots(1, len(models), figsize=(9, 4), squeeze=False)
    for ax, (key, label) in zip(axes[0], models, strict=True):
        m = monitoring[key]
        bins = [b for b in m["reliability"] if b["count"]]
        width = 1 / len(m["reliability"])
        ax.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
               edgecolor="black", alpha=0.7, label="accuracy")  # fmt: skip
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set_title(f"{label}: ECE {m['ece']:.3f}")
        ax.set_xlabel("confidence (top-class probability)")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)


def selective_figure(monitoring: Mapping, path: str | Path) -> Path:
    """Accuracy against coverage (rows ranked by best cosine), with each ``none`` threshold."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for key, label in (("base_readout", "base"), ("seer_readout", "SEER")):
        none = monitoring[key]["none"]
        (line,) = ax.plot(none["selective"]["coverage"], none["selective"]["accuracy"], label=label)
        if none["accuracy_answered"] is not None:
            ax.plot([1 - none["share"]], [none["accuracy_answered"]], "o", color=line.get_color())
    ax.set_xlabel("coverage (share answered)")
    ax.set_ylabel("accuracy on the answered rows")
    ax.set_title("dots: the stored `none` threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def monitoring_figures(metrics: Mapping, out_dir: Path) -> dict[str, str]:
    """Write both figures into ``out_dir``; returns ``{caption: file}`` (empty without data)."""
    monitoring = metrics.get("monitoring")
    if not monitoring:
        return {}
    reliability_figure(monitoring, out_dir / _FIGURES[next(iter(_FIGURES))])
    selective_figure(monitoring, out_dir / "selective.png")
    return dict(_FIGURES)
