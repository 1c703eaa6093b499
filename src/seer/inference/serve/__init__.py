"""``seer serve``: a SEER model behind an OpenAI-compatible HTTP API whose every streamed token
carries the model's self-explanation, with a live page at ``/``; and the same view of one
explanation as a self-contained HTML file (:func:`render_html`)."""

from typing import Any

from seer.inference.serve.page import render_html, write_html

__all__ = ["create_app", "render_html", "write_html"]


def __getattr__(name: str) -> Any:  # fastapi is an optional extra: import it only when asked for
    if name == "create_app":
        from seer.inference.serve.app import create_app

        return create_app
    raise AttributeError(name)
