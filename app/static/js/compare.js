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

  function draw() {
    if (chart) chart.destroy();
    const log = document.getElementById("compare-scale").value === "log";
    chart = new uPlot(
      {
        width: Math.max(320, el.clientWidth || 640),
        height: 340,
        scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
        axes: [{ label: "step" }, {}],
        series: [{ label: "step" }].concat(names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))),
      },
      data(),
      el
    );
    el.dataset.series = String(histories.filter((h) => h.length).length);
  }

  Promise.all(ids.map((id) => fetch(`/api/v1/runs/${id}/metrics?max_points=2000`).then((r) => (r.ok ? r.json() : []))))
    .then((all) => { histories = all; draw(); });
  document.getElementById("compare-metric").addEventListener("change", draw);
  document.getElementById("compare-scale").addEventListener("change", draw);
  const smoothing = document.getElementById("compare-smoothing");
  smoothing.addEventListener("input", () => {
    document.getElementById("compare-smoothing-value").textContent = Number(smoothing.value).toFixed(2);
    el.dataset.smoothing = smoothing.value;
    if (histories.length) draw();
  });
})();
