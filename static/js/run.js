// The run page: draws the stored loss history, then follows the run's server-sent events.
// Points are deduplicated by step, so the overlap between the history and the stream is harmless.
(function () {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const runId = root.dataset.runId;
  const chartEl = document.getElementById("loss-chart");
  const series = { train: { steps: [], loss: [] }, eval: { steps: [], loss: [] } };
  const lastStep = { train: -1, eval: -1 };
  let chart = null;
  let redrawQueued = false;
  let mergeRequested = false;

  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  function chartData() {
    // uPlot wants one shared x array: merge train and eval steps, with nulls where a series has no point.
    const steps = Array.from(new Set(series.train.steps.concat(series.eval.steps))).sort((a, b) => a - b);
    const lookup = (s) => {
      const byStep = new Map(s.steps.map((step, i) => [step, s.loss[i]]));
      return steps.map((step) => (byStep.has(step) ? byStep.get(step) : null));
    };
    return [steps, lookup(series.train), lookup(series.eval)];
  }

  function makeChart() {
    const width = Math.max(320, chartEl.clientWidth || 640);
    chart = new uPlot(
      {
        width: width,
        height: 300,
        scales: { x: { time: false } },
        axes: [{ label: "step" }, { label: "loss" }],
        series: [
          { label: "step" },
          { label: "train loss", stroke: "#2563eb", width: 2, spanGaps: true },
          { label: "eval loss", stroke: "#dc2626", width: 2, spanGaps: true, points: { show: true } },
        ],
      },
      chartData(),
      chartEl
    );
    window.addEventListener("resize", () => chart.setSize({ width: Math.max(320, chartEl.clientWidth), height: 300 }));
  }

  function redraw() {
    redrawQueued = false;
    if (!chart) makeChart();
    else chart.setData(chartData());
    chartEl.dataset.points = String(series.train.steps.length + series.eval.steps.length);
  }

  function addPoint(point) {
    const kind = point.kind === "eval" ? "eval" : "train";
    if (point.loss === null || point.loss === undefined || point.step <= lastStep[kind]) return;
    lastStep[kind] = point.step;
    series[kind].steps.push(point.step);
    series[kind].loss.push(point.loss);
    if (kind === "train") {
      document.getElementById("run-step").textContent = point.step;
      document.getElementById("run-loss").textContent = fmt(point.loss, 4);
      if (point.tokens_per_sec) document.getElementById("run-throughput").textContent = fmt(point.tokens_per_sec, 0);
    }
    if (!redrawQueued) {
      redrawQueued = true;
      requestAnimationFrame(redraw);
    }
  }

  function setStatus(status, error) {
    root.dataset.status = status;
    const badge = document.getElementById("run-status");
    badge.textContent = status;
    badge.className = "badge badge-" + status;
    if (error) {
      const box = document.getElementById("run-error");
      box.textContent = error;
      box.hidden = false;
    }
    if (!["queued", "running", "interrupted"].includes(status)) {
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
    }
  }

  function setParams(p) {
    document.getElementById("params-all").textContent = Number(p.all).toLocaleString("en-US");
    document.getElementById("params-trainable").textContent = Number(p.trainable).toLocaleString("en-US");
    document.getElementById("params-percent").textContent = fmt(p.percent, 4);
  }

  function refreshArtifacts() {
    const panel = document.getElementById("artifacts");
    if (window.htmx) htmx.trigger(panel, "refresh");
  }

  // "Merge & download" is one click: once the merged model is ready, its download starts by itself.
  document.body.addEventListener("click", (e) => {
    if (e.target && e.target.id === "merge-button") mergeRequested = true;
  });
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (!mergeRequested || e.target.id !== "artifacts") return;
    const link = document.getElementById("download-merged");
    if (link) {
      mergeRequested = false;
      link.click();
    }
  });

  function follow(afterId) {
    const source = new EventSource(`/api/v1/runs/${runId}/events?last_event_id=${encodeURIComponent(afterId)}`);
    source.addEventListener("metric", (e) => addPoint(JSON.parse(e.data)));
    source.addEventListener("params", (e) => setParams(JSON.parse(e.data)));
    source.addEventListener("status", (e) => {
      const data = JSON.parse(e.data);
      setStatus(data.status, data.error);
      if (data.status !== "running") refreshArtifacts();
    });
    source.addEventListener("artifact", () => refreshArtifacts());
    source.addEventListener("done", (e) => {
      const data = JSON.parse(e.data);
      if (data.status) setStatus(data.status, data.error);
      refreshArtifacts();
      source.close();
    });
    return source;
  }

  async function start() {
    const afterId = root.dataset.streamId || "0-0";
    const response = await fetch(`/api/v1/runs/${runId}/metrics`);
    if (response.ok) (await response.json()).forEach(addPoint);
    redraw();
    if (!["succeeded", "failed", "cancelled"].includes(root.dataset.status)) follow(afterId);
  }

  // A merge reports after the run's stream has ended: refresh the panel while one is in progress.
  setInterval(() => {
    if (document.getElementById("merge-progress")) refreshArtifacts();
  }, 1500);

  start();
})();
