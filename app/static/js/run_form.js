// The new-run form: fields that do not apply to the chosen objective or method (or to a base that is not 4-bit)
// are hidden and disabled, so they are not submitted; which apply when comes from the server (data-objectives,
// data-methods, data-quantizations: app/web/forms.py field_applies), after a preset too. The methods and the
// dataset files (by their rows' shape) the objective does not take are disabled, saying why. A picker fills the
// field beside it and shows what the field holds; after a refused submit, focus goes to the first field in error.
(function () {
  "use strict";
  function listed(list, value) {
    return !!list && list.split(" ").includes(value);
  }

  function applies(field, objective, method, quantization) {
    const objectives = field.dataset.objectives, methods = field.dataset.methods;
    const quantizations = field.dataset.quantizations;
    if (objectives && !listed(objectives, objective)) return false;
    if (!methods && !quantizations) return true;
    return listed(methods, method) || listed(quantizations, quantization);
  }

  function objectiveRule() {
    const rule = document.getElementById("objective-rule");
    return rule ? JSON.parse(rule.textContent) : {};
  }

  // The choices the objective takes (its methods, its losses: options marked data-objectives); `changed`: the
  // objective was just chosen, so a choice it refuses gives way to its own default for the field, else to the first
  // it takes (on a refused submit, the refused choice stays shown beside its error).
  function followObjective(form, objective, changed) {
    const own = (objectiveRule()[objective] || {}).spec_defaults || {};
    for (const select of form.querySelectorAll("select:not(.picker)")) {
      if (!select.querySelector("option[data-objectives]")) continue;
      for (const option of select.options) {
        const off = !!option.dataset.objectives && !listed(option.dataset.objectives, objective);
        option.disabled = off && (changed || option.value !== select.value);
        option.hidden = option.disabled;
      }
      if (select.selectedOptions.length && select.selectedOptions[0].disabled) {
        const options = Array.from(select.options).filter((o) => !o.disabled);
        const chosen = options.find((o) => o.value === own[select.name]) || options[0];
        if (chosen) select.value = chosen.value;
      }
    }
    const rule = objectiveRule()[objective];
    if (!rule) return;
    for (const option of form.querySelectorAll("select.picker option[data-shape]")) {
      const off = !rule.shapes.includes(option.dataset.shape);
      option.disabled = off;
      option.textContent = option.dataset.label + (off ? ` · not for ${objective}: it trains on ${rule.needs} rows` : "");
    }
  }

  function update(form, objectiveChanged) {
    const method = form.querySelector('[name="method"]');
    const quantization = form.querySelector('[name="quantization"]');
    const objective = form.querySelector('[name="objective"]');
    if (!method) return;
    const chosen = objective ? objective.value : "sft";
    followObjective(form, chosen, objectiveChanged);
    for (const field of form.querySelectorAll(".field[data-field]")) {
      const on = applies(field, chosen, method.value, quantization ? quantization.value : "auto");
      field.hidden = !on;
      for (const input of field.querySelectorAll("input, select, textarea")) input.disabled = !on;
    }
    for (const section of form.querySelectorAll("fieldset.form-section")) {
      const on = Array.from(section.querySelectorAll(".field[data-field]")).some((f) => !f.hidden);
      section.hidden = !on;
      section.disabled = !on;
    }
  }

  function focusFirstError(root) {
    const first = root.querySelector(".field.has-error input:not([type=hidden]), .field.has-error select, .field.has-error textarea");
    if (first) first.focus();
  }

  // Each picker shows the choice its field holds, or its prompt when the field holds something else (a typed
  // path, or a value a preset or the dataset rule put there).
  function syncPickers(form) {
    for (const picker of form.querySelectorAll("select.picker")) {
      const input = document.getElementById(picker.dataset.fill);
      if (!input) continue;
      const match = Array.from(picker.options).find((o) => o.value && !o.disabled && o.value === input.value.trim());
      picker.value = match ? match.value : "";
    }
  }

  document.addEventListener("change", (e) => {
    const target = e.target;
    // A preset announces itself with a change of the whole form; a field, with its own.
    const form = target && (target.id === "run-form" ? target : target.form);
    if (!form || form.id !== "run-form") return;
    if (target.classList.contains("picker")) {
      const input = document.getElementById(target.dataset.fill);
      if (input && target.value) {
        input.value = target.value;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
      return;
    }
    // A preset may choose the objective too: the whole form's change counts as the objective's.
    update(form, target.name === "objective" || target === form);
    syncPickers(form);
  });

  document.addEventListener("input", (e) => {
    const target = e.target;
    if (target && target.form && target.form.id === "run-form" && !target.classList.contains("picker")) {
      syncPickers(target.form);
    }
  });

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("run-form");
    if (!form) return;
    update(form);
    syncPickers(form);
    focusFirstError(form);
  });

  // After the form's own submit is answered (not the estimate card's refreshes, which must not move focus).
  document.addEventListener("htmx:afterSettle", (e) => {
    const config = e.detail && e.detail.requestConfig;
    if (!config || config.path !== "/runs") return;
    const form = document.getElementById("run-form");
    if (!form) return;
    update(form);
    syncPickers(form);
    focusFirstError(form);
  });
})();
