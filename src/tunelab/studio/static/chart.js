// Small line and bar charts drawn as inline SVG (no library, works offline).
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fdf", "#d9534f", "#2e9e6b", "#e0902f", "#7a4fd0"];

function svgEl(tag, attrs) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

// A tick label with as many decimals as the spacing between ticks needs.
function niceNum(v, spacing) {
  if (!isFinite(v)) return "";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  const digits = spacing > 0 ? Math.max(0, Math.min(6, 1 - Math.floor(Math.log10(spacing)))) : 2;
  return v.toFixed(Number.isInteger(v) && spacing >= 1 ? 0 : digits);
}

// series: [{name, points: [[x, y], ...], color?}]
function lineChart(container, series, opts) {
  opts = opts || {};
  const W = opts.width || 460, H = opts.height || 220, L = 56, R = 12, T = 26, B = 32;
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img",
                            "aria-label": opts.title || "chart"});
  const pts = series.flatMap(s => s.points).filter(p => isFinite(p[1]));
  svg.appendChild(Object.assign(svgEl("text", {x: L, y: 16, class: "chart-title"}), {textContent: opts.title || ""}));
  if (!pts.length) {
    svg.appendChild(Object.assign(svgEl("text", {x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty"}),
                                  {textContent: "no data yet"}));
    container.replaceChildren(svg);
    return svg;
  }
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => H - B - (y - y0) / (y1 - y0) * (H - T - B);
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    svg.appendChild(svgEl("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), class: "grid"}));
    svg.appendChild(Object.assign(svgEl("text", {x: L - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick"}),
                                  {textContent: niceNum(y, (y1 - y0) / 4)}));
  }
  for (let i = 0; i <= 4; i++) {
    const x = x0 + (x1 - x0) * i / 4;
    svg.appendChild(Object.assign(svgEl("text", {x: sx(x), y: H - B + 16, "text-anchor": "middle", class: "tick"}),
                                  {textContent: niceNum(x, (x1 - x0) / 4)}));
  }
  svg.appendChild(Object.assign(svgEl("text", {x: W - R, y: H - 4, "text-anchor": "end", class: "tick"}),
                                {textContent: opts.xlabel || "step"}));
  series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    const good = s.points.filter(p => isFinite(p[1]));
    if (!good.length) return;
    const d = good.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.appendChild(svgEl("path", {d, fill: "none", stroke: color, "stroke-width": 2, class: "series"}));
    good.forEach(p => svg.appendChild(svgEl("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: color})));
    const lx = L + 8 + i * 130;
    svg.appendChild(svgEl("rect", {x: lx + 150, y: 8, width: 10, height: 10, fill: color}));
    svg.appendChild(Object.assign(svgEl("text", {x: lx + 164, y: 17, class: "legend"}), {textContent: s.name}));
  });
  container.replaceChildren(svg);
  return svg;
}

// bins: [{low, high, count}]
function barChart(container, bins, opts) {
  opts = opts || {};
  const W = opts.width || 460, H = opts.height || 200, L = 40, R = 10, T = 24, B = 30;
  const svg = svgEl("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": opts.title || ""});
  svg.appendChild(Object.assign(svgEl("text", {x: L, y: 16, class: "chart-title"}), {textContent: opts.title || ""}));
  const peak = Math.max(1, ...bins.map(b => b.count));
  const bw = (W - L - R) / Math.max(1, bins.length);
  bins.forEach((b, i) => {
    const h = b.count / peak * (H - T - B);
    const rect = svgEl("rect", {x: L + i * bw + 1, y: H - B - h, width: Math.max(1, bw - 2), height: h,
                                class: "bar"});
    rect.appendChild(Object.assign(svgEl("title"), {textContent: `${b.low}-${b.high} tokens: ${b.count}`}));
    svg.appendChild(rect);
    if (i % Math.ceil(bins.length / 6) === 0)
      svg.appendChild(Object.assign(svgEl("text", {x: L + i * bw, y: H - B + 14, class: "tick"}),
                                    {textContent: b.low}));
  });
  svg.appendChild(Object.assign(svgEl("text", {x: L - 6, y: T + 8, "text-anchor": "end", class: "tick"}),
                                {textContent: peak}));
  svg.appendChild(Object.assign(svgEl("text", {x: W - R, y: H - 4, "text-anchor": "end", class: "tick"}),
                                {textContent: opts.xlabel || "tokens"}));
  container.replaceChildren(svg);
  return svg;
}

window.lineChart = lineChart;
window.barChart = barChart;
