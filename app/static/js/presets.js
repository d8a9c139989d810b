// New-run presets: a click puts the preset's values into the fields it names, and nothing else (the
// dataset, its eval data and the regression prompts stay as they are). When the dataset changes, the fields
// that follow it (its eval data, and the schedule: a bundled sample's recipe for that sample, RunSpec's
// defaults for any other file; app/web/form_presets.py dataset_defaults) take the new dataset's values, except
// where the user set them: a field the user typed in, or that holds no dataset's default, stays. A preset that
// leaves something to the user (the run to continue) says so below the presets. When the objective changes, the
// fields it sets defaults for (GRPO: loss_type, beta, a learning rate; form_presets.py proposals) follow it the
// same way.
(function () {
  "use strict";
  function setField(form, name, value) {
    for (const input of form.querySelectorAll(`[name="${name}"]`)) {
      if (input.type === "hidden") continue;
      if (input.type === "checkbox") input.checked = value === true || value === "true";
      else input.value = value === null ? "" : value;
    }
  }

  function fieldInput(form, name) {
    return form.querySelector(`[name="${name}"]:not([type=hidden])`);
  }

  function same(value, expected) {
    const text = String(value).trim(), wanted = expected === null ? "" : String(expected);
    if (text === wanted) return true;
    // 0.003 and 3e-3 are one learning rate.
    return text !== "" && wanted !== "" && !isNaN(Number(text)) && Number(text) === Number(wanted);
  }

  // Whether the field still holds a default of a dataset kind (a bundled sample, or any other file) or of an
  // objective, untouched by the user.
  function follows(input, rule, objectives) {
    if (!input || input.dataset.typed) return false;
    const kinds = [...Object.values(rule.samples), rule.other, rule.spec];
    for (const o of Object.values(objectives || {})) kinds.push(o.spec_defaults, o.defaults);
    return kinds.some((values) => values && same(input.value, values[input.name]));
  }

  document.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("button.preset");
    if (!button) return;
    const form = button.closest("form");
    const values = JSON.parse(document.getElementById("preset-values").textContent)[button.dataset.preset];
    for (const [name, value] of Object.entries(values)) setField(form, name, value);
    form.dispatchEvent(new Event("change", { bubbles: true }));
    const note = document.getElementById("preset-note");
    const notes = JSON.parse(document.getElementById("preset-notes").textContent);
    if (note) {
      note.textContent = notes[button.dataset.preset] || "";
      note.hidden = !notes[button.dataset.preset];
    }
  });

  // What the user types themselves is theirs: a dataset change leaves it alone.
  document.addEventListener("input", (e) => {
    const input = e.target;
    // (Our own scripts send only change events, never input.)
    if (input && input.form && input.form.id === "run-form" && input.name) input.dataset.typed = "1";
  });

  // A bundled dataset the user did not choose follows the objective (the SFT sample for sft, its pairs for dpo,
  // orpo, kto); the dataset's change then brings its recipe, as below.
  document.addEventListener("change", (e) => {
    const input = e.target;
    if (!input || input.name !== "objective" || !input.form) return;
    const dataset = fieldInput(input.form, "dataset");
    const bundled = JSON.parse(document.getElementById("dataset-rule").textContent).objective_datasets;
    const wanted = bundled[input.value];
    if (!dataset || dataset.dataset.typed || !wanted || dataset.value.trim() === wanted) return;
    if (!Object.values(bundled).includes(dataset.value.trim())) return;
    setField(input.form, "dataset", wanted);
    dataset.dispatchEvent(new Event("change", { bubbles: true }));
  });

  // After the dataset has followed the objective (above): the objective's own defaults and proposals, else what
  // the dataset proposes, else RunSpec's default, in each field that still holds a default.
  document.addEventListener("change", (e) => {
    const input = e.target;
    if (!input || input.name !== "objective" || !input.form) return;
    const objectives = JSON.parse(document.getElementById("objective-rule").textContent);
    const chosen = objectives[input.value];
    if (!chosen) return;
    const rule = JSON.parse(document.getElementById("dataset-rule").textContent);
    const datasetInput = fieldInput(input.form, "dataset");
    const dataset = datasetInput ? datasetInput.value.trim() : "";
    const given = rule.samples[dataset] || rule.other;
    const recipe = rule.recipe_objectives[dataset] === input.value ? given : chosen.defaults;
    const proposed = Object.assign({}, chosen.spec_defaults, recipe);
    for (const name of Object.keys(rule.spec)) {
      const field = fieldInput(input.form, name);
      if (!follows(field, rule, objectives)) continue;
      const value = name in proposed ? proposed[name] : name in given ? given[name] : rule.spec[name];
      if (field.tagName === "SELECT" && !Array.from(field.options).some((o) => o.value === String(value))) continue;
      setField(input.form, name, value);
    }
  });

  document.addEventListener("change", (e) => {
    const input = e.target;
    if (!input || input.name !== "dataset" || !input.form) return;
    const form = input.form;
    const rule = JSON.parse(document.getElementById("dataset-rule").textContent);
    const chosen = rule.samples[input.value.trim()] || rule.other;
    // The eval file and the held-out share go together: an eval file of the user's own keeps both as they are.
    const evalKept = !follows(fieldInput(form, "eval_dataset"), rule);
    for (const [name, value] of Object.entries(chosen)) {
      if (evalKept && (name === "eval_dataset" || name === "eval_split")) continue;
      const field = fieldInput(form, name);
      // A split beside the sample's eval file would be refused: it goes to 0 with the file.
      const forced = name === "eval_dataset" || (name === "eval_split" && chosen.eval_dataset);
      if (field && (forced || follows(field, rule))) setField(form, name, value);
    }
  });
})();
