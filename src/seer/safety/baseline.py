"""The base model's ``seer detox-eval`` scores and the settings they were made with:
``base.json`` records them, and ``--skip-base`` reuses a ``base.json`` only when they match
the current command's (the base model's replies do not depend on the run)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from seer.errors import SeerError

__all__ = ["base_settings", "reusable_base"]

logger = logging.getLogger(__name__)


def _sha256(text: str | bytes) -> str:
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def base_settings(
    bt: list[str], xst: list[str], judge_data: str | Path, max_new_tokens: int, fingerprint: str
) -> dict[str, Any]:
    """What the base model's scores depend on (``base.json`` records it; ``--skip-base``
    reuses a ``base.json`` only when it matches): the prompts, the reply length, the judge's
    training data and the base model."""
    return {
        "max_new_tokens": max_new_tokens,
        "bt_prompts": _sha256("\n".join(bt)),
        "xst_prompts": _sha256("\n".join(xst)),
        "judge_data": _sha256(Path(judge_data).read_bytes()),
        "base_fingerprint": fingerprint,
    }


# A base.json written before a setting was recorded was made with its default.
_DEFAULTS = {"refusal_rule": "strict"}

_SETTING_NAMES = {
    "max_new_tokens": "--max-new-tokens",
    "bt_prompts": "the BT prompts (--harmful, --limit, --seed)",
    "xst_prompts": "the XSTest prompts (--xstest, --limit, --seed)",
    "judge_data": "--judge-data",
    "base_fingerprint": "the base model",
    "refusal_rule": "--refusal-rule",
}


def reusable_base(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The ``base.json`` at ``path`` if it was made with ``settings``; ``None`` if there is
    none; a :class:`SeerError` if it was made with other (or unrecorded) settings."""
    if not path.is_file():
        logger.info("--skip-base: no %s to show; the base model is left out", path)
        return None
    try:
        base = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SeerError(
            f"{path} is corrupt ({type(exc).__name__}), so --skip-base cannot show it: run once "
            "without --skip-base to remake it"
        ) from exc
    made = base.get("settings") if isinstance(base, dict) else None
    if not isinstance(made, dict):
        raise SeerError(
            f"{path} does not record the settings it was made with (an earlier seer version "
            "wrote it), so --skip-base cannot tell whether it fits: run once without --skip-base"
        )
    differ = [
        name if key != "max_new_tokens" else f"{name} {made.get(key)} (now {settings[key]})"
        for key, name in _SETTING_NAMES.items()
        if key in settings and made.get(key, _DEFAULTS.get(key)) != settings[key]
    ]
    if differ:
        raise SeerError(
            f"{path} was made with other settings: {'; '.join(differ)}. Run without "
            "--skip-base to remake it, or with the settings it was made with"
        )
    logger.info("base model: reusing %s (--skip-base)", path)
    return base
