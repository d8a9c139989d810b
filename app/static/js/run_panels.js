// The run page's charts of its objective's named values (a DPO run: rewards, reward accuracy, log-probabilities).
// Which panels and which values each draws come from the server (app.objectives, in #objective-panels); run.js
// feeds the points, history and live alike. A run whose objective declares no panels gets none.
(function () {
  "use strict";
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2"];
  window.loradeck = window.loradeck || {};

  const has = (p, key) => p.values && p.values[key] !== null && p.values[key] !== undefined;
  const percent = (v) => Math.round(100 * v) + "%";

  function figure(panel, v) {
    if (v === null || v === undefined) return "–";
    return panel.unit === "share" ? (100 * v).toFixed(1) + "%" : Number(v).toFixed(4);
  }

  // `xOf` and `xLabel` are the loss chart's: every chart of the page shares its x axis (step, time, tokens).
  window.loradeck.objectivePanels = function (points, xOf, xLabel, tick) {
    const source = document.getElementById("objective-panels");
    const panels = source ? JSON.parse(source.textContent) : [];
    const charts = {};

    function drawn(panel, kind) {
      return points[kind].filter((p) => xOf(p) !== null && xOf(p) !== undefined && panel.series.some((s) => has(p, s.key)));
    }

    function data(panel, train, evals) {
      // One sorted x array; a train and an eval point at the same x share its row (as in the loss chart).
      const width = panel.series.length;
      const byX = new Map();
      const row = (x) => byX.get(x) || byX.set(x, [x, ...new Array(2 * width).fill(null)]).get(x);
      for (const p of train) panel.series.forEach((s, i) => { if (has(p, s.key)) row(xOf(p))[1 + i] = p.values[s.key]; });
      for (const p of evals) panel.series.forEach((s, i) => { if (has(p, s.key)) row(xOf(p))[1 + width + i] = p.values[s.key]; });
      const rows = [...byX.values()].sort((a, b) => a[0] - b[0]);
      const columns = [rows.map((r) => r[0])];
      for (let i = 1; i <= (evals.length ? 2 * width : width); i++) columns.push(rows.map((r) => r[i]));
      return columns;
    }

    function make(panel, el, withEval) {
      const share = panel.unit === "share";
      const series = [{ label: xLabel() }];
      panel.series.forEach((s, i) => series.push({ label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true }));
      // Eval points as the loss chart marks them: dots, on a dashed line.
      if (withEval) {
        panel.series.forEach((s, i) => series.push({
          label: "eval " + s.label, stroke: COLORS[i % COLORS.length], width: 1, dash: [4, 3], spanGaps: true,
          points: { show: true, size: 7, fill: COLORS[i % COLORS.length] },
        }));
      }
      return new uPlot(
        {
          width: Math.max(240, el.clientWidth || 300),
          height: 180,
          legend: { show: false }, // the figures above the chart are its key (their swatches)
          scales: { x: { time: false }, y: share ? { range: [0, 1] } : {} },
          axes: [{}, { size: 64, values: (u, vals) => vals.map(share ? percent : tick) }],
          series: series,
        },
        [[]].concat(series.slice(1).map(() => [])),
        el
      );
    }

    function showLatest(panel, card, train, evals) {
      const newest = (list, key) => list.filter((p) => has(p, key)).reduce((a, b) => (a && a.step > b.step ? a : b), null);
      const last = train.length ? train.reduce((a, b) => (b.step > a.step ? b : a)) : null;
      card.querySelector(".panel-step").textContent = last ? last.step : "–";
      card.querySelector(".panel-eval-key").hidden = !evals.length;
      panel.series.forEach((s, i) => {
        card.querySelector(`[data-swatch="${CSS.escape(s.key)}"]`).style.background = COLORS[i % COLORS.length];
      });
      for (const s of panel.series) {
        const p = newest(train, s.key);
        card.querySelector(`[data-series="${CSS.escape(s.key)}"]`).textContent = figure(panel, p ? p.values[s.key] : null);
      }
      const el = card.querySelector(".panel-chart");
      el.dataset.points = String(train.length + evals.length);
      el.dataset.evalPoints = String(evals.length);
    }

    return {
      draw() {
        for (const panel of panels) {
          const card = document.getElementById("panel-" + panel.key);
          const el = document.getElementById("panel-" + panel.key + "-chart");
          if (!card || !el) continue;
          const train = drawn(panel, "train");
          const evals = drawn(panel, "eval");
          const withEval = evals.length > 0;
          const chart = charts[panel.key];
          if (chart && chart.withEval !== withEval) { chart.plot.destroy(); delete charts[panel.key]; }
          if (!charts[panel.key]) charts[panel.key] = { plot: make(panel, el, withEval), withEval: withEval };
          charts[panel.key].plot.setData(data(panel, train, evals));
          showLatest(panel, card, train, evals);
        }
      },
      destroy() {
        for (const key of Object.keys(charts)) { charts[key].plot.destroy(); delete charts[key]; }
      },
      resize() {
        for (const panel of panels) {
          const el = document.getElementById("panel-" + panel.key + "-chart");
          if (charts[panel.key] && el) charts[panel.key].plot.setSize({ width: Math.max(240, el.clientWidth), height: 180 });
        }
      },
    };
  };
})();
