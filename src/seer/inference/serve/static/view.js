// seer: the view of one explained generation, shared by the live page and `seer explain --html`.
// No dependencies, no build step. SeerView(root, concepts) renders into `root`:
//   view.token(readout, text)   one token coloured by its top concept (hover: probabilities)
//   view.finish(final)          the final explanation as a bar chart, the monitor's mark
"use strict";
(function (global) {
  const PALETTE = ["#74c0fc", "#ffa8a8", "#8ce99a", "#ffd43b", "#d0bfff", "#ffc078",
    "#63e6be", "#faa2c1", "#a5d8ff", "#c0eb75", "#e599f7", "#ffe066"];

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function colours(concepts) {
    const sorted = [...concepts].sort();
    const out = {};
    sorted.forEach((c, i) => { out[c] = PALETTE[i % PALETTE.length]; });
    return out;
  }

  function SeerView(root, concepts) {
    this.root = root;
    this.concepts = concepts;
    this.colour = colours(concepts);
    root.textContent = "";
    const legend = el("div", { class: "legend" });
    for (const c of concepts) {
      const item = el("span", { "data-concept": c });
      const sw = el("span", { class: "swatch" });
      sw.style.background = this.colour[c];
      item.append(sw, document.createTextNode(c));
      legend.append(item);
    }
    const none = el("span", { "data-concept": "none" });
    none.append(el("span", { class: "swatch none" }), document.createTextNode("none (below threshold)"));
    legend.append(none);
    this.reply = el("div", { class: "reply", id: "reply" });
    this.after = el("div", { class: "after" });
    this.tip = el("div", { class: "tip" });
    this.tip.hidden = true;
    root.append(legend, this.reply, this.after, this.tip);
  }

  SeerView.prototype.token = function (readout, text) {
    const promptEnd = readout.index < 0;
    if (!promptEnd && !text) return null;
    const span = el("span", { class: "tok", "data-index": readout.index, "data-top": readout.top },
      promptEnd ? "prompt end" : text);
    if (promptEnd) span.classList.add("prompt-end");
    if (readout.top === "none") span.classList.add("none");
    else span.style.background = this.colour[readout.top] || "#ddd";
    span.addEventListener("mouseenter", (e) => this.showTip(e, readout));
    span.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.reply.append(span);
    return span;
  };

  SeerView.prototype.showTip = function (event, readout) {
    const rows = Object.entries(readout.probabilities).sort((a, b) => b[1] - a[1]);
    const table = el("table");
    const head = el("tr");
    head.append(el("td", { colspan: 2 }, readout.index < 0 ? "at the prompt's end" :
      `token ${readout.index}: top ${readout.top}`));
    table.append(head);
    for (const [c, p] of rows) {
      const tr = el("tr");
      tr.append(el("td", {}, c), el("td", { class: "p" }, p.toFixed(3)));
      table.append(tr);
    }
    this.tip.textContent = "";
    this.tip.append(table);
    this.tip.hidden = false;
    const r = event.target.getBoundingClientRect();
    this.tip.style.left = `${Math.min(r.left, window.innerWidth - 220)}px`;
    this.tip.style.top = `${r.bottom + 6}px`;
  };

  // Mark where the monitor acted: after `at` generated tokens (0: at the prompt's end).
  SeerView.prototype.mark = function (monitor) {
    if (!monitor || !monitor.acted) return;
    const verb = monitor.mode === "watch" ? "would act" : monitor.mode === "steer" ? "steering" : "stopped";
    const label = `monitor ${verb}: ${monitor.concept} \u2265 ${monitor.threshold}`;
    const mark = el("span", { class: `mark ${monitor.mode}`, id: "monitor-mark", title: label }, label);
    const next = this.reply.querySelector(`.tok[data-index="${monitor.at}"]`);
    if (next) this.reply.insertBefore(mark, next); else this.reply.append(mark);
  };

  // final: {explanation: {top, ranking}, monitor, reply, finish_reason}
  SeerView.prototype.finish = function (final) {
    this.mark(final.monitor);
    const box = this.after;
    box.textContent = "";
    if (final.finish_reason === "monitor") {
      this.reply.classList.add("stopped");
      box.append(el("div", { class: "refusal", id: "refusal" }, final.reply));
    }
    const ex = final.explanation;
    box.append(el("h2", {}, "Final explanation"));
    const top = el("p", { class: "top", id: "final-top" }, "top concept: ");
    const b = el("b", {}, ex.top);
    if (ex.top !== "none") b.style.background = this.colour[ex.top];
    top.append(b);
    box.append(top);
    const bars = el("div", { class: "bars", id: "final-explanation" });
    for (const r of ex.ranking) {
      const track = el("div", { class: "track" });
      const bar = el("div", { class: "bar", "data-concept": r.concept });
      bar.style.width = `${(100 * r.probability).toFixed(1)}%`;
      bar.style.background = this.colour[r.concept];
      track.append(bar);
      bars.append(el("span", {}, r.concept), track,
        el("span", { class: "num" }, `p ${r.probability.toFixed(3)} \u00b7 cos ${r.cosine.toFixed(3)}`));
    }
    box.append(bars);
  };

  global.SeerView = SeerView;
})(window);
