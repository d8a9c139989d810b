// The new-run form: fields that do not apply to the chosen method (or to a base that is not 4-bit) are
// hidden and disabled, so they are not submitted; which apply when comes from the server (data-methods,
// data-quantizations: app/web/forms.py). A picker fills the field beside it; after a refused submit, focus
// goes to the first field in error.
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

  document.addEventListener("change", (e) => {
    const target = e.target;
    if (!target || !target.form || target.form.id !== "run-form") return;
    if (target.classList.contains("picker")) {
      const input = document.getElementById(target.dataset.fill);
      if (input && target.value) {
        input.value = target.value;
        input.dispatchEvent(new Event("change", { bubbles: true }));
      }
      return;
    }
    if (target.name === "method" || target.name === "quantization") update(target.form);
  });

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("run-form");
    if (!form) return;
    update(form);
    focusFirstError(form);
  });

  // After the form's own submit is answered (not the estimate card's refreshes, which must not move focus).
  document.addEventListener("htmx:afterSettle", (e) => {
    const config = e.detail && e.detail.requestConfig;
    if (!config || config.path !== "/runs") return;
    const form = document.getElementById("run-form");
    if (!form) return;
    update(form);
    focusFirstError(form);
  });
})();
