"""``seer export``: a run folder as one standard Hugging Face model folder, adapter merged.

The folder loads with plain ``AutoModelForCausalLM.from_pretrained(out)`` (serve it with any
stack), and carries the run's ``seer.json`` and ``prototypes.safetensors``, so
``Explainer.from_run(out)`` works on it too. A server's own hook reads the explanation like
this (``positions == ["last"]``; for ``["mean"]``, the mean of the block's states from the
first token of the user's message, as docs/serving.md's recipe reads it; with two positions,
concatenate the normalized states at both, in the order of ``meta["positions"]``, and
divide by ``sqrt(2)``; a run trained with
``--representation centered`` also stores ``center`` ``[P, H]`` in ``prototypes.safetensors``:
subtract its row for each position before normalizing, as docs/serving.md's recipe does)::

    import json, torch, torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = json.load(open(f"{out}/seer.json"))  # layer, positions, concepts, calibration
    assert meta.get("readout", {"kind": "prototypes"})["kind"] == "prototypes"  # this recipe
    protos = F.normalize(load_file(f"{out}/prototypes.safetensors")["prototypes"], dim=-1)
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    seen = {}
    model.model.layers[meta["layer"]].register_forward_hook(  # block `layer`'s output
        lambda _m, _a, out: seen.update(h=out[0] if isinstance(out, tuple) else out))
    chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    text = tok.apply_chat_template(chat, tokenize=False)
    model(**tok(text, add_special_tokens=False, return_tensors="pt"))
    cos = protos @ F.normalize(seen["h"][0, -1].float(), dim=-1)  # 'last' = last token
    probs = torch.softmax(cos / meta["calibration"]["temperature"], dim=-1)
    known = cos.max() >= meta["calibration"]["threshold"]
    top = meta["concepts"][cos.argmax()] if known else "none"

(equivalently ``output_hidden_states=True`` and ``hidden_states[layer + 1]``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seer.core.folders import check_target, claim_output, replace_folder
from seer.core.run import load_trained, read_run
from seer.errors import SeerError
from seer.readout import readout_kind

__all__ = ["export"]

_COPIED = ("seer.json", "prototypes.safetensors")


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    *,
    model: PreTrainedModel | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Merge the run's LoRA adapter into its base model (float32, on the CPU) and write
    ``out_dir``: ``save_pretrained`` model and tokenizer, plus ``seer.json`` and
    ``prototypes.safetensors``. The folder is written under ``OUT.partial`` and renamed at
    the end, under the rule and lock of :mod:`seer.core.folders`. ``model``/``tokenizer``
    (the run's base model, already loaded) skip loading it; such a model is merged in place."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    base = [("the base model", read_run(run_dir).meta["base_model"])]  # never replaced either
    check_target(out_dir, overwrite, reading=[run_dir], flag="output folder", inputs=base)
    run, peft_model, tokenizer = load_trained(
        run_dir, model=model, tokenizer=tokenizer, device="cpu"
    )
    readout_kind(run.meta, run.path)  # a readout this seer cannot read is not exported
    merged = peft_model.merge_and_unload()
    merged.config.use_cache = True  # seer loads models with it off; serving wants it on
    with claim_output(
        out_dir, overwrite, reading=[run_dir], flag="output folder", inputs=base
    ) as claim:
        if any((claim.partial / name).exists() for name in ("checkpoints", "split")):
            raise SeerError(
                f"{claim.partial} holds an interrupted training run; finish it with `seer train "
                "--resume` or choose another output folder"
            )
        tmp = claim.start()  # replaces one left by a killed export: nothing to resume
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for name in _COPIED:
            shutil.copy2(run.path / name, tmp / name)
        meta = json.loads((tmp / "seer.json").read_text(encoding="utf-8"))
        meta["exported_from"] = str(run.path.resolve())
        (tmp / "seer.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return replace_folder(tmp, out_dir)
