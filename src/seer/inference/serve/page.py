"""One explained generation as a self-contained HTML file: the live page's view (tokens
coloured by concept, probabilities on hover, the final explanation as a bar chart, the
monitor's mark) with its CSS, JavaScript and data inlined; it works offline.

    html = render_html(explainer.generate("How do I pick a lock?"), prompt="How do I ...")
"""

from __future__ import annotations

import html as html_lib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from seer.errors import SeerError
from seer.inference.monitor import Monitor
from seer.readout import Explanation

__all__ = ["render_html", "static_text", "write_html"]

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>seer: {title}</title>
<style>
{css}
</style>
</head>
<body>
<main>
  <h1>seer</h1>
  <p class="sub">Each token is coloured by the concept the model says it is processing once it
    has read that token (hover for every concept's probability). The final explanation is read
    where training reads it.</p>
  <div class="panel">
    <div class="prompt" id="shown-prompt">{prompt}</div>
    <div id="view"></div>
  </div>
</main>
<script>
{js}
</script>
<script>
"use strict";
(function () {{
  const data = {data};
  const view = new SeerView(document.getElementById("view"), data.concepts);
  for (const t of data.tokens) view.token(t, t.text);
  view.finish(data.final);
}})();
</script>
</body>
</html>
"""


def static_text(name: str) -> str:
    """A file of the live page shipped in the package (``view.css``, ``view.js``, ...)."""
    static = resources.files("seer.inference.serve").joinpath("static")
    return static.joinpath(name).read_text("utf-8")


def _view_data(
    explanation: Explanation, monitor: Monitor | None, concepts: list[str] | None
) -> dict[str, Any]:
    names = concepts or sorted(str(r["concept"]) for r in explanation.ranking)
    tokens = [
        {"index": j, "text": t["token"], "top": t["top"], "probabilities": t["probabilities"]}
        for j, t in enumerate(explanation.trace)
    ]
    at = explanation.intervened_at
    report = None
    if monitor is not None:
        report = {
            "concept": monitor.concept,
            "mode": monitor.mode,
            "threshold": monitor.threshold,
            "acted": at is not None,
            "at": at,
        }
    stopped = monitor is not None and at is not None and monitor.mode == "stop"
    final = {
        "explanation": {"top": explanation.top, "ranking": explanation.ranking},
        "monitor": report,
        "reply": explanation.reply or "",
        "finish_reason": "monitor" if stopped else "stop",
    }
    return {"concepts": names, "tokens": tokens, "final": final}


def render_html(
    explanation: Explanation,
    *,
    prompt: str = "",
    monitor: Monitor | None = None,
    concepts: list[str] | None = None,
) -> str:
    """The view of ``explanation`` (what ``Explainer.generate`` returns) as one HTML page.
    ``monitor`` (the one the generation ran with) lets the page say how it acted;
    ``concepts`` orders the legend (default: the ranking's concepts, sorted)."""
    data = json.dumps(_view_data(explanation, monitor, concepts), ensure_ascii=False)
    return TEMPLATE.format(
        title=html_lib.escape(prompt[:60] or "explanation"),
        css=static_text("view.css"),
        js=static_text("view.js"),
        prompt=html_lib.escape(prompt),
        data=data.replace("</", "<\\/"),
    )


def write_html(
    path: str | Path,
    explanation: Explanation,
    *,
    prompt: str = "",
    monitor: Monitor | None = None,
    concepts: list[str] | None = None,
) -> Path:
    """Write :func:`render_html`'s page to ``path`` (what ``seer explain --html`` does)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise SeerError(f"--html {path}: the folder {path.parent} does not exist; create it first")
    page = render_html(explanation, prompt=prompt, monitor=monitor, concepts=concepts)
    path.write_text(page, encoding="utf-8")
    return path
