// seer serve's live page: streams /v1/chat/completions and renders it with SeerView.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let card = null;

  async function load() {
    const res = await fetch("/v1/models");
    card = (await res.json()).data[0];
    $("model").textContent = card.id;
    for (const id of ["monitor-concept", "monitor-towards"]) {
      for (const c of card.seer.concepts) {
        const o = document.createElement("option");
        o.value = o.textContent = c;
        $(id).append(o);
      }
    }
    new SeerView($("view"), card.seer.concepts);
  }

  function monitorSpec() {
    const mode = $("monitor-mode").value;
    if (mode === "default") return undefined;
    if (mode === "off") return null;
    const spec = { mode, concept: $("monitor-concept").value, threshold: Number($("monitor-threshold").value) };
    if (mode === "steer") spec.towards = $("monitor-towards").value;
    return spec;
  }

  function fail(message) {
    const p = document.createElement("p");
    p.className = "error";
    p.id = "error";
    p.textContent = message;
    $("view").append(p);
  }

  async function send(event) {
    event.preventDefault();
    const prompt = $("prompt").value;
    const body = {
      model: card.id, stream: true, max_tokens: Number($("max-tokens").value),
      messages: [{ role: "user", content: prompt }],
    };
    const spec = monitorSpec();
    if (spec !== undefined) body.seer = { monitor: spec };
    $("shown-prompt").textContent = prompt;
    const view = new SeerView($("view"), card.seer.concepts);
    $("send").disabled = true;
    $("status").textContent = "streaming\u2026";
    document.body.dataset.state = "streaming";
    try {
      const res = await fetch("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      if (!res.ok) {
        fail((await res.json()).error.message);
        return;
      }
      await read(res.body.getReader(), view);
    } catch (err) {
      fail(String(err));
    } finally {
      $("send").disabled = false;
      document.body.dataset.state = "done";
    }
  }

  async function read(reader, view) {
    const decoder = new TextDecoder();
    let buffer = "";
    let tokens = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) { fail(chunk.error.message); return; }
        const choice = chunk.choices[0];
        if (!choice || !chunk.seer) continue;
        if (chunk.seer.readout) {
          view.token(chunk.seer.readout, choice.delta.content || "");
          if (chunk.seer.readout.index >= 0) tokens += 1;
        }
        if (chunk.seer.explanation) {
          view.finish({ ...chunk.seer, reply: choice.delta.content || "", finish_reason: choice.finish_reason });
          $("status").textContent = `done: ${tokens} tokens, finish_reason ${choice.finish_reason}`;
        }
      }
    }
  }

  $("ask").addEventListener("submit", send);
  load().catch((err) => fail(`could not load /v1/models: ${err}`));
})();
