// What a run's checkpoints offer on the run page: the cancel dialog names those that exist now (the page
// may have been drawn before they were saved), and a finished run's checkpoint buttons call the JSON API
// ("Resume from checkpoint N", "Use checkpoint N as the adapter").
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const runId = root.dataset.runId;

  // --- the cancel dialog --------------------------------------------------------------------------
  function nameCheckpoints(names) {
    const span = document.getElementById("cancel-checkpoints");
    if (span) span.textContent = names.length ? names.join(", ") : "none saved yet";
  }

  async function fetchCheckpoints() {
    const span = document.getElementById("cancel-checkpoints");
    if (!span) return;
    const response = await fetch(span.dataset.url);
    if (response.ok) nameCheckpoints((await response.json()).map((c) => c.name));
  }

  // The dialog is in the run's actions, drawn again when the status changes: listen on the document. A toggle
  // event does not bubble, so it is caught on its way down.
  document.addEventListener("toggle", (e) => {
    if (e.target.id === "cancel-form" && e.target.open) fetchCheckpoints();
  }, true);
  // A checkpoint event refreshes the artifacts panel, whose table lists the checkpoints on disk.
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (e.target.id !== "artifacts") return;
    const rows = e.target.querySelectorAll("#checkpoints tr[data-name]");
    if (rows.length) nameCheckpoints([...rows].map((row) => row.dataset.name));
  });

  // --- resume, use as the adapter -------------------------------------------------------------------
  function showError(text) {
    const box = document.getElementById("checkpoint-error");
    if (box) { box.textContent = text; box.hidden = false; }
  }

  async function act(button) {
    const url = `/api/v1/runs/${runId}/checkpoints/${button.dataset.step}/${button.dataset.action}`;
    const buttons = document.querySelectorAll("#artifacts button[data-action]");
    buttons.forEach((b) => { b.disabled = true; });
    let response;
    try {
      response = await fetch(url, { method: "POST", headers: { Accept: "application/json" } });
    } catch (err) {
      response = null;
    }
    if (response && response.ok) {
      // A resumed run is queued again: the page starts over with it. A new adapter: the panel shows it.
      if (button.dataset.action === "resume") window.location.reload();
      else if (window.htmx) htmx.trigger(document.getElementById("artifacts"), "refresh");
      return;
    }
    buttons.forEach((b) => { b.disabled = false; });
    let detail = "the server could not be reached; try again";
    if (response) {
      try { detail = (await response.json()).detail; } catch (err) { detail = response.statusText; }
    }
    showError(typeof detail === "string" ? detail : JSON.stringify(detail));
  }

  document.body.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("#artifacts button[data-action]");
    if (button) act(button);
  });
})();
