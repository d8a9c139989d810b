// The estimate card's target_modules choices (attention only, all linear, with embeddings): a click puts the
// model's own module names into the form's target_modules field, and the change re-estimates.
(function () {
  "use strict";
  document.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("button.target-choice");
    if (!button) return;
    const input = document.getElementById("f-target_modules");
    if (!input) return;
    input.value = button.dataset.value;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  });
})();
