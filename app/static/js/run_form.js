// The new-run form: fields that do not apply to the chosen method (or to a base that is not 4-bit) are
// hidden and disabled, so they are not submitted (the same rule as app/web/forms.py field_applies); a picker
// fills the field beside it; after a refused submit, focus goes to the first field in error.
(function () {
  "use strict";
  const FOUR_BIT = ["bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"];

  function applies(field, method, quantization) {
    const name = field.dataset.field;
    if (FOUR_BIT.includes(name)) return method === "qlora" || quantization === "4bit";
    const methods = field.dataset.methods;
    return !methods || methods.split(" ").includes(method);
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
