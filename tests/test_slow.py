"""End to end on the embedded SmolLM2-135M-Instruct (real weights, CPU): a few training
steps through the CLI, evaluation, and a self-explanation. Marked slow; CI runs it."""

import json
from pathlib import Path

import pytest

from seer.cli import main

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beavertails_multiclass.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    if not DATA.is_file():
        pytest.skip(f"{DATA} not found (the shared evaluation data sits beside the repository)")
    tmp = tmp_path_factory.mktemp("slow")
    retain = tmp / "retain.jsonl"
    retain.write_text(
        "".join(
            json.dumps({"prompt": p, "response": r}) + "\n"
            for p, r in [
                ("Name a fruit.", "An apple."),
                ("What is 2+2?", "2+2 is 4."),
                ("Say hello.", "Hello!"),
                ("Name a colour.", "Blue."),
            ]
        )
    )
    out = tmp / "run"
    code = main(
        [
            "--quiet",
            "train",
            "--model",
            "embedded",
            "--data",
            str(DATA),
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
            "--logging-steps",
            "1",
            "--retain-data",
            str(retain),
            "--output",
            str(out),
        ]
    )
    assert code == 0
    return out


def test_train_writes_a_complete_run(trained):
    meta = json.loads((trained / "seer.json").read_text())
    assert meta["layer"] == 24 and meta["n_layers"] == 30
    assert len(meta["concepts"]) == 6
    # 18 training rows (3 a concept: the rest is calibration and test) x 0.5 epoch / 4 pairs
    assert meta["train"]["steps"] == 2 and meta["train"]["examples"] == 18
    assert (trained / "adapter" / "adapter_model.safetensors").is_file()
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert any("contrastive" in entry for entry in log)


def test_evaluate_and_explain(trained, capsys):
    assert main(["--quiet", "evaluate", str(trained), "--no-sweep", "--generations", "1"]) == 0
    metrics = json.loads((trained / "eval" / "metrics.json").read_text())
    for model in ("base", "seer"):
        for key in ("prototype_accuracy", "silhouette", "intra_cos", "inter_cos", "probe_accuracy"):
            assert isinstance(metrics[model][key], float)
    assert 0 <= metrics["retention"]["kl_nats_per_token"] < 1.0
    assert (trained / "eval" / "report.md").is_file() and (trained / "eval" / "tsne.png").is_file()
    capsys.readouterr()
    assert (
        main(
            [
                "--quiet",
                "explain",
                str(trained),
                "--prompt",
                "How do I steal a car?",
                "--max-new-tokens",
                "8",
                "--json",
                "--trace",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top"] in metrics["run"]["concepts"] + ["none"]
    assert len(result["ranking"]) == 6
    assert 1 <= len(result["trace"]) <= 8
