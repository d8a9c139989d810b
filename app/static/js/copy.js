// "Copy" buttons: `data-copy` names the element whose text goes to the clipboard.
(function () {
  "use strict";
  function fallback(text) {
    // The Clipboard API exists only in secure contexts (https, localhost): elsewhere, a selected textarea.
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }

  document.body.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-copy]");
    if (!button) return;
    const text = document.getElementById(button.dataset.copy).textContent;
    let copied = false;
    try {
      if (navigator.clipboard) { await navigator.clipboard.writeText(text); copied = true; }
    } catch (err) { /* refused: try the old way */ }
    if (!copied) copied = fallback(text);
    button.textContent = copied ? "Copied" : "Select and copy by hand";
    setTimeout(() => { button.textContent = "Copy"; }, 2000);
  });
})();
