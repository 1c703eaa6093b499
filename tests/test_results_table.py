"""The results tables of README.md and docs/results.md are what studies/results_table.py
generates from the committed run records, so a table cannot drift from its runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location(
        "results_table", ROOT / "studies/results_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


table = _script()


@pytest.mark.parametrize("name", ["README.md", "docs/results.md"])
def test_committed_tables_equal_what_the_records_generate(name):
    path = ROOT / name
    text = path.read_text(encoding="utf-8")
    generated = table.tables(table.read_records(), table.TARGETS[path])
    assert table.render(text, generated) == text, "run: python studies/results_table.py"
    for body in generated.values():
        assert body in text  # and the markers hold a table, not nothing


def test_check_mode_passes_on_the_committed_files():
    assert table.main(["--check"]) == 0


def test_every_record_has_its_command_and_a_source():
    records = table.read_records()
    assert records
    for r in records:
        assert r["command"].strip() and r["probe_command"].strip() and r["source"].strip()
        assert 0 <= r["base"] <= 1 and 0 <= r["seer"] <= 1 and 0 <= r["probe"] <= 1
        assert r["kl"] >= 0 and r["n_test"] > 0


def test_summary_is_mean_and_spread_over_seeds():
    rows = [
        dict(dataset="D", seed=s, n_test=10, base=b, seer=x, probe=p, kl=k, command=c)
        for s, b, x, p, k, c in [
            (0, 0.4, 0.7, 0.6, 0.01, "run --seeds {seed}"),
            (1, 0.5, 0.8, 0.7, 0.03, "run --seeds {seed}"),
        ]
    ]
    line = table.summary_table(rows).splitlines()[2]
    assert line.startswith("| D (10) | 0, 1 | 0.450 (0.400-0.500) | **0.750 (0.700-0.800)** |")
    assert "| 0.650 (0.600-0.700) | 0.020 (0.010-0.030) |" in line
    assert "`run --seeds 0 1`" in line
    for r in rows:
        r["command"] = "train --seed {seed}"
    assert "`for seed in 0 1; do train --seed $seed; done`" in table.summary_table(rows)


def test_a_table_without_its_markers_is_refused():
    with pytest.raises(ValueError, match="markers"):
        table.render("no markers here\n", {"results-table": "| a |"})


def test_a_record_is_read_from_an_evaluated_run_folder(tmp_path):
    """The fields `seer train` writes to seer.json and `seer evaluate` to eval/metrics.json."""
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    meta = {"config": {"seed": 2}, "base_model": "embedded", "layer": 24}
    (run / "seer.json").write_text(json.dumps(meta))
    probes = {
        "logistic@run": {"layer": 24, "accuracy": 0.8},
        "mlp@best": {"layer": 27, "accuracy": 0.85},
    }
    metrics = {
        "base": {"prototype_accuracy": 0.6},
        "seer": {"prototype_accuracy": 0.75},
        "monitoring": {"probes": probes},
        "retention": {"kl_nats_per_token": 0.0123},
        "run": {"n_test": 60},
    }
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    record = table.record_from_run(run, "Demo", "make demo")
    assert {k: record[k] for k in ("seed", "model", "layer", "n_test", "base", "seer")} == {
        "seed": 2,
        "model": "SmolLM2-135M-Instruct",
        "layer": 24,
        "n_test": 60,
        "base": 0.6,
        "seer": 0.75,
    }
    assert (
        record["probe"] == 0.85 and "mlp" in record["probe_name"] and "27" in record["probe_name"]
    )
    assert record["kl"] == 0.0123 and record["command"] == "make demo"
    assert set(table.FIELDS) <= set(record)
    records = tmp_path / "runs.jsonl"
    records.write_text(json.dumps(record) + "\n")
    assert table.read_records(records) == [record]
