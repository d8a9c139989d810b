// New-run presets: a click puts the preset's values into the fields it names, and nothing else (the
// dataset, its eval data and the regression prompts stay as they are). When the dataset changes, the eval
// data follows it: the sample's eval file for the sample, else a held-out share of the new dataset.
(function () {
  "use strict";
  function setField(form, name, value) {
    for (const input of form.querySelectorAll(`[name="${name}"]`)) {
      if (input.type === "hidden") continue;
      if (input.type === "checkbox") input.checked = value === true || value === "true";
      else input.value = value === null ? "" : value;
    }
  }

  document.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("button.preset");
    if (!button) return;
    const form = button.closest("form");
    const values = JSON.parse(document.getElementById("preset-values").textContent)[button.dataset.preset];
    for (const [name, value] of Object.entries(values)) setField(form, name, value);
    form.dispatchEvent(new Event("change", { bubbles: true }));
  });

  document.addEventListener("change", (e) => {
    const input = e.target;
    if (!input || input.name !== "dataset" || !input.form) return;
    const rule = JSON.parse(document.getElementById("eval-rule").textContent);
    const evalInput = input.form.querySelector('[name="eval_dataset"]');
    // A typed eval file of the user's own stays; the sample's (or none) follows the dataset.
    if (evalInput && evalInput.value && evalInput.value !== rule.sample.eval_dataset) return;
    const chosen = input.value.trim() === rule.sample_train ? rule.sample : rule.other;
    for (const [name, value] of Object.entries(chosen)) setField(input.form, name, value);
  });
})();
