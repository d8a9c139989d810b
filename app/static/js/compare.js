// Compare page: each picked run's metric history on one chart.
(function () {
  "use strict";
  const el = document.getElementById("compare-chart");
  if (!el || !el.dataset.runs) return;
  const ids = el.dataset.runs.split(",");
  const names = el.dataset.names.split("\u001f");
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#4b5563"];
  let histories = [];
  let chart = null;

  function data() {
    const metric = document.getElementById("compare-metric").value;
    const kind = metric === "eval" ? "eval" : "train";
    const field = metric === "train" || metric === "eval" ? "loss" : metric;
    const perRun = histories.map((points) => new Map(points.filter((p) => p.kind === kind && p[field] !== null).map((p) => [p.step, p[field]])));
    const steps = Array.from(new Set(perRun.flatMap((m) => Array.from(m.keys())))).sort((a, b) => a - b);
    const alpha = Number(document.getElementById("compare-smoothing").value);
    return [steps].concat(perRun.map((m) => window.loradeck.smooth(steps.map((s) => (m.has(s) ? m.get(s) : null)), alpha)));
  }

  function xRange(u, min, max) {
    if (min === null || max === null) return [min, max];
    return min === max ? [Math.max(0, min - 1), max + 1] : [min, max];
  }

  function showRange(u, key) {
    // The x range drawn, for a reader of the page (and its tests).
    if (key !== "x") return;
    el.dataset.metric = document.getElementById("compare-metric").value;
    el.dataset.xMin = String(u.scales.x.min);
    el.dataset.xMax = String(u.scales.x.max);
  }

  function draw() {
    if (chart) chart.destroy();
    const log = document.getElementById("compare-scale").value === "log";
    chart = new uPlot(
      {
        width: Math.max(320, el.clientWidth || 640),
        height: 340,
        // One step for all points (eval loss, measured once at each run's end) leaves the x range empty, and
        // uPlot then draws the points off the plot: widen it to the step on either side.
        scales: { x: { time: false, range: xRange }, y: log ? { distr: 3 } : {} },
        axes: [{ label: "step" }, {}],
        hooks: { setScale: [showRange] },
        series: [{ label: "step" }].concat(names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))),
      },
      data(),
      el
    );
    el.dataset.series = String(histories.filter((h) => h.length).length);
  }

  // The objective's named values (rewards/margins, ...), one chosen at a time, overlaid across the runs that log it.
  const valuesEl = document.getElementById("compare-values-chart");
  let valuesChart = null;

  function valuesData(key) {
    const has = (p) => p.kind === "train" && p.values && p.values[key] !== null && p.values[key] !== undefined;
    const perRun = histories.map((points) => new Map(points.filter(has).map((p) => [p.step, p.values[key]])));
    const steps = Array.from(new Set(perRun.flatMap((m) => Array.from(m.keys())))).sort((a, b) => a - b);
    return { perRun, columns: [steps].concat(perRun.map((m) => steps.map((s) => (m.has(s) ? m.get(s) : null)))) };
  }

  function drawValues() {
    if (!valuesEl) return;
    const picker = document.getElementById("compare-value");
    const share = picker.selectedOptions[0].dataset.unit === "share";
    const { perRun, columns } = valuesData(picker.value);
    if (valuesChart) valuesChart.destroy();
    valuesChart = new uPlot(
      {
        width: Math.max(320, valuesEl.clientWidth || 640),
        height: 260,
        scales: { x: { time: false, range: xRange }, y: share ? { range: [0, 1] } : {} },
        axes: [{ label: "step" }, share ? { values: (u, vals) => vals.map((v) => Math.round(100 * v) + "%") } : {}],
        series: [{ label: "step" }].concat(names.map((name, i) => ({
          label: name, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, show: perRun[i].size > 0,
        }))),
      },
      columns,
      valuesEl
    );
    // Which value is drawn, and for how many runs, for a reader of the page (and its tests).
    valuesEl.dataset.value = picker.value;
    valuesEl.dataset.series = String(perRun.filter((m) => m.size).length);
  }

  Promise.all(ids.map((id) => fetch(`/api/v1/runs/${id}/metrics?max_points=2000`).then((r) => (r.ok ? r.json() : []))))
    .then((all) => { histories = all; draw(); drawValues(); });
  if (valuesEl) document.getElementById("compare-value").addEventListener("change", drawValues);
  document.getElementById("compare-metric").addEventListener("change", draw);
  document.getElementById("compare-scale").addEventListener("change", draw);
  const smoothing = document.getElementById("compare-smoothing");
  smoothing.addEventListener("input", () => {
    document.getElementById("compare-smoothing-value").textContent = Number(smoothing.value).toFixed(2);
    el.dataset.smoothing = smoothing.value;
    if (histories.length) draw();
  });
})();
