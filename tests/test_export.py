import json
from pathlib import Path

import pytest
import torch
from conftest import PROMPT, tiny_llama
from transformers import AutoModelForCausalLM

from seer.core.run import load_trained
from seer.errors import SeerError
from seer.inference.explainer import Explainer
from seer.inference.export import export


@pytest.fixture(scope="module", params=["last", "mean"])
def run_dir(request):
    """The tiny run reading the last token, and the one reading the 'mean' span."""
    return request.getfixturevalue("trained_run" if request.param == "last" else "trained_mean_run")


@pytest.fixture(scope="module")
def exported(run_dir, tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    return export(run_dir, out, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)


def test_merged_logits_equal_adapter_logits(run_dir, exported, tokenizer):
    _, adapter_model, _ = load_trained(
        run_dir, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer
    )
    merged = AutoModelForCausalLM.from_pretrained(exported)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    for text in ("how do I bake bread", PROMPT, "rules of football and a recipe"):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            torch.testing.assert_close(
                merged(input_ids=ids).logits, adapter_model(input_ids=ids).logits, rtol=0, atol=1e-5
            )


def test_explainer_on_export_matches_run(run_dir, exported, tokenizer):
    meta = json.loads((exported / "seer.json").read_text())
    assert meta["base_fingerprint"] and meta["layer"] == 1 and meta["exported_from"]
    on_run = Explainer.from_run(run_dir, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    on_export = Explainer.from_run(exported)  # a plain folder: loads the merged model itself
    assert on_export.concepts == on_run.concepts
    for a, b in (
        (on_export.score(PROMPT, "very far"), on_run.score(PROMPT, "very far")),
        (on_export.generate(PROMPT, 4), on_run.generate(PROMPT, 4)),
    ):
        assert a.reply == b.reply and a.top == b.top
        assert [r["concept"] for r in a.ranking] == [r["concept"] for r in b.ranking]
        for x, y in zip(a.ranking, b.ranking, strict=True):
            assert x["cosine"] == pytest.approx(y["cosine"], abs=1e-5)


def docs_block(heading: str) -> str:
    """The first Python block under ``heading`` in docs/serving.md."""
    page = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
    section = page.read_text(encoding="utf-8").split(heading, 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_documented_hook_reads_the_explanation_of_an_export(exported):
    code = docs_block("## Serving an exported model")
    assert '"runs/bt-merged"' in code
    scope: dict = {}
    exec(code.replace('"runs/bt-merged"', repr(str(exported))), scope)  # noqa: S102
    expected = Explainer.from_run(exported).score(scope["prompt"], scope["reply"])
    assert scope["top"] == expected.top
    by_concept = {r["concept"]: r["cosine"] for r in expected.ranking}
    for concept, cos in zip(scope["meta"]["concepts"], scope["cos"].tolist(), strict=True):
        assert cos == pytest.approx(by_concept[concept], abs=1e-5)


def test_export_refuses_to_overwrite(run_dir, exported, tokenizer):
    with pytest.raises(SeerError, match="already exists"):
        export(run_dir, exported, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    with pytest.raises(SeerError, match="outside the run"):
        export(run_dir, run_dir / "merged", model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    (exported / "stale.txt").write_text("old")
    export(run_dir, exported, overwrite=True, model=tiny_llama(len(tokenizer)), tokenizer=tokenizer)
    assert not (exported / "stale.txt").exists() and (exported / "seer.json").is_file()
    assert [p.name for p in exported.parent.iterdir()] == ["merged"]  # no temporary folders left
