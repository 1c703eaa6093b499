from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import held_by_another_process, tiny_llama, write_concepts, write_retain

from seer.core.folders import lock_path
from seer.core.formatting import encode
from seer.core.layers import add_to_layer
from seer.errors import SeerError
from seer.evaluation.faithfulness import orthonormal_basis, projection_kl
from seer.evaluation.metrics import disentanglement, ot_separation
from seer.evaluation.report import confusion_figure, layer_sweep_figure, tsne_figure, write_report
from seer.readout import compute_prototypes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NAMES = ["anger", "joy", "a rather long concept name"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = [name for name in NAMES for _ in range(10)]
    before = rng.standard_normal((30, 8))
    centers = 4 * np.eye(8)[:3]
    after = np.repeat(centers, 10, axis=0) + 0.3 * rng.standard_normal((30, 8))
    return before, after, y


def assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_tsne_figure_two_panels_wide(tmp_path, data):
    import matplotlib.pyplot as plt

    before, after, y = data
    path = tsne_figure(before, after, y, tmp_path / "figs" / "tsne.png")
    assert_png(path)
    height, width = plt.imread(path).shape[:2]
    assert width > 1.5 * height


def test_tsne_figure_rejects_mismatched_rows(tmp_path, data):
    before, after, y = data
    with pytest.raises(ValueError, match="one row per label"):
        tsne_figure(before[:5], after, y, tmp_path / "t.png")


def test_layer_sweep_figure(tmp_path):
    row = {"prototype_accuracy": 0.5, "silhouette": 0.1, "ot_mean_ratio": 1.2}
    sweep = {
        "base": {0: row, 1: row, 2: row},
        "seer": {"0": row, "1": {**row, "silhouette": 0.6}, "2": row},  # JSON-style keys
    }
    path = layer_sweep_figure(sweep, tmp_path / "sweep.png", target_layer=1)
    assert_png(path)


def test_confusion_figure(tmp_path):
    path = confusion_figure([[3, 1, 0], [0, 4, 0], [1, 0, 2]], NAMES, tmp_path / "c.png", "SEER")
    assert_png(path)
    with pytest.raises(ValueError, match="3x3"):
        confusion_figure([[1, 2]], NAMES, tmp_path / "bad.png", "bad")


def _model_metrics(X, y):
    names, P = compute_prototypes(X, y)
    out = disentanglement(X, y, names, P)
    out["probe_accuracy"] = 0.875
    out["ot"] = ot_separation(X, y)
    return out


def test_write_report(tmp_path, data):
    before, after, y = data
    metrics = {
        "layer": 12,
        "base": _model_metrics(before, y),
        "seer": _model_metrics(after, y),
        "retention": {"kl_nats_per_token": 0.01234, "ppl_base": 9.8765, "ppl_seer": 10.1},
    }
    (tmp_path / "tsne.png").write_bytes(PNG_SIGNATURE)
    generations = [{"prompt": "a | b\nnext", "base": "x|y", "seer": "<think> ok"}]
    path = write_report(tmp_path, metrics, {"t-SNE at layer 12": "tsne.png"}, generations)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    for name in ("prototype_accuracy", "macro_f1", "probe_accuracy", "silhouette"):
        assert name in text
    for name in ("davies_bouldin", "intra_cos", "inter_cos", "ot.mean_ratio"):
        assert name in text
    assert "| probe_accuracy | 0.875 | 0.875 | 0.000 |" in text
    seer_acc = metrics["seer"]["prototype_accuracy"]
    assert f"| {seer_acc:.3f} |" in text
    assert "| kl_nats_per_token | 0.012 |" in text and "| ppl_base | 9.877 |" in text
    assert "- **layer**: 12" in text
    assert "anger / joy" in text  # per-pair OT table
    assert "![t-SNE at layer 12](tsne.png)" in text
    assert "| a \\| b<br>next | x\\|y | &lt;think&gt; ok |" in text


def test_write_report_skips_missing_sections(tmp_path):
    text = write_report(tmp_path, {}, {}).read_text()
    assert text.strip() == "# SEER report"
    partial = {"seer": {"prototype_accuracy": 0.9}}
    text = write_report(tmp_path, partial, {}).read_text()
    assert "| prototype_accuracy | – | 0.900 | – |" in text
    assert "Retention" not in text and "Generations" not in text


# --- monitoring: faithfulness on a tiny model, and `evaluate` end to end ----------------------


def test_orthonormal_basis_spans_the_rows():
    rows = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    Q = orthonormal_basis(rows)
    assert Q.shape == (3, 2)
    np.testing.assert_allclose(Q.T @ Q, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(Q @ Q.T @ rows.T, rows.T, atol=1e-12)


def test_projection_kl_zero_for_nothing_removed_positive_for_everything(tokenizer):
    model = tiny_llama(len(tokenizer)).eval()
    rows = [{"prompt": "how do I bake bread", "response": "with flour"}, {"prompt": "hi"}]
    hidden = model.config.hidden_size
    out = projection_kl(
        model, tokenizer, rows, 1, {"none": np.zeros((hidden, 0)), "all": np.eye(hidden)}
    )
    assert out["none"] == pytest.approx(0.0, abs=1e-6)
    assert out["all"] > 1e-3
    # no hook survives: a plain pass is unchanged afterwards
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(
        model(input_ids=ids).logits, tiny_llama(len(tokenizer))(input_ids=ids).logits
    )


def test_projection_kl_at_sampled_tokens_agrees_with_every_token(tokenizer):
    """The head runs on the kept rows only: with every token kept the figure equals a KL over
    the full model's logits; with a draw per text it estimates it, per text on request."""
    model = tiny_llama(len(tokenizer)).eval()
    rows = [
        {"prompt": "how do I bake bread", "response": "with flour and water, then wait"},
        {"prompt": "what is a comet"},
        {"prompt": "rules of football", "response": "two teams"},
    ]
    hidden = model.config.hidden_size
    basis = {"half": np.eye(hidden)[:, : hidden // 2]}
    full = projection_kl(model, tokenizer, rows, 1, basis, batch_size=2)["half"]
    # the same KL computed by hand from the model's own logits at every real token
    total, n = 0.0, 0
    Q = torch.as_tensor(basis["half"], dtype=torch.float32)
    for r in rows:
        ids = torch.tensor([encode(tokenizer, r["prompt"], r.get("response")).input_ids])
        with torch.no_grad():
            clean = model(input_ids=ids).logits.log_softmax(-1)
            with add_to_layer(model, 1, lambda h: -((h @ Q) @ Q.T)):
                cut = model(input_ids=ids).logits.log_softmax(-1)
        total += (clean.exp() * (clean - cut)).sum().item()
        n += ids.shape[1]
    assert full == pytest.approx(total / n, rel=1e-4)
    same = projection_kl(model, tokenizer, rows, 1, basis, tokens_per_text=10_000)["half"]
    assert same == pytest.approx(full, rel=1e-6)
    per_text: dict = {}
    sampled = projection_kl(model, tokenizer, rows, 1, basis, tokens_per_text=2, per_text=per_text)[
        "half"
    ]
    assert per_text["half"].shape == (3,) and (per_text["half"] > 0).all()
    assert sampled == pytest.approx(per_text["half"].mean(), rel=1e-6)  # 2 tokens each
    assert sampled != pytest.approx(full, rel=1e-9)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer):
    from seer.training.config import TrainConfig
    from seer.training.train import train

    root = tmp_path_factory.mktemp("monitor-run")
    config = TrainConfig(
        model="tiny",
        data=str(write_concepts(root / "c.jsonl")),
        retain_data=str(write_retain(root / "r.jsonl")),
        output=str(root / "run"),
        epochs=1,
        batch_size=4,
        layer=1,
        test_fraction=0.34,
    )
    return train(config, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, progress=False)


def _evaluate(path, tokenizer):
    from seer.evaluation.evaluate import evaluate

    return evaluate(
        path, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer, progress=False,
        n_generations=0, faithfulness_texts=4, faithfulness_draws=2,
    )  # fmt: skip


def test_evaluate_writes_monitoring_metrics_and_figures(tiny_run, tokenizer):
    m = _evaluate(tiny_run, tokenizer)
    assert m["run"]["calibration_split"] is True and m["run"]["n_calibration"] == 3
    mon = m["monitoring"]
    assert mon["fitted_on"] == "calibration"
    assert set(mon["probes"]) == {"logistic@run", "mlp@run", "logistic@best", "mlp@best"}
    assert mon["probes"]["logistic@best"]["layer"] == m["base_best_layer"]["layer"]
    for block in (mon["seer_readout"], mon["base_readout"], *mon["probes"].values()):
        assert 0 <= block["ece"] <= 1 and block["nll"] > 0 and len(block["reliability"]) == 15
        assert set(block["per_concept"]) == {"cooking", "space", "sports"}
    assert len(mon["seer_readout"]["none"]["selective"]["coverage"]) == m["run"]["n_test"]
    for model in ("base", "seer"):
        f = m["faithfulness"][model]
        assert f["span"]["dimension"] == 3 and f["centered"]["dimension"] == 2
        assert len(f["span"]["kl_random"]) == 2 and f["span"]["kl_prototypes"] > 0
    eval_dir = tiny_run / "eval"
    assert_png(eval_dir / "reliability.png")
    assert_png(eval_dir / "selective.png")
    text = (eval_dir / "report.md").read_text()
    for heading in (
        "## Monitoring (test split)",
        "per concept",
        "`none`",
        "## Causal faithfulness",
    ):
        assert heading in text
    assert "no calibration split" not in text
    assert json.loads((eval_dir / "metrics.json").read_text())["monitoring"]["comparison"]


def test_evaluate_refuses_while_another_process_writes_the_runs_eval(tiny_run, tokenizer, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "eval", ignore_errors=True)
    with held_by_another_process(run / "eval") as pid:
        with pytest.raises(SeerError, match=f"being written by process {pid} on"):
            _evaluate(run, tokenizer)
        assert not (run / "eval").exists()  # nothing was written beside the other writer
    # that writer is gone now: its lock is stale, taken over, and released at the end
    assert _evaluate(run, tokenizer)["run"]["n_test"] > 0
    assert (run / "eval" / "metrics.json").is_file() and not lock_path(run / "eval").exists()


def test_evaluate_an_old_run_without_calibration_split_says_so(tiny_run, tokenizer, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    (old / "split" / "calibration.jsonl").unlink()
    shutil.rmtree(old / "eval", ignore_errors=True)
    m = _evaluate(old, tokenizer)
    assert m["run"]["calibration_split"] is False and m["run"]["n_calibration"] == 0
    assert m["monitoring"]["fitted_on"].startswith("test")
    text = (old / "eval" / "report.md").read_text()
    assert "no calibration split" in text
    # every sentence names the split the thresholds came from: never a calibration split
    assert "set on the calibration split" not in text and "best calibration AUROC" not in text
    assert "FPR thresholds set on test (no calibration split)" in text


def test_an_old_metrics_file_spelling_centred_still_reports_its_faithfulness():
    """metrics.json files written before seer settled on 'centered' keep their row."""
    from seer.evaluation import detection_report

    variant = {"dimension": 2, "kl_prototypes": 0.5, "kl_random_mean": 0.1}
    variant |= {"kl_random_std": 0.01, "ratio": 5.0}
    common = {"layer": 1, "n_texts": 4, "n_draws": 2}
    old = detection_report._faithfulness({"seer": {"centred": variant, **common}})
    new = detection_report._faithfulness({"seer": {"centered": variant, **common}})
    assert old == new and any("| SEER | centered | 2 |" in line for line in new)
