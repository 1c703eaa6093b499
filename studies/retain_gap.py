"""Whether a trained run's drift on general text is a generalisation gap of its retain loss.

Training's retain terms see the run's ``retain.jsonl`` (by default the base model's answers
to 48 shipped instructions, each seen several times an epoch); the KL that ``seer evaluate``
and ``studies/study.py`` report is on the answers to 16 held-apart ``evaluation`` instructions.
This prints the trained model's ``KL(base || seer)`` (nats per real token, as
:func:`seer.evaluation.retention.retention` measures it) on both sets, one line per run: a KL
much lower on the training set than on the held-out one would say the retain loss fits its own
texts rather than the model's general behaviour.

    python studies/retain_gap.py runs/study/cosl6-bt6-s2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by seer train")
    args = parser.parse_args()

    from seer.core.tables import read_jsonl
    from seer.evaluation.retention import retention
    from seer.inference.explainer import Explainer
    from seer.inference.general import general_text

    torch.set_grad_enabled(False)
    for run in args.runs:
        explainer = Explainer.from_run(run)
        model, tok = explainer.model, explainer.tokenizer
        fingerprint = explainer.run.meta["base_fingerprint"]
        out = {}
        with model.disable_adapter():
            held_out = general_text(model, tok, fingerprint, "evaluation")
        for split, texts in (
            ("retain", read_jsonl(run / "retain.jsonl")),
            ("evaluation", held_out),
        ):
            kept = retention(model, tok, texts)
            out[split] = {
                "kl": round(kept["kl_nats_per_token"], 4),
                "texts": kept["n_texts"],
                "tokens": kept["n_tokens"],
            }
        print(json.dumps({"run": str(run), **out}), flush=True)


if __name__ == "__main__":
    main()
