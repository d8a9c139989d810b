// New-run presets: a click puts the preset's values into every field (the name stays as typed).
(function () {
  "use strict";
  document.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("button.preset");
    if (!button) return;
    const form = button.closest("form");
    const values = JSON.parse(document.getElementById("preset-values").textContent)[button.dataset.preset];
    for (const [name, value] of Object.entries(values)) {
      const inputs = form.querySelectorAll(`[name="${name}"]`);
      for (const input of inputs) {
        if (input.type === "hidden") continue;
        if (input.type === "checkbox") input.checked = value === true || value === "true";
        else input.value = value === null ? "" : value;
      }
    }
    form.dispatchEvent(new Event("change", { bubbles: true }));
  });
})();
