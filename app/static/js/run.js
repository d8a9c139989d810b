// The run page: draws the stored history, then follows the run's server-sent events.
// Points are deduplicated by step, so the overlap between the history and the stream is harmless.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const runId = root.dataset.runId;
  const FINISHED = root.dataset.final.split(" "); // the final states, as the server names them
  const points = { train: [], eval: [] };
  const lastStep = { train: -1, eval: -1 };
  const charts = {};
  let redrawQueued = false;
  let mergeRequested = false;

  const $ = (id) => document.getElementById(id);
  const fmt = (v, digits) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

  // --- chart data -------------------------------------------------------------------------------
  function xOf(p) {
    const mode = $("x-axis").value;
    if (mode === "time") return p.time;
    if (mode === "tokens") return p.tokens_seen;
    return p.step;
  }

  function lossData() {
    // uPlot wants one shared, sorted x array. Train and eval points at the same x (the last step has
    // both) share one row, so the eval point is drawn instead of hidden behind a duplicate x.
    const byX = new Map();
    const row = (x) => byX.get(x) || byX.set(x, [x, null, null]).get(x);
    for (const p of points.train) { const x = xOf(p); if (x !== null && x !== undefined) row(x)[1] = p.loss; }
    for (const p of points.eval) { const x = xOf(p); if (x !== null && x !== undefined) row(x)[2] = p.loss; }
    const usable = [...byX.values()].sort((a, b) => a[0] - b[0]);
    const train = usable.map((r) => r[1]);
    const alpha = Number($("smoothing").value);
    const smooth = window.loradeck.smooth(train, alpha).map((v, i) => (train[i] === null ? null : v));
    return [usable.map((r) => r[0]), train, smooth, usable.map((r) => r[2])];
  }

  function logRange(u, min, max) {
    // uPlot's log scale snaps to whole decades, which flattens a loss that moves within one: fit the data.
    if (min === null || max === null || !(min > 0)) return [min, max];
    return [min / 1.1, max * 1.1];
  }

  function panelData(field) {
    const usable = points.train.filter((p) => p[field] !== null && p[field] !== undefined && xOf(p) !== null);
    return [usable.map(xOf), usable.map((p) => p[field])];
  }

  function xLabel() {
    return { step: "step", time: "seconds", tokens: "tokens seen" }[$("x-axis").value];
  }

  function makeLossChart() {
    const el = $("loss-chart");
    const log = $("y-scale").value === "log";
    return new uPlot(
      {
        width: Math.max(320, el.clientWidth || 640),
        height: 320,
        scales: { x: { time: false }, y: log ? { distr: 3, range: logRange } : {} },
        axes: [{ label: xLabel() }, { label: "loss" }],
        series: [
          { label: xLabel() },
          { label: "train loss (raw)", stroke: "rgba(37,99,235,0.35)", width: 1, spanGaps: true },
          { label: "train loss (smoothed)", stroke: "#2563eb", width: 2, spanGaps: true },
          { label: "eval loss", stroke: "#dc2626", width: 2, spanGaps: true, points: { show: true, size: 8, fill: "#dc2626" } },
        ],
      },
      lossData(),
      el
    );
  }

  function makePanel(id, field, label, color) {
    const el = $(id);
    return new uPlot(
      {
        width: Math.max(240, el.clientWidth || 300),
        height: 160,
        scales: { x: { time: false } },
        legend: { show: false },
        axes: [{}, { size: 64, values: (u, vals) => vals.map(tick) }],
        series: [{ label: xLabel() }, { label: label, stroke: color, width: 1.5, spanGaps: true }],
      },
      panelData(field),
      el
    );
  }

  function tick(v) {
    // Learning rates live around 1e-4: plain decimals would print them all as 0.
    if (v === null) return "";
    const a = Math.abs(v);
    return a !== 0 && (a < 0.01 || a >= 1e5) ? v.toExponential(1) : String(+v.toFixed(3));
  }

  // The objective's own charts (run_panels.js): rewards and the like, drawn from each point's named values.
  const objective = window.loradeck.objectivePanels(points, xOf, xLabel, tick);
  // MFU and GPU memory in the throughput line, the GPU-memory chart (run_use.js).
  const use = window.loradeck.hardwareUse(runId, points, xOf, xLabel, tick, () => FINISHED.includes(root.dataset.status));

  const PANELS = [
    ["lr-chart", "learning_rate", "learning rate", "#7c3aed"],
    ["grad-chart", "grad_norm", "grad norm", "#059669"],
    ["tps-chart", "tokens_per_sec", "tokens/s", "#d97706"],
  ];

  function rebuild() {
    // Axis mode or scale changes rebuild the charts; new points only replace their data.
    for (const key of Object.keys(charts)) { charts[key].destroy(); delete charts[key]; }
    objective.destroy();
    use.destroy();
    redraw();
  }

  function redraw() {
    redrawQueued = false;
    if (!charts.loss) {
      charts.loss = makeLossChart();
      for (const [id, field, label, color] of PANELS) charts[id] = makePanel(id, field, label, color);
    } else {
      charts.loss.setData(lossData());
      for (const [id, field] of PANELS) charts[id].setData(panelData(field));
    }
    objective.draw();
    use.draw();
    const data = charts.loss.data;
    $("loss-chart").dataset.points = String(points.train.length + points.eval.length);
    // Where the eval series has a point, for a reader of the page (and its tests).
    $("loss-chart").dataset.evalX = data[0].filter((x, i) => data[3][i] !== null).join(",");
    if (points.eval.length) showEval();
  }

  const percent = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");

  function evalPanelData() {
    const usable = points.eval.filter((p) => xOf(p) !== null && xOf(p) !== undefined).sort((a, b) => xOf(a) - xOf(b));
    return [usable.map(xOf), usable.map((p) => p.loss), usable.map((p) => p.token_accuracy ?? null)];
  }

  function showEval() {
    // The newest evaluation in figures; with several (eval_steps), their curves: loss at its own scale on the
    // left, token accuracy (the share of eval answer tokens predicted right) from 0 to 100% on the right.
    const el = $("eval-chart");
    if (!el) return;
    el.closest("section").hidden = false;
    const newest = points.eval.reduce((a, b) => (b.step > a.step ? b : a));
    $("eval-step").textContent = newest.step;
    $("eval-loss").textContent = fmt(newest.loss, 4);
    $("eval-token-accuracy").textContent = percent(newest.token_accuracy);
    const data = evalPanelData();
    el.dataset.points = String(points.eval.length);
    // The figures drawn, for a reader of the page (and its tests), as the loss chart's evalX.
    el.dataset.tokenAccuracy = data[2].map((v) => (v === null ? "" : v.toFixed(4))).join(",");
    if (points.eval.length < 2) return;
    if (charts.evalPanel) { charts.evalPanel.setData(data); return; }
    charts.evalPanel = new uPlot(
      {
        width: Math.max(240, el.clientWidth || 300),
        height: 160,
        scales: { x: { time: false }, acc: { range: [0, 1] } },
        legend: { show: false },
        axes: [
          {},
          { size: 64, values: (u, vals) => vals.map(tick), stroke: "#dc2626" },
          { scale: "acc", side: 1, size: 48, grid: { show: false }, stroke: "#0891b2", values: (u, vals) => vals.map((v) => Math.round(100 * v) + "%") },
        ],
        series: [
          { label: xLabel() },
          { label: "eval loss", stroke: "#dc2626", width: 1.5, points: { show: true, size: 6 } },
          { label: "token accuracy", scale: "acc", stroke: "#0891b2", width: 1.5, dash: [4, 3], points: { show: true, size: 6 } },
        ],
      },
      data,
      el
    );
  }

  function queueRedraw() {
    if (!redrawQueued) { redrawQueued = true; requestAnimationFrame(redraw); }
  }

  window.addEventListener("resize", () => {
    if (charts.loss) charts.loss.setSize({ width: Math.max(320, $("loss-chart").clientWidth), height: 320 });
    for (const [id] of PANELS) if (charts[id]) charts[id].setSize({ width: Math.max(240, $(id).clientWidth), height: 160 });
    if (charts.evalPanel) charts.evalPanel.setSize({ width: Math.max(240, $("eval-chart").clientWidth), height: 160 });
    objective.resize();
    use.resize();
  });

  // --- live state -------------------------------------------------------------------------------
  const seen = { train: new Set(), eval: new Set() };

  function addPoint(p) {
    const kind = p.kind === "eval" ? "eval" : "train";
    if (seen[kind].has(p.step)) return; // the history and the stream overlap: each step once
    seen[kind].add(p.step);
    points[kind].push(p);
    if (p.step < lastStep[kind]) {
      points[kind].sort((a, b) => a.step - b.step); // a gap filled after a reconnect
    } else {
      lastStep[kind] = p.step;
      if (kind === "train") {
        if (root.dataset.status === "queued") setStatus("running");
        $("run-step").textContent = p.step;
        if (p.loss !== null) $("run-loss").textContent = fmt(p.loss, 4);
        if (p.tokens_per_sec) $("run-throughput").textContent = fmt(p.tokens_per_sec, 0);
        use.show(p);
        updateEta(p);
      }
    }
    queueRedraw();
  }

  function updateEta(p) {
    // A live point carries its elapsed time and the ETA as the server words them (app/formatting.py);
    // a stored one does not, and the page keeps what the server rendered.
    if (p.elapsed_text !== undefined) $("run-elapsed").textContent = p.elapsed_text;
    if (p.eta_text !== undefined) $("run-eta").textContent = p.eta_text;
    const bar = $("run-progress");
    if (bar && p.step) bar.value = p.step;
  }

  function setStatus(status, error) {
    const changed = root.dataset.status !== status;
    root.dataset.status = status;
    const badge = $("run-status");
    badge.textContent = status;
    badge.className = "badge badge-" + status;
    if (error) {
      $("run-error").textContent = error;
      $("run-error").hidden = false;
    }
    if (changed) {
      // What the run offers (stop, cancel, delete, merge, export...) is the server's to say for each state.
      refresh("run-actions");
      refresh("artifacts");
    }
    if (FINISHED.includes(status)) {
      $("run-phase").hidden = true;
      $("run-eta").textContent = "–";
      refresh("log-tail");
    }
  }

  function setParams(p) {
    $("params-all").textContent = Number(p.all).toLocaleString("en-US");
    $("params-trainable").textContent = Number(p.trainable).toLocaleString("en-US");
    $("params-percent").textContent = fmt(p.percent, 4);
  }

  function refresh(id) {
    const el = $(id);
    if (el && window.htmx) htmx.trigger(el, "refresh");
  }

  // "Merge & download" is one click: once the merged model is ready, its download starts by itself.
  document.body.addEventListener("click", (e) => {
    if (e.target && e.target.id === "merge-button") mergeRequested = true;
  });
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (e.target.id === "log-tail") {
      const pre = e.target.querySelector("pre");
      if (pre) pre.scrollTop = pre.scrollHeight; // follow the newest lines
    }
    if (!mergeRequested || e.target.id !== "artifacts") return;
    const link = $("download-merged");
    if (link) { mergeRequested = false; link.click(); }
  });

  let source = null;
  let lastEventId = null;

  function follow() {
    if (source) return;
    // From just before the newest stored point: the stream replays what the database has not caught up on.
    // Opened again for a merge or an export after the run's end: from the last event this page saw.
    const from = lastEventId ? `last_event_id=${encodeURIComponent(lastEventId)}` : `after_step=${Math.max(0, lastStep.train)}`;
    source = new EventSource(`/api/v1/runs/${runId}/events?${from}`);
    // After a dropped connection (web restart, Redis restart) the browser reconnects by itself; points
    // published while the stream was down are only in the database, so fetch those on reconnect.
    let dropped = false;
    source.addEventListener("error", () => { dropped = true; });
    source.addEventListener("open", async () => {
      if (!dropped) return;
      dropped = false;
      const since = Math.max(-1, lastStep.train - 1000); // recent enough to hold any gap; repeats are skipped
      const response = await fetch(`/api/v1/runs/${runId}/metrics?after_step=${since}`);
      if (response.ok) (await response.json()).forEach(addPoint);
    });
    source.addEventListener("metric", (e) => addPoint(JSON.parse(e.data)));
    source.addEventListener("params", (e) => setParams(JSON.parse(e.data)));
    // GRPO: what the policy writes, with its rewards (samples.js draws it).
    source.addEventListener("samples", (e) => window.loradeck.showSamples(JSON.parse(e.data)));
    source.addEventListener("status", (e) => {
      const data = JSON.parse(e.data);
      setStatus(data.status, data.error);
    });
    source.addEventListener("log", () => refresh("log-tail"));
    source.addEventListener("checkpoint", () => refresh("artifacts"));
    source.addEventListener("artifact", (e) => { lastEventId = e.lastEventId; refresh("artifacts"); });
    source.addEventListener("evaluating", (e) => {
      const data = JSON.parse(e.data);
      $("eval-done").textContent = data.done;
      $("eval-total").textContent = data.total;
      $("run-phase").hidden = false;
      if (data.elapsed_text !== undefined) $("run-elapsed").textContent = data.elapsed_text;
      $("run-eta").textContent = "–";
      refresh("evaluation");
    });
    source.addEventListener("evaluation", () => {
      $("run-phase").hidden = true;
      refresh("evaluation");
    });
    source.addEventListener("done", (e) => {
      lastEventId = e.lastEventId;
      const data = JSON.parse(e.data);
      if (data.status) setStatus(data.status, data.error);
      refresh("artifacts");
      refresh("run-actions"); // the final elapsed time, as the runs list gives it
      source.close();
      source = null;
    });
  }

  async function start() {
    // Long histories come bucketed for drawing; the live tail then adds every new point.
    const response = await fetch(`/api/v1/runs/${runId}/metrics?max_points=2000`);
    if (response.ok) (await response.json()).forEach(addPoint);
    if (!points.train.length) use.show(null); // why there is no MFU, before any point
    redraw();
    if (!FINISHED.includes(root.dataset.status) || busy(document)) follow();
  }

  // Something of the run being made (a merge, an export): its progress comes over the run's stream.
  function busy(within) {
    return !!within.querySelector('#artifacts tr[data-status="pending"], #artifacts tr[data-status="running"]');
  }
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (e.target.id === "artifacts" && busy(document)) follow();
  });

  // Chart settings are remembered by this browser, for every run page.
  const SETTINGS = ["x-axis", "y-scale", "smoothing"];
  function remember(id) {
    try { localStorage.setItem(`loradeck.chart.${id}`, $(id).value); } catch (err) { /* storage off: fine */ }
  }
  for (const id of SETTINGS) {
    let saved = null;
    try { saved = localStorage.getItem(`loradeck.chart.${id}`); } catch (err) { /* storage off */ }
    const known = !$(id).options || [...$(id).options].some((o) => o.value === saved);
    if (saved !== null && known) $(id).value = saved;
  }
  $("smoothing-value").textContent = Number($("smoothing").value).toFixed(2);
  for (const id of ["x-axis", "y-scale"]) $(id).addEventListener("change", () => { remember(id); rebuild(); });
  $("smoothing").addEventListener("input", () => {
    $("smoothing-value").textContent = Number($("smoothing").value).toFixed(2);
    remember("smoothing");
    queueRedraw();
  });

  // The log grows while the run trains: poll it (it is not in the stream line by line).
  setInterval(() => {
    if (!FINISHED.includes(root.dataset.status)) refresh("log-tail");
  }, 2000);

  start();
})();
