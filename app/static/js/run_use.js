// The run page's use of its hardware: MFU (or why there is none) and GPU memory used and at peak in the
// throughput line, and the GPU-memory chart beside the loss. run.js feeds it the newest train point, history and
// live alike, and asks it to draw; what the run trains on (Run.hardware) comes with the page, or from the API once
// training has begun.
(function () {
  "use strict";
  window.loradeck = window.loradeck || {};
  const GIB = 1024 ** 3;
  const known = (v) => v !== null && v !== undefined;

  // Binary units with one decimal, as app/formatting.py's human_bytes writes sizes on the server's pages.
  function bytes(n) {
    for (const unit of ["B", "KiB", "MiB", "GiB"]) {
      if (Math.abs(n) < 1024) return unit === "B" ? `${n.toFixed(0)} ${unit}` : `${n.toFixed(1)} ${unit}`;
      n /= 1024;
    }
    return `${n.toFixed(1)} TiB`;
  }

  // `xOf` and `xLabel` are the loss chart's: every chart of the page shares its x axis (step, time, tokens).
  // `finished()`: whether the run has ended (then a run without a recorded hardware is not asked again).
  window.loradeck.hardwareUse = function (runId, points, xOf, xLabel, tick, finished) {
    const $ = (id) => document.getElementById(id);
    let hardware = JSON.parse($("run-hardware").textContent); // null until training begins
    let asked = false;
    let newest = null;
    let chart = null;

    function mfuText(p) {
      // Why there is no MFU is the worker's to say (worker.engine.hardware.no_mfu): the CPU or a GPU not in the
      // table has no peak FLOPS, a model shape without a FLOPs formula no FLOPs per token.
      if (p && known(p.mfu)) return `MFU ${(100 * p.mfu).toFixed(1)}%`;
      if (!hardware) return "MFU –";
      if (hardware.no_mfu) return `MFU: ${hardware.no_mfu}`;
      if (!known(hardware.peak_flops)) return "MFU: needs a known GPU";
      return "MFU –";
    }

    function show(p) {
      // The throughput line at the newest train point (null: none yet).
      newest = p;
      const mfu = $("run-mfu");
      mfu.textContent = mfuText(p);
      if (hardware) mfu.dataset.device = hardware.device;
      if (p && known(p.gpu_memory_bytes)) {
        $("run-gpu-used").textContent = bytes(p.gpu_memory_bytes);
        $("run-gpu-peak").textContent = bytes(p.gpu_peak_bytes);
        $("run-gpu-memory").hidden = false;
      }
      if (p && !hardware && !asked) ask();
    }

    async function ask() {
      // Recorded as training begins, after this page was rendered: once, from the run's API record.
      asked = true;
      const response = await fetch(`/api/v1/runs/${runId}`);
      if (!response.ok) return;
      hardware = (await response.json()).hardware;
      if (hardware) show(newest);
      // Not recorded (trained before loradeck recorded it): asked again at a live point, never for history.
      else asked = finished();
    }

    function data() {
      // GPU memory, used and peak, in GiB (the axis' unit): the points that carry it (train points on a GPU).
      const usable = points.train.filter((p) => known(p.gpu_memory_bytes) && known(xOf(p)));
      return [usable.map(xOf), usable.map((p) => p.gpu_memory_bytes / GIB), usable.map((p) => p.gpu_peak_bytes / GIB)];
    }

    function draw() {
      // Shown only where a point carries GPU memory: a CPU run has none to chart.
      const el = $("gpu-chart");
      const drawn = data();
      el.dataset.points = String(drawn[0].length);
      if (!drawn[0].length) return;
      el.closest("section").hidden = false;
      if (chart) { chart.setData(drawn); return; }
      chart = new uPlot(
        {
          width: Math.max(240, el.clientWidth || 300),
          height: 160,
          scales: { x: { time: false } },
          legend: { show: false },
          axes: [{}, { size: 64, label: "GiB", values: (u, vals) => vals.map(tick) }],
          series: [
            { label: xLabel() },
            { label: "used", stroke: "#0891b2", width: 1.5, spanGaps: true },
            { label: "peak", stroke: "#be123c", width: 1.5, dash: [4, 3], spanGaps: true },
          ],
        },
        drawn,
        el
      );
    }

    return {
      show,
      draw,
      resize() { if (chart) chart.setSize({ width: Math.max(240, $("gpu-chart").clientWidth), height: 160 }); },
      destroy() { if (chart) { chart.destroy(); chart = null; } },
    };
  };
})();
