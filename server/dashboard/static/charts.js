// Small SVG charts for the FedShield dashboard: line charts and stacked bar charts, no library.
// Every label is set as text (never parsed as markup): site names come from the run's results.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 560, H = 260, M = { left: 46, right: 150, top: 12, bottom: 30 };
  const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
    "#4b5563", "#65a30d"];

  function el(name, attrs, parent) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function text(parent, x, y, label, anchor) {
    const node = el("text", { x: x, y: y, "text-anchor": anchor || "start" }, parent);
    node.textContent = label;
    return node;
  }

  function clear(svg) { while (svg.firstChild) svg.removeChild(svg.firstChild); }

  function niceTicks(lo, hi, count) {
    if (hi === lo) { hi = lo + 1; }
    const step0 = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0);
    const ticks = [], first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
    for (let i = first; i <= last; i++) ticks.push(+(i * step).toFixed(10));
    return ticks.length > 1 ? ticks : [ticks[0], +(ticks[0] + step).toFixed(10)];
  }

  function fmt(v) { return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2); }

  // pad: half a round on each side (bar charts), so the first and last bars clear the axes
  function frame(svg, xs, yLo, yHi, pad) {
    const xMin = Math.min(...xs), xMax = Math.max(...xs, xMin + 1), xLo = xMin - (pad || 0), xHi = xMax + (pad || 0);
    const yt = niceTicks(yLo, yHi, 5), y0 = yt[0], y1 = yt[yt.length - 1];
    const sx = (x) => M.left + (x - xLo) / (xHi - xLo) * (W - M.left - M.right);
    const sy = (y) => H - M.bottom - (y - y0) / ((y1 - y0) || 1) * (H - M.top - M.bottom);
    for (const t of yt) {
      el("line", { x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t), class: "gridline" }, svg);
      text(svg, M.left - 6, sy(t) + 4, fmt(t), "end");
    }
    el("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }, svg);
    el("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }, svg);
    const xt = xMax - xMin <= 12 ? Array.from({ length: xMax - xMin + 1 }, (_, i) => xMin + i)
      : niceTicks(xMin, xMax, 8).filter((t) => t >= xMin && t <= xMax);
    for (const t of xt) text(svg, sx(t), H - M.bottom + 15, String(t), "middle");
    text(svg, (M.left + W - M.right) / 2, H - 2, "round", "middle");
    return { sx: sx, sy: sy };
  }

  function legend(svg, names) {
    const g = el("g", { class: "legend" }, svg);
    names.slice(0, 12).forEach((name, i) => {
      const y = M.top + 6 + i * 16;
      el("rect", { x: W - M.right + 12, y: y - 8, width: 10, height: 10, fill: PALETTE[i % PALETTE.length] }, g);
      text(g, W - M.right + 27, y + 1, name.length > 19 ? name.slice(0, 18) + "…" : name);
    });
  }

  function empty(svg, message) {
    clear(svg);
    svg.setAttribute("data-points", "0");
    text(svg, W / 2, H / 2, message || "no round finished yet", "middle");
  }

  // series: [{name, points: [[x, y], ...]}]; opts: {yMin, yMax} fix the range where given.
  function lineChart(svg, series, opts) {
    const all = series.flatMap((s) => s.points);
    if (!all.length) return empty(svg, opts && opts.empty);
    clear(svg);
    const ys = all.map((p) => p[1]);
    const lo = opts && opts.yMin !== undefined ? Math.min(opts.yMin, ...ys) : Math.min(...ys);
    const hi = opts && opts.yMax !== undefined ? Math.max(opts.yMax, ...ys) : Math.max(...ys);
    const f = frame(svg, all.map((p) => p[0]), lo, hi);
    series.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const g = el("g", { "data-series": s.name, "data-points": s.points.length }, svg);
      el("polyline", { class: "series", stroke: color,
        points: s.points.map((p) => f.sx(p[0]).toFixed(1) + "," + f.sy(p[1]).toFixed(1)).join(" ") }, g);
      for (const p of s.points) {
        const dot = el("circle", { cx: f.sx(p[0]), cy: f.sy(p[1]), r: 3, fill: color }, g);
        el("title", {}, dot).textContent = s.name + ", round " + p[0] + ": " + p[1].toFixed(4);
      }
    });
    legend(svg, series.map((s) => s.name));
    svg.setAttribute("data-points", String(Math.max(...series.map((s) => s.points.length))));
  }

  // bars: [{x, parts: [{name, value}]}], stacked in the order of `names`.
  function barChart(svg, bars, names) {
    const tops = bars.map((b) => b.parts.reduce((a, p) => a + p.value, 0));
    if (!bars.length) return empty(svg);
    clear(svg);
    const f = frame(svg, bars.map((b) => b.x), 0, Math.max(...tops, 1e-9), 0.6);
    const width = Math.max(4, Math.min(36, (W - M.left - M.right) / (bars.length + 1) * 0.7));
    for (const b of bars) {
      let base = 0;
      for (const part of b.parts) {
        const i = names.indexOf(part.name);
        const rect = el("rect", { x: f.sx(b.x) - width / 2, y: f.sy(base + part.value), width: width,
          height: Math.max(0, f.sy(base) - f.sy(base + part.value)), fill: PALETTE[i % PALETTE.length] }, svg);
        el("title", {}, rect).textContent = "round " + b.x + ", " + part.name + ": " + part.value.toFixed(2) + " s";
        base += part.value;
      }
    }
    legend(svg, names);
    svg.setAttribute("data-points", String(bars.length));
  }

  window.FedCharts = { lineChart: lineChart, barChart: barChart, empty: empty };
})();
