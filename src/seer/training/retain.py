"""The retain text of ``seer train --retain-data``: a file of prompts (and replies) the retain
losses keep the model's behaviour on. Without one, training uses the base model's general text
(:func:`seer.inference.general.general_text`)."""

from __future__ import annotations

from seer.core.data import load_table
from seer.errors import SeerError

__all__ = ["load_retain"]


def load_retain(path: str) -> list[dict]:
    rows = load_table(path, "--retain-data")
    out = []
    for row in rows:
        prompt = str(row.get("prompt") or row.get("text") or "").strip()
        response = str(row.get("response") or "").strip() or None
        if prompt:
            out.append({"prompt": prompt, "response": response})
    if not out:
        raise SeerError(f"{path}: no rows with a 'prompt' (or 'text') column value for retain text")
    return out
