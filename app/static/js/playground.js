// The playground: queue a prompt, then show the base's and the other model's text as it streams in.
(function () {
  "use strict";
  const form = document.getElementById("playground-form");
  if (!form) return;
  const status = document.getElementById("playground-status");
  const error = document.getElementById("playground-error");
  const button = document.getElementById("generate");
  const answers = [document.getElementById("answer-0"), document.getElementById("answer-1")];
  const titles = [document.getElementById("side-0-title"), document.getElementById("side-1-title")];
  let source = null;

  // "Try an eval row": the next row the evaluation answered, with its expected answer shown beside both,
  // and the evaluation's answer length, so greedy answers match the run page's evaluation card.
  const tryRow = document.getElementById("try-eval-row");
  if (tryRow) {
    const examples = JSON.parse(document.getElementById("eval-examples").textContent);
    let next = 0;
    let shownFor = null; // the prompt whose expected answer the card shows
    tryRow.addEventListener("click", () => {
      const example = examples[next % examples.length];
      next += 1;
      form.prompt.value = example.prompt;
      shownFor = example.prompt;
      form.max_new_tokens.value = tryRow.dataset.maxNewTokens;
      document.getElementById("expected").textContent = example.expected;
      document.getElementById("expected-card").hidden = false;
    });
    // The expected answer belongs to the eval row's prompt: a prompt of the user's own has none.
    form.prompt.addEventListener("input", () => {
      const card = document.getElementById("expected-card");
      if (form.prompt.value !== shownFor) card.hidden = true;
    });
  }

  function showError(message) {
    error.textContent = message;
    error.hidden = false;
    status.textContent = "";
    button.disabled = false;
  }

  function detail(body) {
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${d.loc.slice(-1)[0]}: ${d.msg}`).join("; ");
    return "the request was refused";
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (source) source.close();
    error.hidden = true;
    answers.forEach((pane) => { pane.textContent = ""; pane.dataset.events = "0"; pane.dataset.done = ""; });
    const request = {
      run_id: form.dataset.runId,
      prompt: form.prompt.value,
      compare: form.compare.value,
      chat: form.chat.checked,
      temperature: Number(form.temperature.value),
      top_p: Number(form.top_p.value),
      max_new_tokens: Number(form.max_new_tokens.value),
      seed: Number(form.seed.value),
    };
    button.disabled = true;
    status.textContent = "queued…";
    let reply;
    try {
      reply = await fetch("/api/v1/playground", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(request),
      });
    } catch (e) {
      showError("the server did not answer: " + e);
      return;
    }
    const body = await reply.json();
    if (!reply.ok) { showError(detail(body)); return; }
    const started = performance.now();
    source = new EventSource(body.events);
    source.addEventListener("start", (e) => {
      JSON.parse(e.data).sides.forEach((label, i) => { titles[i].textContent = label; });
      status.textContent = "generating…";
    });
    source.addEventListener("token", (e) => {
      const piece = JSON.parse(e.data);
      const pane = answers[piece.side];
      pane.textContent += piece.text;
      pane.dataset.events = String(Number(pane.dataset.events) + 1);
    });
    source.addEventListener("done", (e) => {
      const done = JSON.parse(e.data);
      done.texts.forEach((text, i) => { answers[i].textContent = text; answers[i].dataset.done = "1"; });
      status.textContent = `done in ${((performance.now() - started) / 1000).toFixed(1)} s`;
      button.disabled = false;
      source.close();
    });
    source.addEventListener("error", (e) => {
      if (e.data) { showError(JSON.parse(e.data).message); source.close(); }
    });
  });
})();
