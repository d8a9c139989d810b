// GRPO's run page: the completions the policy wrote for one prompt at a training step, each with its weighted
// reward and each reward function's score (app.contracts.events.SamplesEvent). The newest comes from the API when
// the page opens; run.js hands over each live `samples` event. An older event never replaces a newer one (the API's
// answer may arrive after the stream's).
(function () {
  "use strict";
  window.loradeck = window.loradeck || {};
  const card = document.getElementById("samples-card");
  let shown = -1;
  const score = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));

  function cell(text, label, tag) {
    const td = document.createElement("td");
    td.dataset.label = label;
    const el = document.createElement(tag || "span");
    el.textContent = text;
    td.append(el);
    return td;
  }

  window.loradeck.showSamples = function (event) {
    if (!card || !event || !Array.isArray(event.completions) || event.step < shown) return;
    shown = event.step;
    document.getElementById("samples-empty").hidden = true;
    document.getElementById("samples").hidden = false;
    document.getElementById("samples-step").textContent = event.step;
    document.getElementById("samples-prompt").textContent = event.prompt;
    const hasReference = event.reference !== null && event.reference !== undefined;
    document.getElementById("samples-reference-block").hidden = !hasReference;
    document.getElementById("samples-reference").textContent = hasReference ? event.reference : "";
    const rewards = event.completions.map((c) => c.reward);
    const mean = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
    document.getElementById("samples-mean").textContent = score(mean);
    const body = document.querySelector("#samples-completions tbody");
    body.textContent = "";
    for (const completion of event.completions) {
      const tr = document.createElement("tr");
      tr.className = "sample";
      const each = Object.entries(completion.rewards || {}).map(([name, v]) => `${name.replace(/_/g, " ")} ${score(v)}`);
      const scores = cell(each.join(" · "), "each reward");
      scores.className = "reward-scores";
      tr.append(cell(completion.text, "completion", "pre"), cell(score(completion.reward), "reward"), scores);
      body.append(tr);
    }
    card.dataset.step = String(event.step);
  };

  async function load() {
    const root = document.getElementById("run");
    if (!card || !root) return;
    const response = await fetch(`/api/v1/runs/${root.dataset.runId}/samples?limit=1`);
    if (!response.ok) return;
    const found = (await response.json()).samples;
    if (found.length) window.loradeck.showSamples(found[found.length - 1]);
  }
  load();
})();
