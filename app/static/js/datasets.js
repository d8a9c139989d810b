// Datasets page: drag a file onto the drop zone (or pick one) and it uploads at once.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  const zone = document.getElementById("drop-zone");
  const input = document.getElementById("upload-file");
  const result = document.getElementById("upload-result");
  if (!form) return;

  async function upload() {
    if (!input.files.length) return;
    result.innerHTML = '<p class="muted">Checking every row…</p>';
    const response = await fetch("/datasets", { method: "POST", body: new FormData(form), headers: { "HX-Request": "true" } });
    const next = response.headers.get("HX-Redirect");
    if (next) { window.location.assign(next); return; }
    result.innerHTML = await response.text();
  }

  form.addEventListener("submit", (e) => { e.preventDefault(); upload(); });
  input.addEventListener("change", upload);
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  for (const name of ["dragenter", "dragover"]) zone.addEventListener(name, (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  for (const name of ["dragleave", "drop"]) zone.addEventListener(name, () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    if (!e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    upload();
  });
})();
