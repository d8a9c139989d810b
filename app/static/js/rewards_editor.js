// The rewards of a GRPO run in the new-run form, as a table: one row per reward (its function, its weight, the
// parameters that function takes, its definition below it); rows are added and removed. The form submits the JSON
// textarea beside it (field `rewards`), which the table keeps in step, and which a page without this script edits
// directly; typing valid JSON there redraws the table. The functions, their definitions and their parameters come
// from the server (#reward-rule: app.objectives.rewards), which also judges every value when the form is sent.
(function () {
  "use strict";
  const PARAMETER_LABELS = {
    pattern: "pattern",
    texts: "texts, one a line",
    field_weights: "field weights (name=weight, …)",
    min_tokens: "min tokens",
    max_tokens: "max tokens",
  };
  const KNOWN = ["function", "weight", "pattern", "texts", "field_weights", "min_tokens", "max_tokens"];

  function ruleOf() {
    const el = document.getElementById("reward-rule");
    return el ? JSON.parse(el.textContent) : null;
  }

  function parse(text) {
    try {
      const value = JSON.parse(text);
      if (Array.isArray(value) && value.every((r) => r && typeof r === "object" && !Array.isArray(r))) return value;
    } catch (err) { /* not JSON: the textarea stays open, the server says why */ }
    return null;
  }

  const number = (text) => (text.trim() !== "" && !isNaN(Number(text)) ? Number(text) : text);

  function weightsText(weights) {
    if (!weights || typeof weights !== "object") return "";
    return Object.entries(weights).map(([name, w]) => `${name}=${w}`).join(", ");
  }

  function weightsOf(text) {
    const weights = {};
    for (const part of text.split(",")) {
      if (!part.trim()) continue;
      const at = part.indexOf("=");
      // A field named alone weighs 1; a weight that is not a number goes as written, for the server to refuse.
      if (at < 0) weights[part.trim()] = 1;
      else weights[part.slice(0, at).trim()] = number(part.slice(at + 1));
    }
    return weights;
  }

  function setUp(editor) {
    const textarea = document.getElementById("f-rewards");
    const rule = ruleOf();
    if (!textarea || !rule || editor.dataset.ready) return;
    editor.dataset.ready = "1";
    editor.hidden = false;
    const details = textarea.closest("details");
    let rows = [];
    let written = null; // the JSON this editor last wrote, to tell it from the user's or a preset's

    const table = document.createElement("table");
    table.className = "reward-table";
    table.innerHTML = "<thead><tr><th>Function</th><th>Weight</th><th>Parameters</th><th></th></tr></thead><tbody></tbody>";
    const body = table.querySelector("tbody");
    const note = document.createElement("p");
    note.className = "error reward-json-problem";
    note.setAttribute("role", "status");
    note.hidden = true;
    const add = document.createElement("button");
    add.type = "button";
    add.className = "add-reward";
    add.textContent = "Add a reward";
    editor.append(table, add, note);
    // Every definition at once is the page without this script's help; here each row says its own.
    const help = document.getElementById("h-rewards");
    if (details && help) details.append(help);

    function load(text) {
      const parsed = parse(text);
      note.hidden = parsed !== null;
      note.textContent = parsed === null ? "The JSON below is not a list of rewards: fix it there, or add rows here to start again." : "";
      if (parsed === null) {
        if (details) details.open = true;
        rows = [];
      } else {
        rows = parsed.map((r) => Object.assign({}, r));
      }
      draw();
    }

    function write() {
      const out = rows.map((row) => {
        const takes = rule.parameters[row.function] || [];
        const item = { function: row.function, weight: row.weight === undefined ? 1 : row.weight };
        for (const name of takes) {
          if (name === "field_weights" && (!row.field_weights || !Object.keys(row.field_weights).length)) continue;
          if (row[name] !== undefined) item[name] = row[name];
          else if (name === "pattern") item.pattern = "";
          else if (name === "texts") item.texts = [];
        }
        // What the editor does not know (typed in the JSON) goes on as typed: the server names it.
        for (const [key, value] of Object.entries(row)) if (!KNOWN.includes(key)) item[key] = value;
        return item;
      });
      written = out.length ? "[\n  " + out.map((r) => JSON.stringify(r)).join(",\n  ") + "\n]" : "[]";
      textarea.value = written;
      note.hidden = true;
      textarea.dispatchEvent(new Event("change", { bubbles: true }));
    }

    function input(kind, value, label) {
      const el = document.createElement(kind === "texts" ? "textarea" : "input");
      el.className = "reward-" + kind.replace("_", "-");
      el.setAttribute("aria-label", label);
      if (kind === "texts") { el.rows = 2; el.value = Array.isArray(value) ? value.join("\n") : ""; }
      else if (kind === "min_tokens" || kind === "max_tokens") {
        el.type = "number"; el.min = "0"; el.step = "1"; el.value = value === undefined ? "" : value;
      } else if (kind === "field_weights") {
        el.type = "text"; el.placeholder = "floor=2, city=1"; el.value = weightsText(value);
      } else {
        el.type = "text"; el.spellcheck = false; el.maxLength = rule.max_pattern; el.placeholder = "^\\{.*\\}$";
        el.value = value === undefined ? "" : value;
      }
      return el;
    }

    function draw() {
      body.textContent = "";
      rows.forEach((row, i) => {
        const n = i + 1;
        const tr = document.createElement("tr");
        tr.className = "reward-row";
        tr.dataset.function = row.function;
        const used = rows.filter((other, j) => j !== i).map((other) => other.function);

        const fnCell = document.createElement("td");
        const select = document.createElement("select");
        select.className = "reward-function";
        select.setAttribute("aria-label", `Reward ${n}: function`);
        for (const name of rule.functions) {
          const option = new Option(name, name, false, name === row.function);
          option.disabled = used.includes(name); // each function once (contains takes several texts)
          select.add(option);
        }
        if (!rule.functions.includes(row.function)) select.add(new Option(String(row.function), String(row.function), false, true));
        select.addEventListener("change", () => { row.function = select.value; draw(); write(); });
        const help = document.createElement("small");
        help.className = "help reward-definition";
        help.textContent = (rule.definitions[row.function] || "Not a reward function: choose one.") +
          (rule.needs_reference.includes(row.function) ? " Compared with the row's reference answer." : "");
        fnCell.append(select, help);

        const weightCell = document.createElement("td");
        const weight = document.createElement("input");
        weight.type = "number"; weight.step = "any"; weight.min = "0"; weight.className = "reward-weight";
        weight.setAttribute("aria-label", `Reward ${n}: weight`);
        weight.value = row.weight === undefined ? 1 : row.weight;
        weight.addEventListener("input", () => { row.weight = number(weight.value); write(); });
        weightCell.append(weight);

        const paramCell = document.createElement("td");
        paramCell.className = "reward-parameters";
        const takes = rule.parameters[row.function] || [];
        if (!takes.length) paramCell.innerHTML = '<span class="help">only a weight</span>';
        for (const name of takes) {
          const label = document.createElement("label");
          label.className = "reward-parameter";
          const el = input(name, row[name], `Reward ${n}: ${PARAMETER_LABELS[name]}`);
          el.addEventListener("input", () => {
            if (name === "texts") row.texts = el.value.split("\n").map((t) => t.replace(/\r$/, "")).filter((t) => t !== "");
            else if (name === "field_weights") row.field_weights = weightsOf(el.value);
            else if (name === "pattern") row.pattern = el.value;
            else row[name] = el.value === "" ? undefined : number(el.value);
            write();
          });
          label.append(PARAMETER_LABELS[name] + " ", el);
          paramCell.append(label);
        }

        const removeCell = document.createElement("td");
        const remove = document.createElement("button");
        remove.type = "button"; remove.className = "remove-reward"; remove.textContent = "Remove";
        remove.setAttribute("aria-label", `Remove reward ${n} (${row.function})`);
        remove.addEventListener("click", () => { rows.splice(i, 1); draw(); write(); });
        removeCell.append(remove);

        tr.append(fnCell, weightCell, paramCell, removeCell);
        body.append(tr);
      });
      add.disabled = rows.length >= rule.max_rewards || rows.length >= rule.functions.length;
      markError();
    }

    // The server's refusal names the reward ("rewards: reward 2: ..."): its row is marked too.
    function markError() {
      const error = editor.closest(".field").querySelector(".error[data-field]");
      const found = error && /reward (\d+)/.exec(error.textContent);
      body.querySelectorAll("tr").forEach((tr, i) => tr.classList.toggle("has-error", !!found && Number(found[1]) === i + 1));
    }

    add.addEventListener("click", () => {
      const used = rows.map((r) => r.function);
      const free = rule.functions.find((name) => !used.includes(name));
      if (!free) return;
      rows.push({ function: free, weight: 1 });
      draw();
      write();
      const selects = body.querySelectorAll("select.reward-function");
      selects[selects.length - 1].focus();
    });

    // The JSON typed by hand, or set by a preset: the table follows it once it reads.
    textarea.addEventListener("input", () => {
      const parsed = parse(textarea.value);
      if (parsed !== null) { rows = parsed.map((r) => Object.assign({}, r)); note.hidden = true; draw(); }
    });
    document.addEventListener("change", () => {
      if (!textarea.isConnected) return; // a refused submit swapped this form out
      if (textarea.value !== written && document.activeElement !== textarea) { written = textarea.value; load(textarea.value); }
    });

    written = textarea.value;
    load(textarea.value);
    const jsonRefused = editor.closest(".field").classList.contains("has-error") && parse(textarea.value) === null;
    if (details && !jsonRefused && parse(textarea.value) !== null) details.open = false;
  }

  function setUpAll() {
    for (const editor of document.querySelectorAll(".reward-editor")) setUp(editor);
  }
  document.addEventListener("DOMContentLoaded", setUpAll);
  document.addEventListener("htmx:afterSettle", setUpAll); // a refused submit swaps the form in again
})();
