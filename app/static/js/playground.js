// The playground: queue a prompt (or a conversation's next message), then show the base's and the other model's
// text as it streams in. A run trained on messages rows gets a chat (data-mode="chat"): each side keeps its own
// history, sent whole with every message as `messages` (the other side's) and `base_answers` (the base's own).
(function () {
  "use strict";
  const form = document.getElementById("playground-form");
  if (!form) return;
  const chatMode = form.dataset.mode === "chat";
  const status = document.getElementById("playground-status");
  const error = document.getElementById("playground-error");
  const button = document.getElementById("generate");
  let source = null;

  // "Try an eval row": the next row the evaluation answered, with its expected answer shown beside both,
  // and the evaluation's answer length, so greedy answers match the run page's evaluation card.
  const tryRow = document.getElementById("try-eval-row");
  if (tryRow && !chatMode) {
    const examples = JSON.parse(document.getElementById("eval-examples").textContent);
    let next = 0;
    tryRow.addEventListener("click", () => {
      const example = examples[next % examples.length];
      next += 1;
      form.prompt.value = example.prompt;
      form.max_new_tokens.value = tryRow.dataset.maxNewTokens;
      document.getElementById("expected").textContent = example.expected;
      document.getElementById("expected-card").hidden = false;
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
    if (Array.isArray(body.detail)) {
      return body.detail.map((d) => {
        const where = d.loc.filter((part) => part !== "body").join(".");
        const message = String(d.msg).replace(/^Value error, /, "");
        return where && !message.startsWith(where) ? `${where}: ${message}` : message;
      }).join("; ");
    }
    return "the request was refused";
  }

  function sampling() {
    return {
      run_id: form.dataset.runId,
      compare: form.compare.value,
      temperature: Number(form.temperature.value),
      top_p: Number(form.top_p.value),
      max_new_tokens: Number(form.max_new_tokens.value),
      seed: Number(form.seed.value),
    };
  }

  // Queue `request`; stream each side's text into panes[side]. Resolves with the final texts, or null when
  // the request was refused or failed (the error is shown).
  async function generate(request, panes, titles, given) {
    if (source) source.close();
    error.hidden = true;
    panes.forEach((pane) => { pane.textContent = ""; pane.dataset.events = "0"; pane.dataset.done = ""; });
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
      return null;
    }
    const body = await reply.json();
    if (!reply.ok) { showError(detail(body)); return null; }
    const started = performance.now();
    const stream = new EventSource(body.events);
    source = stream;
    return new Promise((resolve) => {
      stream.addEventListener("start", (e) => {
        const start = JSON.parse(e.data);
        start.sides.forEach((label, i) => { titles[i].textContent = label; });
        (start.prompts || []).forEach((text, i) => { if (given) given[i].textContent = text; });
        status.textContent = "generating…";
      });
      stream.addEventListener("token", (e) => {
        const piece = JSON.parse(e.data);
        const pane = panes[piece.side];
        pane.textContent += piece.text;
        pane.dataset.events = String(Number(pane.dataset.events) + 1);
      });
      stream.addEventListener("done", (e) => {
        const done = JSON.parse(e.data);
        done.texts.forEach((text, i) => { panes[i].textContent = text; panes[i].dataset.done = "1"; });
        status.textContent = `done in ${((performance.now() - started) / 1000).toFixed(1)} s`;
        button.disabled = false;
        stream.close();
        resolve(done.texts);
      });
      stream.addEventListener("error", (e) => {
        if (e.data) { showError(JSON.parse(e.data).message); stream.close(); resolve(null); }
      });
    });
  }

  if (!chatMode) {
    const answers = [document.getElementById("answer-0"), document.getElementById("answer-1")];
    const titles = [document.getElementById("side-0-title"), document.getElementById("side-1-title")];
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      generate({ ...sampling(), prompt: form.prompt.value, chat: form.chat.checked }, answers, titles, null);
    });
    return;
  }

  // The chat: the turns so far, each side's own answers, and what the next request sends.
  const transcript = document.getElementById("transcript");
  const template = document.getElementById("exchange-template");
  let asked = [];  // the user's messages, in order
  let answered = [[], []];  // each side's answers, in order

  function conversation(message) {
    const system = form.system.value.trim() ? [{ role: "system", content: form.system.value }] : [];
    const turns = asked.flatMap((text, i) => [
      { role: "user", content: text },
      { role: "assistant", content: answered[1][i] },
    ]);
    return [...system, ...turns, { role: "user", content: message }];
  }

  function tooLong(messages) {
    // Said here so nothing typed is lost; the server holds the same bounds.
    const maxTurns = Number(form.dataset.maxTurns);
    const maxChars = Number(form.dataset.maxChars);
    if (messages.length > maxTurns) {
      return `this conversation would have ${messages.length} turns, more than the ${maxTurns} one request takes: ` +
        "press New chat to start again (your message is kept)";
    }
    const chars = messages.reduce((n, turn) => n + turn.content.length, 0) +
      answered[0].reduce((n, text) => n + text.length, 0);
    if (chars > maxChars) {
      return `this conversation would hold ${chars.toLocaleString("en")} characters, more than the ` +
        `${maxChars.toLocaleString("en")} one request takes: press New chat to start again (your message is kept)`;
    }
    return null;
  }

  function startedChat(started) {
    form.system.readOnly = started;  // part of every turn's history: fixed until New chat
    form.compare.disabled = started;  // the other side's history is that model's own answers
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = form.message.value;
    if (!message.trim()) { showError("message: type something to send"); return; }
    const messages = conversation(message);
    const problem = tooLong(messages);
    if (problem) { showError(problem); return; }
    const request = { ...sampling(), messages, base_answers: answered[0] };
    const exchange = template.content.firstElementChild.cloneNode(true);
    exchange.querySelector(".said").textContent = message;
    if (!asked.length && messages[0].role === "system") {
      const system = document.createElement("li");
      system.className = "turn-system";
      system.innerHTML = '<span class="who">system</span><pre class="said"></pre>';
      system.querySelector(".said").textContent = messages[0].content;
      transcript.append(system);
    }
    transcript.append(exchange);
    form.message.value = "";  // given back if the request fails
    startedChat(true);
    const panes = [...exchange.querySelectorAll(".answer")];
    const titles = [...exchange.querySelectorAll(".side-title")];
    const given = [...exchange.querySelectorAll(".given pre")];
    const texts = await generate(request, panes, titles, given);
    if (texts === null) {
      exchange.remove();
      if (!asked.length) { transcript.replaceChildren(); startedChat(false); }
      if (!form.message.value) form.message.value = message;
      return;
    }
    asked.push(message);
    texts.forEach((text, side) => answered[side].push(text));
  });

  form.message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); form.requestSubmit(); }
  });

  document.getElementById("new-chat").addEventListener("click", () => {
    if (source) source.close();
    asked = [];
    answered = [[], []];
    transcript.replaceChildren();
    startedChat(false);
    error.hidden = true;
    status.textContent = "";
    button.disabled = false;
    form.message.focus();
  });
})();
