// The new-run form: fields that do not apply to the chosen method (or to a base that is not 4-bit) are
// hidden and disabled, so they are not submitted; which apply when comes from the server (data-methods,
// data-quantizations: app/web/forms.py), after a preset too. A picker fills the field beside it and shows what
// the field holds; after a refused submit, focus goes to the first field in error.
(function () {
  "use strict";
  function applies(field, method, quantization) {
    const methods = field.dataset.methods, quantizations = field.dataset.quantizations;
    if (!methods && !quantizations) return true;
    return (!!methods && methods.split(" ").includes(method)) ||
      (!!quantizations && quantizations.split(" ").includes(quantization));
  }

  function update(form) {
    const method = form.querySelector('[name="method"]');
    const quantization = form.querySelector('[name="quantization"]');
    if (!method) return;
    for (const field of form.querySelectorAll(".field[data-field]")) {
      const on = applies(field, method.value, quantization ? quantization.value : "auto");
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
    update(form);
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
